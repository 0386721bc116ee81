"""`manage.py sweep_learning_rate --base NAME`: the learning rate to give a base in a study."""

import json
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from adapters_app.lifecycle.studies import ALPHA_PER_RANK, DEFAULT_TRAINING
from adapters_app.management.bases import base_for_command
from workers.engine.base_family import SMALLEST
from workers.engine.lr_sweep import sweep_learning_rates
from workers.engine.training import TARGET_PRESETS, TrainingConfig, TrainingConfigInvalid

DEFAULT_RATES = "0.001,0.005,0.02"


class Command(BaseCommand):
    help = (
        "Train one adapter per learning rate for one generated person on a base, grade them and "
        "the bare base together, and name the rate with the best balance of learning and keeping."
    )

    def add_arguments(self, parser):
        parser.add_argument("--base", default=SMALLEST, help="any name the eval report takes")
        parser.add_argument(
            "--rates", default=DEFAULT_RATES, help=f"comma-separated (default {DEFAULT_RATES})"
        )
        parser.add_argument(
            "--training",
            default="{}",
            help=f"the other settings as JSON, over the study defaults {json.dumps(DEFAULT_TRAINING)}",
        )
        parser.add_argument("--rank", type=int, default=8)
        parser.add_argument("--targets", choices=TARGET_PRESETS, default="attention")
        parser.add_argument(
            "--json", dest="json_path", default=str(Path(settings.VAR_DIR) / "reports" / "lr-sweep.json")
        )

    def handle(self, *args, base, rates, training, rank, targets, json_path, **options):
        try:
            chosen_rates = [float(r) for r in rates.split(",") if r.strip()]
        except ValueError:
            raise CommandError(f"--rates: {rates!r} is not a comma-separated list of numbers") from None
        if not chosen_rates or any(r <= 0 for r in chosen_rates):
            raise CommandError("--rates: give at least one learning rate, each above 0")
        try:
            config = TrainingConfig.from_dict(
                {**DEFAULT_TRAINING, **json.loads(training), "rank": rank, "alpha": ALPHA_PER_RANK * rank}
                | {"targets": targets}
            )
        except (ValueError, TrainingConfigInvalid) as exc:
            raise CommandError(f"--training: {exc}") from None
        row = base_for_command(base, stdout=self.stdout)
        started = time.monotonic()
        sweep = sweep_learning_rates(
            row.name,
            row.path,
            row.digest,
            chosen_rates,
            config,
            log=lambda line: self.stdout.write(f"  {line}"),
        )
        self.stdout.write(
            f"\nLearning rates on {row.name}, rank {rank}, person {sweep.person}, "
            f"{json.dumps({k: v for k, v in config.as_dict().items() if k != 'learning_rate'})}\n"
        )
        self.stdout.write(sweep.table())
        self.stdout.write(
            f"\nchosen: {sweep.chosen().learning_rate:g} (personal mean minus retention drop); "
            f"{time.monotonic() - started:.0f}s"
        )
        out = Path(json_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(sweep.as_dict(), indent=2))
        self.stdout.write(f"written to {out}")
