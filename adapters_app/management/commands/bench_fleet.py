"""`make bench-fleet`: a day of requests for a million personal adapters over a simulated
fleet, driven by the real routing decision and the real residency managers
(adapters_app/fleet_sim/).

Three policies on the same trace: MinT (routing.py's choice, each worker's tiers evicted
by LFU with aging, the default), the same routing with plain LRU tiers, and a random
worker per request with MinT's tiers. Per policy: the share of requests served from GPU
memory, the cpu tier, the local disk and the store; cold loads (disk or store) a
second; the p99 latency that loads add (over all requests, and over those that needed a
load); store egress; how unevenly requests land (busiest worker / mean). Then the same
over fleets of 16 to 128 workers, over Zipf exponents 0.8 to 1.2, and over the request
rate (the sweep's day compressed into fewer simulated seconds: the same requests with
more in flight at once, which is what routing's least-loaded choice sees).

Load times are bench-serving's measured figures, with the parts it could not measure
(the store's network trip, a host-to-GPU copy) as named assumptions
(adapters_app/fleet_sim/cold_loads.py); every one is a flag. Runs go to `--jobs`
processes (one per core by default); each is deterministic for its seed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from adapters_app.fleet_sim.cold_loads import DEFAULT_BASE, MEASURED, MIB
from adapters_app.fleet_sim.simulation import POLICIES, FleetResult, FleetSpec, simulate
from adapters_app.management.benchmarks import cpu_model, peak_rss_mib

SHORT = {POLICIES[0].name: "MinT", POLICIES[1].name: "LRU", POLICIES[2].name: "random"}
QUICK = {"adapters": 100_000, "requests": 100_000, "sweep_requests": 25_000, "popular": 1_000}


def _numbers(kind):
    def parse(text: str) -> list:
        try:
            values = [kind(part) for part in text.split(",") if part.strip()]
        except ValueError as exc:
            raise CommandError(f"not a list of numbers: {text!r}") from exc
        return values

    return parse


class Command(BaseCommand):
    help = (
        "Simulate a fleet serving a day of Zipf requests for personal adapters: hit rates, cold loads, p99."
    )

    def add_arguments(self, parser):
        d = FleetSpec()
        parser.add_argument("--adapters", type=int, default=d.adapters)
        parser.add_argument("--workers", type=int, default=d.workers, help="workers in the main table")
        parser.add_argument(
            "--gpu-slots", type=int, default=d.gpu_slots, help="adapters a worker's GPU holds"
        )
        parser.add_argument(
            "--cpu-slots", type=int, default=d.cpu_slots, help="adapters parked in host memory"
        )
        parser.add_argument(
            "--disk-slots", type=int, default=d.disk_slots, help="adapters on a worker's disk"
        )
        parser.add_argument("--zipf", type=float, default=d.zipf, help="the exponent in the main table")
        parser.add_argument("--requests", type=int, default=400_000, help="requests in the main table's day")
        parser.add_argument(
            "--sweep-requests", type=int, default=100_000, help="requests in each sweep run's day"
        )
        parser.add_argument("--sweep-workers", type=_numbers(int), default=[16, 32, 64, 128])
        parser.add_argument("--sweep-zipf", type=_numbers(float), default=[0.8, 1.0, 1.2])
        parser.add_argument(
            "--sweep-seconds",
            type=_numbers(float),
            default=[86_400, 3_600, 600, 100],
            help="the sweep's day compressed into these simulated seconds: the same requests, faster",
        )
        parser.add_argument("--seconds", type=float, default=d.seconds, help="simulated seconds (a day)")
        parser.add_argument("--popular", type=int, default=d.popular, help="the top ranks that drift")
        parser.add_argument("--drift", type=float, default=d.drift, help="share of them replaced in the day")
        parser.add_argument(
            "--retrain-fraction", type=float, default=d.retrain_fraction, help="of all adapters, in the day"
        )
        parser.add_argument("--service-seconds", type=float, default=d.service_seconds)
        parser.add_argument("--warmup", type=float, default=d.warmup, help="share of the day not counted")
        parser.add_argument("--seed", type=int, default=d.seed)
        parser.add_argument("--base", choices=sorted(MEASURED), default=DEFAULT_BASE, help="whose load times")
        parser.add_argument("--local-p50-ms", type=float, help="a load from local disk (default: measured)")
        parser.add_argument("--local-p95-ms", type=float)
        parser.add_argument("--store-first-byte-ms", type=float)
        parser.add_argument("--store-mib-per-s", type=float)
        parser.add_argument("--host-to-gpu-gib-per-s", type=float)
        parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
        parser.add_argument(
            "--quick", action="store_true", help=f"a check in about a minute: {QUICK}, fewer sweep points"
        )
        parser.add_argument(
            "--json", dest="json_path", default=str(Path(settings.VAR_DIR) / "reports" / "bench-fleet.json")
        )

    def handle(self, *args, **options):
        if options["quick"]:
            options.update(QUICK)
            options["sweep_workers"] = [16, 64]
            options["sweep_zipf"] = [0.8, 1.2]
            options["sweep_seconds"] = [86_400, 600]
        spec = self._spec(options)
        sweep = spec.with_(requests=options["sweep_requests"])
        runs = [("main", spec)]
        runs += [("workers", sweep.with_(workers=n)) for n in options["sweep_workers"]]
        runs += [("zipf", sweep.with_(zipf=z)) for z in options["sweep_zipf"]]
        runs += [("rate", sweep.with_(seconds=s)) for s in options["sweep_seconds"]]
        jobs = [(table, run_spec, policy) for table, run_spec in runs for policy in POLICIES]
        out = self.stdout.write
        out(self._header(spec, sweep, options))
        started = time.perf_counter()
        results = self._run_all(jobs, options["jobs"])
        tables = {
            table: [r for (t, _, _), r in zip(jobs, results, strict=True) if t == table] for table, _ in runs
        }
        out(main_table(spec, tables["main"]))
        if tables["workers"]:
            out(sweep_table("workers", "workers", tables["workers"], sweep))
        if tables["zipf"]:
            out(sweep_table("Zipf exponent", "zipf", tables["zipf"], sweep))
        if tables["rate"]:
            out(sweep_table("requests/s", "rate", tables["rate"], sweep))
        out(
            f"\n{len(jobs)} runs in {time.perf_counter() - started:.0f}s on {options['jobs']} processes "
            f"(the longest {max(r.wall_seconds for r in results):.0f}s); "
            f"peak RSS of this process {peak_rss_mib():.0f} MiB"
        )
        path = Path(options["json_path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({t: [r.as_dict() for r in rs] for t, rs in tables.items()}, indent=2))
        out(f"JSON: {path}")

    def _spec(self, options) -> FleetSpec:
        for name in ("adapters", "workers", "requests", "sweep_requests", "jobs"):
            if options[name] < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
        if min(options["gpu_slots"], options["cpu_slots"], options["disk_slots"]) < 0:
            raise CommandError("a tier's slots cannot be negative")
        if not 0 <= options["warmup"] < 1:
            raise CommandError("--warmup is a share of the day: from 0 up to (not including) 1")
        if any(s <= 0 for s in options["sweep_seconds"]):
            raise CommandError("--sweep-seconds must all be positive")
        if any(n < 1 for n in options["sweep_workers"]):
            raise CommandError("--sweep-workers must all be at least 1")
        times = MEASURED[options["base"]]
        overrides = {
            field: options[field]
            for field in (
                "local_p50_ms",
                "local_p95_ms",
                "store_first_byte_ms",
                "store_mib_per_s",
                "host_to_gpu_gib_per_s",
            )
            if options[field] is not None
        }
        if overrides:
            times = replace(times, **overrides, measured_in=times.measured_in + ", overridden by flags")
        return FleetSpec(
            adapters=options["adapters"],
            workers=options["workers"],
            gpu_slots=options["gpu_slots"],
            cpu_slots=options["cpu_slots"],
            disk_slots=options["disk_slots"],
            zipf=options["zipf"],
            requests=options["requests"],
            seconds=options["seconds"],
            popular=options["popular"],
            drift=options["drift"],
            retrain_fraction=options["retrain_fraction"],
            service_seconds=options["service_seconds"],
            warmup=options["warmup"],
            seed=options["seed"],
            cold_loads=times,
        )

    def _run_all(self, jobs, processes: int) -> list[FleetResult]:
        if processes == 1 or len(jobs) == 1:
            return [simulate(spec, policy) for _, spec, policy in jobs]
        # fork: the children inherit the configured Django and the imported modules.
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
            futures = [pool.submit(simulate, spec, policy) for _, spec, policy in jobs]
            return [future.result() for future in futures]

    def _header(self, spec: FleetSpec, sweep: FleetSpec, options) -> str:
        payload = spec.cold_loads.payload_bytes
        gib = payload / (1024 * MIB)
        lines = [
            "",
            "Fleet simulation: routing.py's choose() and workers/engine/residency.py's ResidencyManager "
            "per worker, over a simulated day",
            f"machine: {platform.node()}, {cpu_model()}, nproc {os.cpu_count()}, "
            f"Python {sys.version.split()[0]}; {options['jobs']} processes",
            f"fleet: {spec.workers} workers, each: GPU {spec.gpu_slots} adapters "
            f"({spec.gpu_slots * gib:.1f} GiB), "
            f"cpu tier {spec.cpu_slots} ({spec.cpu_slots * gib:.1f} GiB), local disk {spec.disk_slots} "
            f"({spec.disk_slots * gib:.0f} GiB); {spec.adapters:,} adapters of one base",
            f"trace: {spec.requests:,} requests in {spec.seconds:,.0f} simulated s "
            f"({spec.requests / spec.seconds:.1f}/s, {spec.requests / spec.adapters:.2f} per adapter), "
            f"Zipf({spec.zipf:g}) over a permutation whose top {spec.popular:,} ranks drift "
            f"({spec.drift:.0%} replaced over the day), {spec.retrain_fraction:.0%} of adapters retrained "
            f"(new sha256) over the day, seed {spec.seed}; the first {spec.warmup:.0%} of the day warms "
            "the caches and is not counted",
            f"sweeps: {sweep.requests:,} requests a day each ({sweep.requests / spec.seconds:.1f}/s), "
            "otherwise as above; by requests/s: that day compressed into fewer simulated seconds "
            "(the same requests, more of them in flight at once)",
            f"a request stays in flight {spec.service_seconds:g} s after its load (the least-loaded choice "
            "counts these); loads from disk or store queue on the worker's one loader",
            *spec.cold_loads.describe(),
        ]
        return "\n".join(lines)


def main_table(spec: FleetSpec, results: list[FleetResult]) -> str:
    lines = [
        "",
        f"{spec.adapters:,} adapters, {spec.workers} workers, Zipf({spec.zipf:g}), "
        f"{spec.requests:,} requests "
        "(share of requests served from each tier; rates per simulated second; idle: workers that "
        "served under a tenth of the mean)",
        f"{'policy':31} {'GPU':>6} {'CPU':>6} {'disk':>6} {'store':>6} {'cold loads/s':>12} "
        f"{'p99 added':>10} {'p99 if loaded':>13} {'egress MiB/s':>12} {'busiest/mean':>12} {'idle':>5}",
    ]
    for r in results:
        lines.append(
            f"{r.policy:31} {r.share('device'):6.3f} {r.share('cpu'):6.3f} {r.share('disk'):6.3f} "
            f"{r.share('store'):6.3f} {r.cold_loads_per_s:12.2f} {r.added_p99_ms:8.1f}ms "
            f"{r.loaded_p99_ms:11.1f}ms {r.store_egress_bytes_per_s / MIB:12.2f} {r.busiest_worker:12.1f}"
            f" {r.idle_workers:5d}"
        )
    return "\n".join(lines)


def sweep_table(title: str, field: str, results: list[FleetResult], sweep: FleetSpec) -> str:
    lines = [
        "",
        f"By {title} ({sweep.requests:,} requests a run; memory = GPU + CPU)",
        f"{title:>13} {'policy':8} {'GPU':>6} {'memory':>6} {'store':>6} {'cold loads/s':>12} "
        f"{'p99 added':>10} {'egress MiB/s':>12} {'busiest/mean':>12} {'idle':>5}",
    ]
    for r in results:
        value = r.spec.requests / r.spec.seconds if field == "rate" else getattr(r.spec, field)
        lines.append(
            f"{value:>13.4g} {SHORT[r.policy]:8} {r.share('device'):6.3f} "
            f"{r.share('device') + r.share('cpu'):6.3f} {r.share('store'):6.3f} {r.cold_loads_per_s:12.2f} "
            f"{r.added_p99_ms:8.1f}ms {r.store_egress_bytes_per_s / MIB:12.2f} {r.busiest_worker:12.1f}"
            f" {r.idle_workers:5d}"
        )
    return "\n".join(lines)
