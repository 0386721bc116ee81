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
from workers.engine.base_models import load_base
from workers.engine.examples import parse_jsonl
from workers.engine.persona_world import World, jsonl
from workers.engine.runtime import AdapterRuntime
from workers.engine.suites import run_items, scores
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
    runtime = AdapterRuntime()
    blobs: dict[str, bytes] = {}  # sha256 -> payload, as the store would hold them
    adapter_of: dict[str, str] = {}  # person -> their adapter's sha256

    def answer(sha: str | None):
        def generate(prompt: str, max_tokens: int) -> str:
            return runtime.answer(base_folder, digest, sha, blobs.__getitem__, prompt, max_tokens)

        return generate

    started = time.monotonic()
    for person in chosen:
        base = load_base(base_folder, digest)
        examples = parse_jsonl(jsonl(person.training_rows())).examples
        replay = replay_examples(base_folder) if config.replay else []
        payload = train_adapter(base.model, base.tokenizer, examples, config, replay=replay).payload
        sha = hashlib.sha256(payload).hexdigest()
        blobs[sha], adapter_of[person.handle] = payload, sha
        log(f"trained {person.handle}'s adapter ({len(examples)} rows)")
    report.seconds["training"] = time.monotonic() - started

    started = time.monotonic()
    general = world.general_items()
    base_general = run_items(general, answer(None))
    report.add(COLUMNS[0], scores(base_general))
    report.competence = skill_scores(base_general)
    for index, person in enumerate(chosen):
        other = chosen[(index + 1) % len(chosen)]
        items = person.eval_items(world)
        own_sha, other_sha = adapter_of[person.handle], adapter_of[other.handle]
        report.add(COLUMNS[0], scores(run_items(items, answer(None))))
        report.add(COLUMNS[1], scores(run_items(items + general, answer(own_sha))))
        report.add(COLUMNS[2], scores(run_items(items, answer(other_sha))))
        log(f"evaluated {person.handle} (other: {other.handle})")
    report.seconds["evaluation"] = time.monotonic() - started
    return report


def skill_scores(results) -> dict[str, float]:
    """Pass rate per general skill; retention item ids read `general.<skill>.<n>`."""
    tallies: dict[str, list[int]] = {}
    for result in results:
        skill = result.item_id.split(".")[1]
        tally = tallies.setdefault(skill, [0, 0])
        tally[0] += result.passed
        tally[1] += 1
    return {skill: passed / total for skill, (passed, total) in tallies.items()}
