"""`make eval-report`: does each person's adapter carry their state, and only theirs?"""

import json
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from adapters_app.management.bases import base_for_command, training_for_command
from workers.engine.base_family import FAMILY, SMALLEST
from workers.engine.base_import import PACKAGED
from workers.engine.persona_world import generate_world
from workers.engine.report import REAL_BASE_TRAINING, REPORT_TRAINING, personalization_report


class Command(BaseCommand):
    help = (
        "Train adapters for generated people on a default base and print, per suite, the bare "
        "base, each person's own adapter and another person's adapter on held-out items."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--base",
            default=SMALLEST,
            help=f"one of our bases ({', '.join(FAMILY)}: built on first use), a packaged real base "
            f"({', '.join(PACKAGED)}: imported on first use) or any registered base's name",
        )
        parser.add_argument("--people", type=int, default=4)
        parser.add_argument("--world-seed", type=int, default=0)
        parser.add_argument(
            "--training",
            default=None,
            help="LoRA settings as JSON (default: the recipe measured for the base: "
            f"{json.dumps(REPORT_TRAINING)} on ours, {json.dumps(REAL_BASE_TRAINING)} on real ones)",
        )
        parser.add_argument(
            "--json", dest="json_path", default=str(Path(settings.VAR_DIR) / "reports" / "eval-report.json")
        )

    def handle(self, *args, base, people, world_seed, training, json_path, **options):
        if people < 2:
            raise CommandError("--people must be at least 2 (own vs another person's adapter)")
        registered = base_for_command(base, stdout=self.stdout)
        config = training_for_command(registered, training)
        folder = Path(registered.path)
        world = generate_world(world_seed, people=max(people, 2))
        started = time.monotonic()
        report = personalization_report(
            str(folder),
            registered.digest,
            world,
            base_name=base,
            people=people,
            config=config,
            log=lambda line: self.stdout.write(f"  {line}"),
        )
        self.stdout.write(
            f"\nPersonalization on {base}, {people} people, world seed {world_seed}, "
            f"LoRA {config.as_dict()}\n(held-out paraphrases; scores are pass rates in [0, 1])\n"
        )
        self.stdout.write(report.table())
        self.stdout.write(f"\n{time.monotonic() - started:.0f}s ({report.seconds})")
        out = Path(json_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "base": base,
                    "people": report.people,
                    "training": report.config,
                    "means": {s: {c: report.mean(s, c) for c in cols} for s, cols in report.cells.items()},
                    "retention_drop": report.retention_drop(),
                    "base_competence": report.competence,
                },
                indent=2,
            )
        )
        self.stdout.write(f"written to {out}")
