"""A small learning-rate sweep on one base: which rate teaches a person most while the base
keeps what it knew?

Bases a hundred times apart in size do not share a good learning rate (on mint-m the rate
that teaches rank 4 diverges rank 16; README "A lower learning rate on mint-m"), so a
study across bases sets each base's rate from a sweep first. One adapter per rate is
trained for the same generated person, on the same rows in the same order (one seed),
then all of them and the bare base are graded together in one batched generation on the
person's held-out items and the base's retention set, as a study run is graded. The rate
chosen has the best balance of the two: the mean of the personal suites (recall, tool,
preference) minus the retention drop, so learning the person and forgetting the world
weigh the same; a rate whose training loss rose (diverged) is not chosen. (The gate's own
allowance, a 0.02 drop, is passed by no adapter on SmolLM2 in any study here, so it
cannot choose.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from workers.engine.training import TrainingConfig

PERSONAL = ("recall", "tool", "preference")


@dataclass(frozen=True, slots=True)
class SweepPoint:
    learning_rate: float
    first_loss: float
    final_loss: float
    scores: dict[str, float]
    train_seconds: float

    def personal(self) -> float:
        return sum(self.scores[s] for s in PERSONAL) / len(PERSONAL)

    def retention_drop(self, bare: dict[str, float]) -> float:
        return bare["retention"] - self.scores["retention"]

    def balance(self, bare: dict[str, float]) -> float:
        return self.personal() - self.retention_drop(bare)


@dataclass(frozen=True, slots=True)
class Sweep:
    base: str
    person: str
    config: TrainingConfig  # every setting but the learning rate
    points: list[SweepPoint]
    bare: dict[str, float]

    def chosen(self) -> SweepPoint:
        # A rate whose training loss ended above where it began diverged: whatever its
        # scores, they are noise. Chosen among the others while any is left.
        learned = [p for p in self.points if p.final_loss < p.first_loss] or self.points
        return max(learned, key=lambda p: p.balance(self.bare))

    def table(self) -> str:
        chosen = self.chosen()
        lines = [
            "| learning rate | loss first → final | recall | tool | preference | retention (drop) "
            "| balance | train s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in self.points:
            mark = " **chosen**" if p is chosen else ""
            lines.append(
                f"| {p.learning_rate:g}{mark} | {p.first_loss:.2f} → {p.final_loss:.2f} | "
                f"{p.scores['recall']:.2f} | {p.scores['tool']:.2f} | {p.scores['preference']:.2f} | "
                f"{p.scores['retention']:.2f} ({p.retention_drop(self.bare):+.2f}) | "
                f"{p.balance(self.bare):.2f} | {p.train_seconds:.0f} |"
            )
        lines.append(
            f"| bare base | | {self.bare['recall']:.2f} | {self.bare['tool']:.2f} | "
            f"{self.bare['preference']:.2f} | {self.bare['retention']:.2f} | | |"
        )
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "base": self.base,
            "person": self.person,
            "training": self.config.as_dict(),
            "bare": self.bare,
            "points": [dataclasses.asdict(p) for p in self.points],
            "chosen": self.chosen().learning_rate,
        }


def sweep_learning_rates(
    base_name: str,
    folder: str,
    digest: str,
    rates: Sequence[float],
    config: TrainingConfig,
    *,
    world_seed: int = 0,
    log: Callable[[str], None] = lambda line: None,
) -> Sweep:
    """Train one adapter per rate for the first person of world `world_seed`, then grade
    them all and the bare base in one batched generation."""
    from workers.engine.base_family import replay_examples
    from workers.engine.base_models import load_base
    from workers.engine.batch_grading import grade_many
    from workers.engine.examples import parse_jsonl
    from workers.engine.multi_training import AdapterData, train_adapters
    from workers.engine.persona_world import generate_world, jsonl
    from workers.engine.report import retention_items
    from workers.engine.suites import scores

    world = generate_world(world_seed, people=2)
    person = world.people[0]
    examples = parse_jsonl(jsonl(person.training_rows())).examples
    items = person.eval_items(world) + retention_items(folder, world)
    replay = replay_examples(folder) if config.replay else []
    base = load_base(folder, digest)
    trained = []
    for rate in rates:
        log(f"lr {rate:g}: training {config.steps} steps")
        started = time.monotonic()
        [result] = train_adapters(
            base.model,
            base.tokenizer,
            [AdapterData(examples, config.seed)],
            dataclasses.replace(config, learning_rate=rate),
            replay=replay,
        )
        trained.append((rate, result, time.monotonic() - started))
    shas = [hashlib.sha256(result.payload).hexdigest() for _, result, _ in trained]
    payloads = {sha: result.payload for sha, (_, result, _) in zip(shas, trained, strict=True)}
    log(f"grading {len(trained)} adapters and the bare base on {len(items)} items")
    work = [(sha, items) for sha in shas] + [(None, items)]
    graded = grade_many(folder, digest, work, payloads)
    points = [
        SweepPoint(rate, result.losses[0], result.losses[-1], scores(answers), seconds)
        for (rate, result, seconds), answers in zip(trained, graded, strict=False)
    ]
    return Sweep(base_name, person.handle, config, points, scores(graded[-1]))
