"""`make preference-report`: DPO against chosen-only training, per generated person."""

import json
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from adapters_app.management.bases import base_for_command
from workers.engine.base_family import FAMILY, SMALLEST
from workers.engine.persona_world import generate_world
from workers.engine.preference_report import PREFERENCE_TRAINING, compare_preference_objectives
from workers.engine.training import TrainingConfig, TrainingConfigInvalid


class Command(BaseCommand):
    help = (
        "Train adapters per generated person on their preference pairs with one recipe: one on the "
        "chosen answers (sft), one on the pairs (dpo), and the sft one continued with DPO "
        "(sft-then-dpo); print their preference and retention scores beside the bare base's."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--base",
            default=SMALLEST,
            help=f"one of our bases ({', '.join(FAMILY)}: built on first use), micro, or any name "
            "the eval report takes",
        )
        parser.add_argument("--people", type=int, default=4)
        parser.add_argument("--world-seed", type=int, default=0)
        parser.add_argument(
            "--training",
            default="{}",
            help=f"LoRA settings as JSON, over {json.dumps(PREFERENCE_TRAINING)} (the objective is set "
            "per adapter)",
        )
        parser.add_argument("--csv", dest="csv_path", default=None, help="write the raw numbers here")

    def handle(self, *args, base, people, world_seed, training, csv_path, **options):
        if people < 1:
            raise CommandError("--people must be at least 1")
        try:
            settings = {**PREFERENCE_TRAINING, **json.loads(training)}
            settings.pop("objective", None)
            config = TrainingConfig.from_dict(settings)
        except (ValueError, TrainingConfigInvalid) as exc:
            raise CommandError(f"--training: {exc}") from None
        registered = base_for_command(base, stdout=self.stdout)
        world = generate_world(world_seed, people=people)
        started = time.monotonic()
        comparison = compare_preference_objectives(
            registered.path,
            registered.digest,
            world,
            base_name=base,
            people=people,
            config=config,
            log=lambda line: self.stdout.write(f"  {line}"),
        )
        recipe = {k: v for k, v in config.as_dict().items() if k != "objective"}
        self.stdout.write(
            f"\nPreference learning on {base}, {people} people, world seed {world_seed}: sft (chosen "
            f"answers), dpo (pairs), sft-then-dpo (dpo continued from the sft adapter, twice the steps), "
            f"one recipe {json.dumps(recipe)}\n(held-out phrasings; preference and retention are pass "
            "rates in [0, 1]; margin = log p(chosen) - log p(rejected) and log p(chosen) are means over "
            "the held-out pairs, in nats)\n"
        )
        self.stdout.write(comparison.table())
        seconds = {k: round(v) for k, v in comparison.seconds.items()}
        self.stdout.write(f"\n{time.monotonic() - started:.0f}s ({seconds})")
        if csv_path:
            out = Path(csv_path)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(comparison.csv())
            self.stdout.write(f"written to {out}")
