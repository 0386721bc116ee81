"""`make cluster`: three worker hosts on this machine, sharing only PostgreSQL, Redis and S3.

Brings up `adapters_app/management/cluster.py`'s cluster (private PostgreSQL and Redis,
SeaweedFS, three hosts of a training and a serving worker each, beat and the web server),
writes the settings a client needs to `<cluster folder>/cluster.env`, and waits for Ctrl-C.
With `--load-test` it instead runs `manage.py load_test --url` against the cluster (the
fleet is created in the cluster's database) and stops: one command for the README's table.
With `--show` it runs the multi-host checks (`multi_host.py`: cross-host serving, affinity,
erasure on every host, a host killed mid-job) and stops; tests/test_cluster.py runs that.
"""

from __future__ import annotations

import time
from pathlib import Path

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from adapters_app.management import processes
from adapters_app.management.cluster import HOSTS, Cluster
from adapters_app.management.private_stack import StackUnavailable


class Command(BaseCommand):
    help = "Start three worker hosts sharing only PostgreSQL, Redis and an S3 store (SeaweedFS)."

    def add_arguments(self, parser):
        parser.add_argument("--hosts", type=int, default=len(HOSTS), help="how many hosts (1 to 26)")
        parser.add_argument("--load-test", action="store_true", help="load-test it, then stop")
        parser.add_argument("--adapters", type=int, default=200, help="load test: adapters")
        parser.add_argument("--clients", type=int, default=32, help="load test: concurrent clients")
        parser.add_argument("--requests", type=int, default=640, help="load test: requests in all")
        parser.add_argument(
            "--show", action="store_true", help="check what three hosts must show (multi_host.py), then stop"
        )
        parser.add_argument("--json", type=Path, help="--show: write its checks here")
        parser.add_argument("--keep", action="store_true", help="keep the cluster's folder (logs) afterwards")

    def handle(self, *args, hosts, load_test, adapters, clients, requests, show, json, keep, **options):
        if not 1 <= hosts <= 26:
            raise CommandError("--hosts must be between 1 and 26")
        names = tuple(f"host-{chr(ord('a') + i)}" for i in range(hosts))
        cluster = Cluster(hosts=names, log=self.stdout.write)
        processes.stop_on_sigterm()
        try:
            try:
                cluster.start()
            except StackUnavailable as exc:
                raise CommandError(f"the cluster could not start: {exc}") from None
            env_file = self._write_env(cluster)
            if show:
                self._show(cluster, json)
                return
            if load_test:
                call_command(
                    "load_test",
                    url=cluster.url,
                    adapters=adapters,
                    clients=clients,
                    requests=requests,
                    stdout=self.stdout,
                    stderr=self.stderr,
                )
                return
            self._say_how_to_use(cluster, env_file)
            while True:
                for name, worker in cluster.workers.items():
                    if worker.process.poll() is not None:
                        self.stderr.write(f"{name} exited; see {worker.log_path}")
                time.sleep(5)
        except KeyboardInterrupt:
            self.stdout.write("stopping the cluster…")
        finally:
            cluster.stop(keep=keep)
            if keep:
                self.stdout.write(f"cluster folder kept: {cluster.root}")

    def _show(self, cluster: Cluster, json_path: Path | None) -> None:
        import json

        from adapters_app.chaos.client import Client
        from adapters_app.management.multi_host import MultiHost

        outcome = MultiHost(cluster, Client(cluster.url, cluster.key))()
        for check in outcome.checks:
            detail = "" if check.ok else f": {check.detail}"
            self.stdout.write(f"{'ok  ' if check.ok else 'FAIL'}  {check.what}{detail}")
        for note in outcome.notes:
            self.stdout.write(f"      {note}")
        if json_path is not None:
            json_path.write_text(json.dumps(outcome.as_dict(), indent=2))
        if outcome.failed_checks:
            failed = len(outcome.failed_checks)
            raise CommandError(f"{failed} multi-host check(s) failed; logs: {cluster.logs()}")

    @staticmethod
    def _write_env(cluster: Cluster) -> Path:
        """What a second terminal sources to act on the cluster (`make load-test`, manage.py)."""
        env = cluster.env()
        lines = [f"{name}={env[name]}" for name in ("DATABASE_URL", "REDIS_URL", "MINT_STORE", "MINT_QUEUE")]
        lines += [f"MINT_BASES_DIR={env['MINT_BASES_DIR']}", f"MINT_CLUSTER_URL={cluster.url}"]
        path = cluster.root / "cluster.env"
        path.write_text("".join(f"export {line}\n" for line in lines))
        return path

    def _say_how_to_use(self, cluster: Cluster, env_file: Path) -> None:
        hosts = ", ".join(cluster.hosts)
        self.stdout.write(
            f"\nMinT cluster: {len(cluster.hosts)} hosts ({hosts}), each a training and a serving worker\n"
            f"  web:      {cluster.url}  (API key: {cluster.key})\n"
            f"  store:    S3 bucket {cluster.bucket} on {cluster.s3.endpoint}\n"
            f"  folders:  {cluster.root} (hosts/<host>/ is each host's MINT_VAR_DIR)\n\n"
            "Load it from another terminal:\n"
            f'  . {env_file} && make load-test LOAD_ARGS="--url $MINT_CLUSTER_URL"\n\n'
            "Ctrl-C stops everything.\n"
        )
