"""`make bench-console`: server time of the console's main pages on the loaded fleet.

Run it after `bulk_seed` (a million adapters on PostgreSQL for the real figure).
Each page is requested in-process through the whole Django stack (middleware,
session auth, queries, template rendering), after warm-up, and timed per request.
"""

import statistics
import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from django.test import Client

from adapters_app.console.keyset import encode_cursor
from adapters_app.management.commands.bulk_seed import HANDLE_PREFIX
from adapters_app.models import Adapter, Revision

TARGET_P95_MS = 150


class Command(BaseCommand):
    help = "Print median and p95 server time of the console's pages on the loaded fleet."

    def add_arguments(self, parser):
        parser.add_argument("--requests", type=int, default=40, help="timed requests per page")
        parser.add_argument("--warmup", type=int, default=5)

    def handle(self, *args, requests, warmup, **options):
        total = Adapter.objects.filter(person__handle__startswith=HANDLE_PREFIX).order_by("-pk").first()
        if total is None:
            raise CommandError("no loaded fleet: run `manage.py bulk_seed` first")
        size = int(total.person.handle.removeprefix(HANDLE_PREFIX))
        middle = f"{HANDLE_PREFIX}{size // 2:07d}"
        deep = f"{HANDLE_PREFIX}{size * 9 // 10:07d}"
        revision = Revision.objects.filter(adapter__person__handle=middle).order_by("number").last()
        pages = {
            "overview": "/",
            "people, first page": "/people/",
            "people, page at 90 %": f"/people/?after={encode_cursor([deep])}",
            "people, search": f"/people/?q={middle[:-1]}",
            "adapter page": f"/people/{middle}/assistant/",
            "revision page": f"/people/{middle}/assistant/{revision.label}/",
            "adapters, first page": "/adapters/",
            "adapters, recently trained": "/adapters/?sort=trained",
            "adapters, gate + 7 days": "/adapters/?gate=ungated&trained=7d&sort=trained",
            "revisions, newest first": "/revisions/",
            "compare with parent": f"/people/{middle}/assistant/{revision.label}/compare",
            "jobs": "/jobs/",
            "workers": "/workers/",
            "audit log": "/audit/",
        }
        client = Client(SERVER_NAME="localhost")
        user, _ = get_user_model().objects.get_or_create(
            username="bench-console", defaults={"is_staff": True}
        )
        client.force_login(user)

        self.stdout.write(
            f"{size:,} loaded adapters, {connection.vendor}; {requests} timed requests per page after "
            f"{warmup} warm-up\n"
        )
        self.stdout.write(f"{'page':<28}{'median ms':>10}{'p95 ms':>10}  target p95 < {TARGET_P95_MS} ms")
        missed = []
        for name, url in pages.items():
            times = []
            for n in range(warmup + requests):
                started = time.perf_counter()
                response = client.get(url)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise CommandError(f"{name}: {url} answered {response.status_code}")
                if n >= warmup:
                    times.append(elapsed)
            p95 = statistics.quantiles(times, n=20)[-1]
            verdict = "ok" if p95 < TARGET_P95_MS else "MISSED"
            if p95 >= TARGET_P95_MS:
                missed.append(name)
            self.stdout.write(f"{name:<28}{statistics.median(times):>10.1f}{p95:>10.1f}  {verdict}")
        if missed:
            self.stdout.write(f"\np95 target missed: {', '.join(missed)}")
