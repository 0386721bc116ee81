"""The personalization report: does a person's adapter carry their state, and only theirs?

For a set of generated people on one base it trains each person's adapter, then
scores every suite three ways on each person's held-out items: the bare base,
the person's own adapter, and another person's adapter. Retention compares each
adapter's general score with the bare base's on the same general items.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from workers.engine.base_family import replay_examples
from workers.engine.base_import import import_record
from workers.engine.base_models import load_base
from workers.engine.batch_grading import grade_many
from workers.engine.examples import parse_jsonl
from workers.engine.general_knowledge import general_knowledge_items
from workers.engine.persona_world import World, jsonl
from workers.engine.suites import scores
from workers.engine.training import TrainingConfig, train_adapter

COLUMNS = ("bare base", "own adapter", "other's adapter")
SUITE_ORDER = ("recall", "tool", "preference", "leakage", "retention")
# The LoRA recipe the report (and the demo fleet) trains with on the default bases.
# Half of each batch replays the base's own corpus and only the attention projections
# adapt: both keep the base's general competence (see the README's measured table).
REPORT_TRAINING = {
    "steps": 150,
    "learning_rate": 0.005,
    "batch_size": 16,
    "replay": 0.5,
    "targets": "attention",
}
# The recipe for a real pretrained base (SmolLM2-135M-Instruct), chosen by measurement on
# one person (README "Personal state on a real pretrained base"): without replay the
# adapter answered everything in the person's templates (retention 0.18); with its own
# answers as replay (self_replay.py), half of each batch, recall 0.75 and retention 0.67;
# a quarter gave recall 0.88 but retention 0.55. Rows are short (under 128 tokens with
# SmolLM2's system turn), so checkpointing would only cost time here.
REAL_BASE_TRAINING = {
    "steps": 80,
    "learning_rate": 0.005,
    "batch_size": 8,
    "replay": 0.5,
    "targets": "attention",
    "gradient_checkpointing": "off",
}


def measured_recipe(base_folder: str) -> dict:
    """The recipe measured for a base's kind: REAL_BASE_TRAINING on an imported one, ours else."""
    return REAL_BASE_TRAINING if import_record(base_folder) else REPORT_TRAINING


@dataclass(slots=True)
class PersonalizationReport:
    base_name: str
    people: list[str]
    config: dict
    # suite -> column -> per-person scores
    cells: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # general skill (add, capital, context, …) -> the bare base's pass rate: its common competence
    competence: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, column: str, suite_scores: dict[str, float]) -> None:
        for suite, value in suite_scores.items():
            self.cells.setdefault(suite, {}).setdefault(column, []).append(value)

    def mean(self, suite: str, column: str) -> float | None:
        values = self.cells.get(suite, {}).get(column)
        return statistics.fmean(values) if values else None

    def retention_drop(self) -> float | None:
        base, own = self.mean("retention", COLUMNS[0]), self.mean("retention", COLUMNS[1])
        return None if base is None or own is None else base - own

    def table(self) -> str:
        lines = [f"{'suite':<12}" + "".join(f"{c:>18}" for c in COLUMNS)]
        for suite in SUITE_ORDER:
            if suite not in self.cells:
                continue
            row = [self.mean(suite, c) for c in COLUMNS]
            lines.append(f"{suite:<12}" + "".join(f"{'—' if v is None else f'{v:.3f}':>18}" for v in row))
        drop = self.retention_drop()
        if drop is not None:
            lines.append(f"{'retention drop (base - own)':<30}{drop:>+.3f}")
        if self.competence:
            skills = ", ".join(f"{skill} {score:.2f}" for skill, score in self.competence.items())
            lines.append(f"bare base per general skill: {skills}")
        return "\n".join(lines)


def personalization_report(
    base_folder: str,
    digest: str,
    world: World,
    *,
    base_name: str,
    people: int,
    config: TrainingConfig,
    log: Callable[[str], None] = print,
) -> PersonalizationReport:
    chosen = list(world.people[:people])
    if len(chosen) < 2:
        raise ValueError("the report needs at least two people (own vs another's adapter)")
    report = PersonalizationReport(base_name, [p.handle for p in chosen], config.as_dict())
    blobs: dict[str, bytes] = {}  # sha256 -> payload, as the store would hold them
    adapter_of: dict[str, str] = {}  # person -> their adapter's sha256

    started = time.monotonic()
    replay = replay_examples(base_folder) if config.replay else []
    for person in chosen:
        base = load_base(base_folder, digest)
        examples = parse_jsonl(jsonl(person.training_rows())).examples
        payload = train_adapter(base.model, base.tokenizer, examples, config, replay=replay).payload
        sha = hashlib.sha256(payload).hexdigest()
        blobs[sha], adapter_of[person.handle] = payload, sha
        log(f"trained {person.handle}'s adapter ({len(examples)} rows)")
    report.seconds["training"] = time.monotonic() - started

    # Every (adapter, items) pair in one continuously batched generation over a bank that
    # holds all the adapters: the bare base, each own adapter (with the retention set) and
    # each person's items under another person's adapter.
    started = time.monotonic()
    general = retention_items(base_folder, world)
    work: list[tuple[str | None, list]] = [(None, general)]
    for index, person in enumerate(chosen):
        other = chosen[(index + 1) % len(chosen)]
        items = person.eval_items(world)
        work += [
            (None, items),
            (adapter_of[person.handle], items + general),
            (adapter_of[other.handle], items),
        ]
    graded = grade_many(base_folder, digest, work, blobs, on_progress=progress_logger(log))
    report.add(COLUMNS[0], scores(graded[0]))
    report.competence = skill_scores(graded[0])
    for index in range(len(chosen)):
        bare, own, other = graded[1 + 3 * index : 4 + 3 * index]
        report.add(COLUMNS[0], scores(bare))
        report.add(COLUMNS[1], scores(own))
        report.add(COLUMNS[2], scores(other))
    report.seconds["evaluation"] = time.monotonic() - started
    return report


def retention_items(base_folder: str, world: World) -> list:
    """What retention is measured on: for our own bases, the general skills held out of
    their pretraining corpus; for an imported (real) base, the general-knowledge set its
    bare model answers (general_knowledge.py): it was never taught our skills' templates."""
    if import_record(base_folder):
        return general_knowledge_items()
    return world.general_items()


def progress_logger(log: Callable[[str], None]):
    shown = {"tenth": -1}

    def on_progress(done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if tenth > shown["tenth"]:
            shown["tenth"] = tenth
            log(f"graded {done}/{total} answers")

    return on_progress


def skill_scores(results) -> dict[str, float]:
    """Pass rate per general skill; retention item ids read `general.<skill>.<n>` (our
    bases) or `knowledge.<skill>.<n>` (real ones)."""
    tallies: dict[str, list[int]] = {}
    for result in results:
        skill = result.item_id.split(".")[1]
        tally = tallies.setdefault(skill, [0, 0])
        tally[0] += result.passed
        tally[1] += 1
    return {skill: passed / total for skill, (passed, total) in tallies.items()}
