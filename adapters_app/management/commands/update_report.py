"""`make update-report`: does a retrain from updates carry a changed fact, and at what cost?"""

import csv
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from adapters_app.lifecycle.gates import DEFAULT_GATE, judge
from adapters_app.management.bases import base_for_command, training_for_command
from workers.engine.base_family import FAMILY, SMALLEST
from workers.engine.base_import import PACKAGED
from workers.engine.persona_world import generate_world
from workers.engine.update_report import ARMS, SUITES, update_report


class Command(BaseCommand):
    help = (
        "Train r1 for generated people, change each one's dog's name as a stated update, retrain "
        "continuing from r1 and from scratch, and print the update suite, the person's other "
        "suites, retention and the gate's verdict for each, side by side."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--base",
            default=SMALLEST,
            help=f"one of our bases ({', '.join(FAMILY)}), a packaged real base ({', '.join(PACKAGED)}) "
            "or any registered base's name",
        )
        parser.add_argument("--people", type=int, default=4)
        parser.add_argument("--world-seed", type=int, default=0)
        parser.add_argument("--training", default=None, help="LoRA settings as JSON (default: eval-report's)")
        parser.add_argument(
            "--continued-steps",
            type=int,
            default=None,
            help="steps of the retrain that continues from r1 (default: the recipe's)",
        )
        parser.add_argument("--csv", dest="csv_path", default=None, help="write every person's scores here")

    def handle(self, *args, base, people, world_seed, training, continued_steps, csv_path, **options):
        if people < 1:
            raise CommandError("--people must be at least 1")
        registered = base_for_command(base, stdout=self.stdout)
        config = training_for_command(registered, training)
        started = time.monotonic()
        report = update_report(
            registered.path,
            registered.digest,
            generate_world(world_seed, people=max(people, 2)),
            base_name=base,
            people=people,
            config=config,
            continued_steps=continued_steps,
            log=lambda line: self.stdout.write(f"  {line}"),
        )
        passed = {arm: 0 for arm in ARMS}
        rows = []
        for person, by_arm in report.scores.items():
            for arm, scores in by_arm.items():
                checks = judge(scores, by_arm[ARMS[0]], DEFAULT_GATE)
                ok = all(check.passed for check in checks)
                passed[arm] += ok
                old, new = report.changes[person]
                rows.append(
                    {"person": person, "arm": arm, "old": old, "new": new, **scores, "gate_passed": ok}
                )
        self.stdout.write(
            f"\nA changed fact (the dog's name) on {base}, {people} people, world seed {world_seed}, "
            f"LoRA {config.as_dict()}, continued for {report.config['continued_steps']} steps\n"
            "(held-out phrasings; pass rates in [0, 1]; mean over people; "
            f"{statistics_note(report)})\n"
        )
        header = f"{'':<16}" + "".join(f"{suite:>11}" for suite in SUITES) + f"{'ret. drop':>11}{'gate':>8}"
        self.stdout.write(header)
        bare_retention = report.mean(ARMS[0], "retention")
        for arm in ARMS:
            cells = [report.mean(arm, suite) for suite in SUITES]
            retention = report.mean(arm, "retention")
            drop = None if retention is None or bare_retention is None else bare_retention - retention
            line = f"{arm:<16}" + "".join(f"{'—' if v is None else f'{v:.3f}':>11}" for v in cells)
            line += f"{'—' if drop is None else f'{drop:+.3f}':>11}{passed[arm]:>5}/{people}"
            self.stdout.write(line)
        self.stdout.write(f"\n{time.monotonic() - started:.0f}s ({report.seconds})")
        if csv_path:
            out = Path(csv_path)
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("w", newline="") as handle:
                writer = csv.DictWriter(
                    handle,
                    fieldnames=["person", "arm", "old", "new", *SUITES, "gate_passed"],
                    extrasaction="ignore",
                )
                writer.writeheader()
                writer.writerows(rows)
            self.stdout.write(f"written to {out}")


def statistics_note(report) -> str:
    dropped = sum(report.dropped_rows.values()) / max(len(report.dropped_rows), 1)
    return f"{dropped:.0f} rows teaching the old name dropped per person; gate = the default thresholds"
