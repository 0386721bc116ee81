"""How well a retrain from updates carries a changed fact, on generated people: the engine
part of `manage.py update_report`.

For each person: r1 is trained on their rows; then they say their dog has a new name
(one no person in the world has). The next training set is what `updates.py` makes of it
(the old name's rows out, the new one's in), and two revisions are trained on it with the
same recipe: one continuing from r1 (what a retrain from updates does) and one from
scratch (a policy's `fresh_start`). The bare base, r1 and both r2s answer the gate set
after the update (the person's held-out items, retention, and the update suite) in one
batched generation. Whether each passes its gate is judged by the caller (the gate's rule
lives with the lifecycle).
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from workers.engine.base_family import replay_examples
from workers.engine.base_models import load_base
from workers.engine.batch_grading import grade_many
from workers.engine.examples import parse_jsonl
from workers.engine.persona_world import FACT_KEYS, World, jsonl
from workers.engine.report import progress_logger, retention_items
from workers.engine.suites import scores
from workers.engine.training import TrainingConfig, train_adapter
from workers.engine.updates import Fact, Update, gate_items_after, next_training_rows, old_values, resolve
from workers.engine.updates import update_items as make_update_items

ARMS = ("bare base", "r1 (before)", "r2 continued", "r2 fresh start")
SUITES = ("update", "recall", "tool", "preference", "leakage", "retention")


@dataclass(slots=True)
class UpdateReport:
    base_name: str
    config: dict
    # person -> arm -> suite -> score
    scores: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    changes: dict[str, tuple[str, str]] = field(default_factory=dict)  # person -> (old, new)
    dropped_rows: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def mean(self, arm: str, suite: str) -> float | None:
        values = [s[arm][suite] for s in self.scores.values() if suite in s.get(arm, {})]
        return statistics.fmean(values) if values else None


def new_dog_name(world: World, handle: str) -> str:
    """A dog's name nobody in the world has, so the update suite's check is unambiguous."""
    taken = {p.facts["dog"] for p in world.people}
    return next(name for name in FACT_KEYS["dog"].pool if name not in taken and name != handle)


def update_report(
    base_folder: str,
    digest: str,
    world: World,
    *,
    base_name: str,
    people: int,
    config: TrainingConfig,
    continued_steps: int | None = None,
    log: Callable[[str], None] = print,
) -> UpdateReport:
    """`continued_steps`: the continued retrain's steps (the recipe's when None); the fresh
    start always trains the recipe's full steps."""
    chosen = list(world.people[:people])
    report = UpdateReport(base_name, {**config.as_dict(), "continued_steps": continued_steps or config.steps})
    replay = replay_examples(base_folder) if config.replay else []
    general = retention_items(base_folder, world)
    blobs: dict[str, bytes] = {}
    work: list[tuple[str | None, list]] = []

    continued = replace(config, steps=continued_steps) if continued_steps else config

    def train(rows, start_from=None) -> str:
        base = load_base(base_folder, digest)
        recipe = continued if start_from is not None else config
        payload = train_adapter(
            base.model, base.tokenizer, rows, recipe, replay=replay, start_from=start_from
        ).payload
        sha = hashlib.sha256(payload).hexdigest()
        blobs[sha] = payload
        return sha

    started = time.monotonic()
    for person in chosen:
        rows = parse_jsonl(jsonl(person.training_rows())).examples
        r1 = train(rows)
        new = new_dog_name(world, person.handle)
        resolution = resolve([Update(1, (1,), fact=Fact("dog", new))])
        next_rows, dropped = next_training_rows(rows, resolution)
        olds = old_values(resolution, rows)
        went_on = train(next_rows, start_from=blobs[r1])
        fresh = train(next_rows)
        items = gate_items_after(person.eval_items(world) + general, resolution, olds)
        items += make_update_items(resolution, olds, person.handle)
        for sha in (None, r1, went_on, fresh):
            work.append((sha, items))
        report.changes[person.handle] = (person.facts["dog"], new)
        report.dropped_rows[person.handle] = dropped
        log(f"{person.handle}: dog {person.facts['dog']} -> {new}; r1, r2 continued and r2 fresh trained")
    report.seconds["training"] = time.monotonic() - started

    started = time.monotonic()
    graded = grade_many(base_folder, digest, work, blobs, on_progress=progress_logger(log))
    report.seconds["evaluation"] = time.monotonic() - started
    for index, person in enumerate(chosen):
        report.scores[person.handle] = {
            arm: scores(graded[4 * index + offset]) for offset, arm in enumerate(ARMS)
        }
    return report
