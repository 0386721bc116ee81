"""Child processes of the commands that start a stack (`demo`, `load_test`): Redis, Celery
workers and the web server, each in its own process group so it can be stopped whole."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.db import connection


def spawn(
    command: list[str], log_path: Path, env: dict[str, str] | None = None, *, append: bool = True
) -> subprocess.Popen:
    """Start `command` from the project folder, its output in `log_path` (appended to, or
    started afresh), in a session of its own (Ctrl-C on the terminal reaches only us)."""
    log = open(log_path, "ab" if append else "wb")  # noqa: SIM115 (the child owns it for its lifetime)
    return subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=settings.BASE_DIR,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def celery_worker(*options: str) -> list[str]:
    """The command line of a Celery worker of this project with `options`."""
    return [sys.executable, "-m", "celery", "-A", "mintweb", "worker", *options]


def prepare_cpu_kernel() -> str:
    """Build the CPU LoRA kernel before starting workers (about half a minute, once per
    machine): they then load it ready-made rather than a first request waiting on the
    compiler. Says what came of it, for the command's output."""
    from workers.engine import cpu_kernels

    started = time.monotonic()
    if cpu_kernels.bgmv() is None:
        return "CPU LoRA kernel not built (the log says why); serving uses torch ops"
    return f"CPU LoRA kernel ready in {time.monotonic() - started:.1f}s ({cpu_kernels.build_folder()})"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, for a child server to take."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the child's whole process group; SIGKILL it if it lingers past `timeout`."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def stop_on_sigterm() -> None:
    """Treat SIGTERM like Ctrl-C, so the command's `finally` stops its children either way."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def database_url() -> str:
    """The URL of the database this process uses, for children that must use the same one
    (under pytest: the test database, not the configured one)."""
    cfg = connection.settings_dict
    if cfg["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(cfg['NAME']).resolve()}"
    auth = cfg["USER"] + (f":{cfg['PASSWORD']}" if cfg.get("PASSWORD") else "")
    return f"postgres://{auth}@{cfg['HOST'] or '127.0.0.1'}:{cfg['PORT'] or 5432}/{cfg['NAME']}"
