"""`make chaos`: fault injection against a private stack, and the table of what it cost.

Starts a stack of its own (`adapters_app/management/private_stack.py`: a PostgreSQL cluster and a Redis
server on free ports, a web server, a training worker and two serving workers, the store
on a small tmpfs), runs each scenario of `adapters_app/chaos/scenarios.py` against it and
prints, per fault, the work in flight, how much of it was lost or duplicated, and how many
seconds the stack took to do work again. Exits non-zero when anything was lost or
duplicated, or a scenario's check failed. The machine's own PostgreSQL and Redis are never
touched: this process's database is re-pointed at the private one before its first query.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from adapters_app.chaos.client import Client
from adapters_app.chaos.scenarios import BY_NAME, SCENARIOS, Outcome
from adapters_app.management import processes
from adapters_app.management.private_stack import Stack, StackUnavailable


class Command(BaseCommand):
    help = (
        "Inject faults into a private stack (Redis and PostgreSQL restarts, a killed worker, a full disk, …)"
    )
    # No check may open the configured database: this command uses a private one.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument(
            "--only", action="append", choices=sorted(BY_NAME), help="run this scenario (repeatable)"
        )
        parser.add_argument("--json", type=Path, help="also write the outcomes as JSON here")
        parser.add_argument("--keep", action="store_true", help="keep the stack's folder (logs) afterwards")

    def handle(self, *args, only, json: Path | None, keep: bool, **options):
        chosen = [s for s in SCENARIOS if not only or s.name in only]
        stack = Stack(log=self.stdout.write)
        processes.stop_on_sigterm()
        outcomes: list[Outcome] = []
        started = time.monotonic()
        try:
            try:
                stack.start()
            except StackUnavailable as exc:
                raise CommandError(f"private stack unavailable: {exc}") from None
            client = Client(stack.url, stack.key)
            for scenario in chosen:
                self.stdout.write(f"{scenario.name}: {scenario.fault}…")
                try:
                    outcome = scenario(stack, client)()
                except Exception as exc:
                    outcome = Outcome(scenario.name, scenario.fault, scenario.in_flight)
                    outcome.check("the scenario ran to the end", False, f"{type(exc).__name__}: {exc}")
                    outcome.notes.append(traceback.format_exc()[-1500:])
                outcomes.append(outcome)
                self.stdout.write(f"  {_summary(outcome)}")
        finally:
            stack.stop(keep=keep)
            if keep:
                self.stdout.write(f"stack folder kept: {stack.root}")
        if json is not None:
            json.write_text(_dumps([o.as_dict() for o in outcomes]))
        self.stdout.write("\n" + table(outcomes, seconds=time.monotonic() - started))
        bad = [o for o in outcomes if o.lost or o.duplicated or o.failed_checks]
        if bad:
            raise CommandError(f"{len(bad)} scenario(s) lost or duplicated work, or failed a check")


def _dumps(rows) -> str:
    return json.dumps(rows, indent=2)


def _summary(outcome: Outcome) -> str:
    if outcome.skipped:
        return f"skipped: {outcome.skipped}"
    failed = "; ".join(f"{c.what}: {c.detail}" for c in outcome.failed_checks)
    return (
        f"sent {outcome.sent}, lost {outcome.lost}, duplicated {outcome.duplicated}, "
        f"recovered {_seconds(outcome.recovered_s)} ({outcome.seconds:.0f}s)"
        + (f"; FAILED {failed}" if failed else "")
    )


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def table(outcomes: list[Outcome], *, seconds: float) -> str:
    header = ("fault", "work in flight", "lost", "duplicated", "recovered in")
    rows = [
        (
            o.fault,
            o.in_flight,
            "-" if o.skipped else str(o.lost),
            "-" if o.skipped else str(o.duplicated),
            "skipped" if o.skipped else _seconds(o.recovered_s),
        )
        for o in outcomes
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(header), "  ".join("-" * w for w in widths), *map(line, rows)]
    notes = [f"- {o.name}: {note}" for o in outcomes for note in ([o.skipped] if o.skipped else o.notes[:4])]
    failed = [f"- {o.name}: FAILED {c.what}: {c.detail}" for o in outcomes for c in o.failed_checks]
    return "\n".join([*out, "", *failed, *notes, f"\n{len(outcomes)} scenarios in {seconds:.0f}s"]) + "\n"
