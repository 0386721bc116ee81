"""`make bench-training`: N people's adapters trained one after another (plain PEFT) against
one shared multi-adapter pass (workers/engine/multi_training.py), on the same base.

Measured side by side in one run, on generated people (`generate_world(0, people)`), with
the report's recipe (workers/engine/report.py:REPORT_TRAINING) at the given rank, person i
seeded i on both sides:

  separate   for each person: a fresh `load_base`, then `train_adapter`
  shared     `load_base` once, then `train_adapters` over everyone

Both sides run the same steps on the same rows in the same precision, in `--rounds` rounds
that alternate which side goes first (A B, B A, …, so a drift in the machine's speed
falls on both); the speedup is the median of the rounds' ratios, with their min-max. Then
every adapter of the first round
(2 per person) is graded on its person's held-out items plus the general items in one
batched generation (`grade_many`), and the suite scores of each person's two adapters are
compared: the shared pass must teach what the separate runs teach.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from adapters_app.management.bases import base_for_command
from adapters_app.management.benchmarks import cpu_model, peak_rss_mib
from workers.engine.base_family import FAMILY, SMALLEST
from workers.engine.report import REPORT_TRAINING, SUITE_ORDER

TARGET_SPEEDUP = 5.0
TARGET_SCORE_DIFFERENCE = 0.02
SIDES = ("separate", "shared")
LABELS = {"separate": "plain PEFT, one person after another", "shared": "one shared multi-adapter pass"}


class Command(BaseCommand):
    help = (
        "Wall time of training N people's adapters one after another (PEFT) against one shared "
        "multi-adapter pass, and the suite scores of both sets of adapters."
    )

    def add_arguments(self, parser):
        parser.add_argument("--base", default=SMALLEST, choices=["micro", *sorted(FAMILY)])
        parser.add_argument("--people", type=int, default=16)
        parser.add_argument("--rank", type=int, default=8)
        parser.add_argument("--steps", type=int, default=REPORT_TRAINING["steps"])
        parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
        parser.add_argument(
            "--rounds",
            type=int,
            default=5,
            help="pairs of runs, alternating which side goes first (one pair is 5-8 minutes on mint-s here)",
        )
        parser.add_argument(
            "--json",
            dest="json_path",
            default=str(Path(settings.VAR_DIR) / "reports" / "bench-training.json"),
        )

    def handle(self, *args, **options):
        import torch

        from workers.engine.training import TrainingConfig, TrainingConfigInvalid

        if options["people"] < 1:
            raise CommandError("--people must be at least 1")
        if options["rounds"] < 1:
            raise CommandError("--rounds must be at least 1")
        try:
            config = TrainingConfig.from_dict(
                {**REPORT_TRAINING, "rank": options["rank"], "steps": options["steps"]}
            )
        except TrainingConfigInvalid as exc:
            raise CommandError(str(exc)) from None
        torch.set_num_threads(options["threads"] or len(os.sched_getaffinity(0)))
        row = base_for_command(options["base"], stdout=self.stdout)
        bench = TrainingBench(row.path, row.digest, options["people"], config, log=self.stdout.write)
        out = self.stdout.write
        out(bench.header(row.name))
        bench.warm_up()
        rounds = [bench.train_round(index, options["rounds"]) for index in range(options["rounds"])]
        ratios = [speedup_of(timings) for timings in rounds]
        steady = statistics.median(steady_speedup(timings) for timings in rounds)
        timings = rounds[0]  # graded, and shown in detail
        out(timing_table(timings, bench))
        out(rounds_table(rounds))
        bare = bench.bare_base_cost()
        out(bare_base_table(bare, bench))
        comparison = bench.grade(timings)
        out(comparison.table())
        out(summary(ratios, steady, comparison))
        load = os.getloadavg()[0]
        out(f"\npeak RSS of this process: {peak_rss_mib():.0f} MiB; load average {load:.1f} at end")
        report = {
            "base": row.name,
            "conditions": bench.conditions(),
            "rounds": [{side: t.as_dict(bench) for side, t in timings.items()} for timings in rounds],
            "bare_base_step": bare,
            "scores": comparison.as_dict(),
            "speedup": statistics.median(ratios),
            "speedup_per_round": ratios,
            "speedup_from_median_steps": steady,
            "same_payloads_every_round": same_payloads(rounds),
            "targets": {"speedup": TARGET_SPEEDUP, "max_score_difference": TARGET_SCORE_DIFFERENCE},
            "peak_rss_mib": peak_rss_mib(),
        }
        path = Path(options["json_path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        out(f"JSON: {path}")


class Timing:
    """One side's wall time: base loads, training, and the optimiser steps inside it."""

    def __init__(self):
        self.seconds = 0.0  # everything, loads included
        self.load_seconds = 0.0
        self.step_seconds: list[float] = []  # one per optimiser step: time since the previous step
        self.payloads: list[bytes] = []
        self.final_losses: list[float] = []
        self.run_seconds: list[float] = []  # per train_adapter / train_adapters call

    def step_clock(self):
        """An on_step callback that records each optimiser step's duration, from the
        second step of a run on: the first also carries the run's setup (PEFT wrapping,
        initial factors), which the total shows."""
        last: list[float] = []

        def on_step(step, total, loss):
            now = time.perf_counter()
            if last:
                self.step_seconds.append(now - last[0])
            last[:] = [now]

        return on_step

    def seconds_per_step(self) -> float:
        return sum(self.step_seconds) / max(1, len(self.step_seconds))

    def median_step(self) -> float:
        """Robust to bursts of other work on a shared machine, unlike the total."""
        return statistics.median(self.step_seconds) if self.step_seconds else 0.0

    def as_dict(self, bench) -> dict:
        return {
            "seconds": self.seconds,
            "load_seconds": self.load_seconds,
            "seconds_per_step": self.seconds_per_step(),
            "median_seconds_per_step": self.median_step(),
            "run_seconds": self.run_seconds,
            "rows_per_second": bench.rows / self.seconds,
        }


class TrainingBench:
    def __init__(self, folder: str, digest: str, people: int, config, log):
        from dataclasses import replace

        from workers.engine.base_family import replay_examples
        from workers.engine.examples import parse_jsonl
        from workers.engine.multi_training import AdapterData
        from workers.engine.persona_world import generate_world, jsonl

        self.folder, self.digest, self.config, self.log = folder, digest, config, log
        self.world = generate_world(0, people)
        self.people = list(self.world.people[:people])
        self.data = [
            AdapterData(parse_jsonl(jsonl(person.training_rows())).examples, seed=index)
            for index, person in enumerate(self.people)
        ]
        self.replay = replay_examples(folder) if config.replay else []
        if config.replay and not self.replay:
            log("this base ships no replay rows (e.g. micro): training without replay on both sides")
            self.config = config = replace(config, replay=0.0)
        self._conditions: dict | None = None
        # Rows trained on, the same on both sides: every person's batch, every step.
        self.rows = len(self.people) * config.steps * config.batch_size

    def conditions(self) -> dict:
        """The run's conditions, read once (at the header, so the load average is the start's)."""
        if self._conditions is None:
            self._conditions = self._read_conditions()
        return self._conditions

    def _read_conditions(self) -> dict:
        import peft
        import torch
        import transformers

        from workers.engine.base_models import load_base

        base = load_base(self.folder, self.digest)
        model_config = base.model.config
        return {
            "device": base.device,
            "cpu": cpu_model(),
            "nproc": len(os.sched_getaffinity(0)),
            "load_average_1m": os.getloadavg()[0],
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "dtype": str(next(base.model.parameters()).dtype).removeprefix("torch."),
            "parameters": sum(p.numel() for p in base.model.parameters()),
            "layers": model_config.num_hidden_layers,
            "hidden": model_config.hidden_size,
            "people": len(self.people),
            "training_rows_per_person": [len(d.examples) for d in self.data],
            "replay_rows": len(self.replay),
            "training": self.config.as_dict(),
        }

    def header(self, base_name: str) -> str:
        c = self.conditions()
        t = c["training"]
        rows = c["training_rows_per_person"]
        return (
            f"\nTraining benchmark on {base_name} ({c['parameters']:,} parameters, {c['layers']} layers, "
            f"hidden {c['hidden']}, {c['dtype']})\n"
            f"machine: {platform.node()}, {c['cpu']}, nproc {c['nproc']}, "
            f"torch threads {c['torch_threads']}, load average {c['load_average_1m']:.1f} at start, "
            f"device {c['device']}; torch {c['torch']}, transformers {c['transformers']}, peft {c['peft']}\n"
            f"{c['people']} generated people (world seed 0, {min(rows)}-{max(rows)} training rows each, "
            f"person i seeded i), {c['replay_rows']} replay rows\n"
            f"recipe (REPORT_TRAINING): rank {t['rank']}, alpha {t['alpha']}, targets {t['targets']}, "
            f"{t['steps']} steps, batch {t['batch_size']} (replay share {t['replay']}), "
            f"lr {t['learning_rate']}, "
            f"init {t['init']}, dropout {t['dropout']}; same steps, rows and precision on both sides\n"
        )

    def warm_up(self) -> None:
        """Two untimed steps of each side first, so neither pays the process's first-use
        costs (imports, PEFT's first wrap, kernel selection) inside its measurement."""
        from dataclasses import replace

        from workers.engine.base_models import load_base
        from workers.engine.multi_training import train_adapters
        from workers.engine.training import train_adapter

        short = replace(self.config, steps=2)
        base = load_base(self.folder, self.digest)
        train_adapter(base.model, base.tokenizer, self.data[0].examples, short, replay=self.replay)
        base = load_base(self.folder, self.digest)
        train_adapters(base.model, base.tokenizer, self.data[:2], short, replay=self.replay)
        self.log("warmed up: 2 untimed steps of each side")

    def train_round(self, index: int, of: int) -> dict[str, Timing]:
        """Both sides once; odd rounds run the shared pass first."""
        order = SIDES if index % 2 == 0 else SIDES[::-1]
        self.log(f"round {index + 1} of {of}: {order[0]} first")
        train = {"separate": self.train_separately, "shared": self.train_shared}
        return {side: train[side]() for side in order}

    def train_separately(self) -> Timing:
        from dataclasses import replace

        from workers.engine.base_models import load_base
        from workers.engine.training import train_adapter

        timing = Timing()
        started = time.perf_counter()
        for person, data in zip(self.people, self.data, strict=True):
            loading = time.perf_counter()
            base = load_base(self.folder, self.digest)
            timing.load_seconds += time.perf_counter() - loading
            result = train_adapter(
                base.model,
                base.tokenizer,
                data.examples,
                replace(self.config, seed=data.seed),
                on_step=timing.step_clock(),
                replay=self.replay,
            )
            timing.run_seconds.append(time.perf_counter() - loading)
            timing.payloads.append(result.payload)
            timing.final_losses.append(result.losses[-1])
            self.log(f"separate: trained {person.handle} ({time.perf_counter() - started:.0f}s so far)")
        timing.seconds = time.perf_counter() - started
        return timing

    def train_shared(self) -> Timing:
        from workers.engine.base_models import load_base
        from workers.engine.multi_training import train_adapters

        timing = Timing()
        clock = timing.step_clock()
        steps = self.config.steps

        def on_step(step, total, loss):
            clock(step, total, loss)
            if step % 25 == 0 or step == total:
                self.log(f"shared: step {step}/{steps}, mean loss {loss:.3f}")

        started = time.perf_counter()
        base = load_base(self.folder, self.digest)
        timing.load_seconds = time.perf_counter() - started
        results = train_adapters(
            base.model, base.tokenizer, self.data, self.config, on_step=on_step, replay=self.replay
        )
        timing.seconds = time.perf_counter() - started
        timing.run_seconds = [timing.seconds]
        timing.payloads = [r.payload for r in results]
        timing.final_losses = [r.losses[-1] for r in results]
        return timing

    def bare_base_cost(self, repeats: int = 3) -> dict:
        """Where the time goes: the bare base's forward + backward (no adapters) over the
        rows of one step of the shared pass, run as one batch per person (each padded to
        its own longest row, as train_adapter pads) and as the one wide batch (padded to
        the longest of all). Same rows and arithmetic; only the batch shape differs."""
        import random

        from workers.engine.base_models import load_base
        from workers.engine.prompting import encode_for_training
        from workers.engine.training import collate, shuffled_batches

        base = load_base(self.folder, self.digest)
        model, tokenizer, config = base.model, base.tokenizer, self.config
        replay = [encode_for_training(tokenizer, ex, config.max_length) for ex in self.replay]
        replay_size = round(config.batch_size * config.replay) if replay else 0
        batches = []
        for data in self.data:
            order = random.Random(data.seed)
            rows = [encode_for_training(tokenizer, ex, config.max_length) for ex in data.examples]
            own = next(shuffled_batches(rows, min(config.batch_size - replay_size, len(rows)), order))
            batches.append(own + (next(shuffled_batches(replay, replay_size, order)) if replay_size else []))
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        # A gradient at the bottom makes backward run through every layer, as LoRA's does.
        model.get_input_embeddings().weight.requires_grad_(True)
        model.train()

        def forward_backward(batch_list) -> tuple[float, int]:
            started, computed = time.perf_counter(), 0
            for batch in batch_list:
                ids, labels, attention = collate(batch, tokenizer.pad_token_id, base.device)
                model(input_ids=ids, attention_mask=attention, labels=labels).loss.backward()
                computed += ids.numel()
            return time.perf_counter() - started, computed

        wide = [[row for batch in batches for row in batch]]
        forward_backward(batches[:1])  # warm-up
        per_person = [forward_backward(batches) for _ in range(repeats)]
        shared = [forward_backward(wide) for _ in range(repeats)]
        real = sum(len(ids) for batch in batches for ids, _ in batch)
        return {
            "per_person_batches_seconds": min(s for s, _ in per_person),
            "one_wide_batch_seconds": min(s for s, _ in shared),
            "tokens": real,
            "per_person_batches_padded_tokens": per_person[0][1],
            "one_wide_batch_padded_tokens": shared[0][1],
        }

    def grade(self, timings: dict[str, Timing]) -> ScoreComparison:
        from workers.engine.batch_grading import grade_many
        from workers.engine.suites import scores

        self.log("grading every adapter on its person's held-out items + the general items…")
        general = self.world.general_items()
        work, payloads = [], {}
        for side in SIDES:
            for payload, person in zip(timings[side].payloads, self.people, strict=True):
                sha = hashlib.sha256(payload).hexdigest()
                payloads[sha] = payload
                work.append((sha, person.eval_items(self.world) + general))
        started = time.perf_counter()
        graded = grade_many(self.folder, self.digest, work, payloads)
        seconds = time.perf_counter() - started
        per_side = {
            side: graded[i * len(self.people) : (i + 1) * len(self.people)] for i, side in enumerate(SIDES)
        }
        return ScoreComparison(
            [p.handle for p in self.people],
            {side: [scores(results) for results in per_side[side]] for side in SIDES},
            identical=sum(
                a == b for a, b in zip(timings["separate"].payloads, timings["shared"].payloads, strict=True)
            ),
            items=sum(len(items) for _, items in work),
            seconds=seconds,
        )


class ScoreComparison:
    def __init__(self, handles: list[str], scores: dict, identical: int, items: int, seconds: float):
        self.handles, self.scores, self.identical, self.items, self.seconds = (
            handles,
            scores,
            identical,
            items,
            seconds,
        )

    def difference(self, index: int) -> float:
        separate, shared = self.scores["separate"][index], self.scores["shared"][index]
        return max(abs(separate.get(s, 0.0) - shared.get(s, 0.0)) for s in SUITE_ORDER)

    def max_difference(self) -> float:
        return max(self.difference(i) for i in range(len(self.handles)))

    def table(self) -> str:
        lines = [
            "",
            f"Suite scores per person, separate / shared ({self.items} items graded in {self.seconds:.0f}s; "
            f"{self.identical}/{len(self.handles)} payloads byte-identical)",
            f"{'person':14}" + "".join(f"{suite:>13}" for suite in SUITE_ORDER) + f"{'max |Δ|':>9}",
        ]
        for index, handle in enumerate(self.handles):
            separate, shared = self.scores["separate"][index], self.scores["shared"][index]
            cells = "".join(f"{separate.get(s, 0):>7.2f} /{shared.get(s, 0):4.2f}" for s in SUITE_ORDER)
            lines.append(f"{handle:14}{cells}{self.difference(index):>9.3f}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "people": self.handles,
            "separate": self.scores["separate"],
            "shared": self.scores["shared"],
            "max_difference": self.max_difference(),
            "byte_identical_payloads": self.identical,
        }


def timing_table(timings: dict[str, Timing], bench: TrainingBench) -> str:
    people, config = len(bench.people), bench.config
    lines = [
        "",
        f"{'':38} {'total s':>8} {'loads s':>8} {'opt steps':>9} {'s/step':>7} {'median':>7} "
        f"{'rows/step':>9} {'rows/s':>7}",
    ]
    for side in SIDES:
        timing = timings[side]
        optimizer_steps = config.steps * (people if side == "separate" else 1)
        rows_per_step = config.batch_size * (1 if side == "separate" else people)
        lines.append(
            f"{LABELS[side]:38} {timing.seconds:8.1f} {timing.load_seconds:8.1f} {optimizer_steps:9d} "
            f"{timing.seconds_per_step():7.3f} {timing.median_step():7.3f} {rows_per_step:9d} "
            f"{bench.rows / timing.seconds:7.1f}"
        )
    runs = timings["separate"].run_seconds
    lines += [
        "s/step: mean (and median) optimiser step from each run's second step on (the first carries "
        "setup); rows/s: all rows trained over the total",
        f"separate runs, one per person: {min(runs):.1f}s min, {statistics.median(runs):.1f}s median, "
        f"{max(runs):.1f}s max (a wide spread means other work shared the CPU)",
    ]
    separate, shared = timings["separate"].final_losses, timings["shared"].final_losses
    worst = max(abs(a - b) / abs(a) for a, b in zip(separate, shared, strict=True))
    lines.append(f"final training loss, shared vs separate: largest relative difference {worst:.2e}")
    return "\n".join(lines)


def bare_base_table(bare: dict, bench: TrainingBench) -> str:
    people, batch = len(bench.people), bench.config.batch_size
    lines = [
        "",
        "Where the time goes: the bare base's forward + backward (no adapters) over one step's rows "
        "(best of 3)",
        f"{'':44} {'seconds':>8} {'tokens incl. padding':>21}",
        f"{f'{people} batches of {batch}, each padded to its own longest':44} "
        f"{bare['per_person_batches_seconds']:8.3f} {bare['per_person_batches_padded_tokens']:21d}",
        f"{f'one batch of {people * batch}, padded to the longest':44} "
        f"{bare['one_wide_batch_seconds']:8.3f} {bare['one_wide_batch_padded_tokens']:21d}",
        f"real tokens: {bare['tokens']}; the wide batch costs "
        f"{bare['one_wide_batch_seconds'] / bare['per_person_batches_seconds']:.2f}x the per-person batches",
    ]
    return "\n".join(lines)


def speedup_of(timings: dict[str, Timing]) -> float:
    return timings["separate"].seconds / timings["shared"].seconds


def same_payloads(rounds: list[dict[str, Timing]]) -> bool:
    """Training is seeded: every round must make the very same adapters."""
    first = rounds[0]
    return all(t[side].payloads == first[side].payloads for t in rounds for side in SIDES)


def rounds_table(rounds: list[dict[str, Timing]]) -> str:
    lines = ["", f"{'round':>5} {'first':>9} {'separate s':>11} {'shared s':>9} {'ratio':>6}"]
    for index, timings in enumerate(rounds, start=1):
        first = next(iter(timings))
        lines.append(
            f"{index:5d} {first:>9} {timings['separate'].seconds:11.1f} {timings['shared'].seconds:9.1f} "
            f"{speedup_of(timings):6.2f}"
        )
    if not same_payloads(rounds):
        lines.append("WARNING: a later round trained different adapters than the first (not deterministic)")
    return "\n".join(lines)


def summary(ratios: list[float], steady: float, comparison: ScoreComparison) -> str:
    """The verdicts; `steady` is the median over rounds of the ratio from median step times."""
    speedup = statistics.median(ratios)
    difference = comparison.max_difference()
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else "one round"
    rows = [
        (
            f"speedup: separate / shared (median of {len(ratios)})",
            speedup,
            f"≥ {TARGET_SPEEDUP:g}",
            speedup >= TARGET_SPEEDUP,
        ),
        (
            "max per-person suite score |Δ|",
            difference,
            f"≤ {TARGET_SCORE_DIFFERENCE:g}",
            difference <= TARGET_SCORE_DIFFERENCE + 1e-9,  # pass rates: 0.52 - 0.50 is 0.020000000000000018
        ),
    ]
    lines = ["", f"{'target':44} {'value':>8} {'target':>8}  verdict"]
    for name, value, target, met in rows:
        lines.append(f"{name:44} {value:8.3f} {target:>8}  {'met' if met else 'MISSED'}")
    lines.append(
        f"(rounds' ratios {spread}; from median step times alone, less sensitive to other work on "
        f"the machine: {steady:.2f}x)"
    )
    return "\n".join(lines)


def steady_speedup(timings: dict[str, Timing]) -> float:
    separate, shared = timings["separate"], timings["shared"]
    return (separate.median_step() * len(separate.step_seconds)) / (
        shared.median_step() * len(shared.step_seconds)
    )
