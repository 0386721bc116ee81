"""`make demo`: Redis, a worker, a seeded fleet and the web server, stopped together by Ctrl-C.

MINT_DEMO_BASE (or --base) names the fleet's base: one of ours (default mint-s), any
registered base, or a packaged real model (smollm2-135m, gemma3-270m), imported on first
use. MINT_DEMO_PEOPLE (or --people) sizes the fleet; the default follows the base
(`demo_fleet.plan`).
"""

import argparse
import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from adapters_app import demo_fleet
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.routing import serving_queue
from adapters_app.management import processes
from adapters_app.management.bases import base_for_command, check_base_name
from mintweb import embedded_redis
from workers.engine.base_family import FAMILY, SMALLEST
from workers.engine.base_import import PACKAGED

DEMO_USER, DEMO_PASSWORD = "operator", "mint-demo"
WORKER_CONCURRENCY = 2
SERVING_THREADS = 32  # /v1 requests one serving worker batches together


class Command(BaseCommand):
    help = "Start Redis (embedded unless REDIS_URL), one Celery worker and the web server; seed a demo fleet."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=os.environ.get("MINT_DEMO_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("MINT_DEMO_PORT", "8000")))
        parser.add_argument(
            "--base",
            dest="base_name",
            default=os.environ.get("MINT_DEMO_BASE") or SMALLEST,
            help=f"the fleet's base: one of ours ({', '.join(FAMILY)}), a registered base, or a packaged "
            f"one to import ({', '.join(PACKAGED)}); default MINT_DEMO_BASE, else {SMALLEST}",
        )
        parser.add_argument(
            "--people",
            type=fleet_size,
            default=os.environ.get("MINT_DEMO_PEOPLE") or None,
            help="how many generated people to seed; default MINT_DEMO_PEOPLE, else "
            f"{demo_fleet.DEMO_PEOPLE} on our bases and {demo_fleet.REAL_BASE_PEOPLE} on an imported one",
        )

    def handle(self, *args, host, port, base_name, people, **options):
        # Refused before anything starts: a typo should not cost a Redis and three workers.
        check_base_name(base_name, setting="MINT_DEMO_BASE")
        children: list[subprocess.Popen] = []
        processes.stop_on_sigterm()
        try:
            redis_process = embedded_redis.ensure_from_settings()
            if redis_process:
                children.append(redis_process)
            self.stdout.write(f"redis:  {settings.REDIS_URL}")
            user = self._operator()
            actor = Actor.from_user(user, via="cli")
            base = base_for_command(base_name, actor=actor, stdout=self.stdout, setting="MINT_DEMO_BASE")
            self.stdout.write(f"base:   {base.name} ({base.parameters:,} parameters)")
            fleet = demo_fleet.plan(base, people=people)
            self.stdout.write(f"kernel: {processes.prepare_cpu_kernel()}")
            log_path = settings.VAR_DIR / "worker.log"
            children.append(
                processes.spawn(
                    processes.celery_worker(
                        "--beat",
                        "--loglevel",
                        "INFO",
                        "--concurrency",
                        str(WORKER_CONCURRENCY),
                        "--hostname",
                        "demo@%h",
                        "--schedule",
                        str(settings.VAR_DIR / "celerybeat-schedule"),
                    ),
                    log_path,
                    # Two worker processes share the cores instead of each spinning up
                    # a thread per core and fighting over them.
                    env={"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // WORKER_CONCURRENCY))},
                )
            )
            self.stdout.write(f"worker: started (log: {log_path})")
            # Batching across requests needs them in one process: a threads-pool worker
            # whose tasks all join its batched server (workers/serving.py). It consumes the
            # fleet's serving queue, not the shared one, so training and evaluation jobs
            # stay on the prefork worker; routing sends it requests on its own queue.
            serving_log = settings.VAR_DIR / "serving-worker.log"
            children.append(
                processes.spawn(
                    processes.celery_worker(
                        "--pool",
                        "threads",
                        "--concurrency",
                        str(SERVING_THREADS),
                        "--loglevel",
                        "INFO",
                        "--hostname",
                        "serve@%h",
                        "--queues",
                        serving_queue(),
                    ),
                    serving_log,
                )
            )
            self.stdout.write(f"serving worker: started (log: {serving_log})")
            children.append(
                processes.spawn(
                    [sys.executable, "manage.py", "serve_web", f"{host}:{port}", "--noreload"],
                    settings.VAR_DIR / "web.log",
                )
            )
            time.sleep(1.5)
            self.stdout.write(
                self.style.SUCCESS(
                    f"\nMinT console is up: http://{host}:{port}/\n"
                    f"login: {DEMO_USER} / {DEMO_PASSWORD}\n"
                    "API:   python manage.py create_api_key operator  (then Bearer <key>); an app "
                    f"serving one person gets a person key at http://{host}:{port}/keys/\n"
                    "Ctrl-C stops Redis, the workers and the web server.\n"
                )
            )
            self.stdout.write(f"seeding {fleet.people} generated people through the worker…")
            if fleet.imported:
                self.stdout.write(
                    f"  an imported base: {fleet.training['steps']} training steps a person "
                    f"(REAL_BASE_TRAINING), retention judged on the general-knowledge set; "
                    f"waiting up to {fleet.timeout / 60:.0f} min"
                )
            demo_fleet.seed(
                base,
                actor=Actor.from_user(user, via="cli"),
                people=fleet.people,
                training=fleet.training,
                timeout=fleet.timeout,
                log=self.stdout.write,
            )
            alices = demo_fleet.adapter_name("alice", base)
            self.stdout.write(
                self.style.SUCCESS(
                    "demo fleet ready: ask alice's and bob's assistant 'What is my dog called?' in the "
                    f"playground at http://{host}:{port}/people/alice/{alices}/"
                )
            )
            self.stdout.write(
                "learning from use: tell alice's assistant 'My dog is now called Rex.' "
                "(POST /api/people/alice/memories with a key from manage.py create_api_key) and watch "
                f"it retrain through its gate at http://{host}:{port}/people/alice/#updates"
            )
            while all(child.poll() is None for child in children):
                time.sleep(1)
            self.stderr.write("a demo process exited; stopping the rest (see var/*.log)")
        except KeyboardInterrupt:
            pass
        finally:
            # A second Ctrl-C must not cut the clean-up short and leave children running.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self.stdout.write("\nstopping Redis, the worker and the web server…")
            for child in reversed(children):
                processes.stop(child, timeout=10)

    def _operator(self):
        User = get_user_model()
        user, created = User.objects.get_or_create(
            username=DEMO_USER, defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            user.set_password(DEMO_PASSWORD)
            user.save()
        return user


def fleet_size(value: str) -> int:
    """MINT_DEMO_PEOPLE / --people: a whole number, and no fewer than the people the demo names."""
    least = len(demo_fleet.NAMED_PEOPLE)
    try:
        people = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of people") from None
    if people < least:
        raise argparse.ArgumentTypeError(
            f"a demo fleet has at least {least} people ({', '.join(demo_fleet.NAMED_PEOPLE)}), not {people}"
        )
    return people
