"""Preference learning, DPO against chosen-only: which teaches a person's style better?

For generated people on one base, each person's preference families (units, date format,
answer length, tone) become preference pairs on the TRAIN phrasings: chosen is the answer
in the person's own style, rejected the same answer in the opposite style (every
preference turned, `OPPOSITE`). Adapters per person, one recipe (rank, steps, learning
rate, seed, replay): `sft` learns the chosen answers, `dpo` the pairs
(workers/engine/preference.py), and `sft-then-dpo` continues the sft adapter with DPO.
They and the bare base are graded on the person's preference suite (HELD-OUT phrasings,
fresh content) and on the retention set, every answer in one batched generation. Beside
the scores, on the held-out pairs: the mean margin log π(chosen) - log π(rejected), which
is what DPO optimises, the share of pairs it orders right, and the mean log π(chosen),
which is what greedy decoding (and so the grading) needs to be high.

No Django imports.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from workers.engine.examples import Example, parse_jsonl
from workers.engine.persona_world import (
    PREFERENCE_FAMILIES,
    Persona,
    World,
    jsonl,
    preference_answer,
)
from workers.engine.training import TrainingConfig

BARE = "bare"
# What each person gets, in order: an adapter on the chosen answers, one on the pairs, and
# the DPO paper's own recipe, DPO continued from the person's sft adapter with that adapter
# as its reference (`train_adapter(start_from=...)`; twice the steps in all).
SFT_THEN_DPO = "sft-then-dpo"
RUNS = ("sft", "dpo", SFT_THEN_DPO)
# The style a person does not want: each preference turned to another value. A two-way
# choice turns to the other; a date is written month-first where the person writes it
# day-first and the reverse, and ISO turns to month-first (the most different of the two).
OPPOSITE = {
    "length": {"short": "detailed", "detailed": "short"},
    "units": {"metric": "imperial", "imperial": "metric"},
    "tone": {"formal": "casual", "casual": "formal"},
    "date_format": {"iso": "mdy", "dmy": "mdy", "mdy": "dmy"},
}
# The recipe every run trains with on our bases: the report's (attention projections, half
# of each batch replayed from the base's corpus) at a lower rate and a larger β, measured
# on mint-s for this comparison (README "Measured here: preference learning, DPO against
# chosen-only"): with the report's 0.005 and β 0.1 both objectives scored lower and lost
# more retention.
PREFERENCE_TRAINING = {
    "steps": 150,
    "learning_rate": 0.002,
    "batch_size": 16,
    "replay": 0.5,
    "targets": "attention",
    "dpo_beta": 0.5,
}


def opposite_preferences(preferences: dict[str, str]) -> dict[str, str]:
    return {key: OPPOSITE[key][value] for key, value in preferences.items()}


def preference_pairs(person: Persona, *, heldout: bool = False) -> list[Example]:
    """The person's preference rows as pairs, validated as an upload would be: TRAIN
    phrasings on training instances (as `Persona.training_rows` writes them), or the
    HELD-OUT phrasings on evaluation instances (as `Persona.eval_items` asks them)."""
    opposite = opposite_preferences(person.preferences)
    rows, seen = [], set()
    for family, (train, evaluation) in person._preference_instances().items():
        templates = PREFERENCE_FAMILIES[family].heldout if heldout else PREFERENCE_FAMILIES[family].train
        instances = evaluation if heldout else train
        for i, instance in enumerate(instances):
            prompt = templates[i % len(templates)].format(**instance)
            if prompt in seen:  # the tone family has no instances to vary
                continue
            seen.add(prompt)
            rows.append(
                {
                    "prompt": prompt,
                    "chosen": preference_answer(family, instance, person.preferences),
                    "rejected": preference_answer(family, instance, opposite),
                }
            )
    return parse_jsonl(jsonl(rows)).examples


@dataclass(frozen=True, slots=True)
class Outcome:
    """One adapter (or the bare base) for one person."""

    person: str
    objective: str  # "bare", or one of RUNS
    preference: float  # pass rate on the person's held-out preference items
    retention: float  # pass rate on the retention set
    retention_drop: float  # the bare base's retention minus this one's
    margin: float  # mean log π(chosen) - log π(rejected) over the held-out pairs, in nats
    chosen_log_prob: float  # mean log π(chosen) over the held-out pairs: is the wanted answer itself likely?
    ordered: float  # share of held-out pairs whose chosen answer is the more likely
    first_loss: float | None = None
    final_loss: float | None = None
    train_seconds: float | None = None


@dataclass(slots=True)
class PreferenceComparison:
    base: str
    config: dict
    outcomes: list[Outcome]
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def of(self, objective: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.objective == objective]

    def mean(self, objective: str, field: str) -> float:
        return statistics.fmean(getattr(o, field) for o in self.of(objective))

    def table(self) -> str:
        lines = [
            "| person | objective | preference | retention | retention drop vs bare | held-out margin (nats) "
            "| pairs ordered | log p(chosen) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for o in self.outcomes:
            lines.append(
                f"| {o.person} | {o.objective} | {o.preference:.3f} | {o.retention:.3f} | "
                f"{o.retention_drop:+.3f} | {o.margin:+.2f} | {o.ordered:.2f} | {o.chosen_log_prob:.2f} |"
            )
        for objective in (BARE, *RUNS):
            if not self.of(objective):
                continue
            lines.append(
                f"| **mean** | **{objective}** | {self.mean(objective, 'preference'):.3f} | "
                f"{self.mean(objective, 'retention'):.3f} | {self.mean(objective, 'retention_drop'):+.3f} | "
                f"{self.mean(objective, 'margin'):+.2f} | {self.mean(objective, 'ordered'):.2f} | "
                f"{self.mean(objective, 'chosen_log_prob'):.2f} |"
            )
        return "\n".join(lines)

    def csv(self) -> str:
        """The raw numbers, one row per person and objective, with the recipe."""
        out = io.StringIO()
        recipe = {k: v for k, v in self.config.items() if k != "objective"}
        fields = ["base", *(f.name for f in dataclasses.fields(Outcome)), *recipe]
        writer = csv.DictWriter(out, fields, lineterminator="\n")
        writer.writeheader()
        for outcome in self.outcomes:
            writer.writerow({"base": self.base, **dataclasses.asdict(outcome), **recipe})
        return out.getvalue()


def compare_preference_objectives(
    base_folder: str,
    digest: str,
    world: World,
    *,
    base_name: str,
    people: int,
    config: TrainingConfig,
    log: Callable[[str], None] = lambda line: None,
) -> PreferenceComparison:
    """Train an `sft` and a `dpo` adapter per person (the first `people` of `world`) with
    `config` (its objective is set per adapter), then grade them and the bare base."""
    from workers.engine.base_family import replay_examples
    from workers.engine.base_models import load_base
    from workers.engine.batch_grading import grade_many
    from workers.engine.report import retention_items
    from workers.engine.suites import scores
    from workers.engine.training import train_adapter

    chosen = list(world.people[:people])
    if not chosen:
        raise ValueError("the comparison needs at least one person")
    replay = replay_examples(base_folder) if config.replay else []
    trained: dict[tuple[str, str], tuple[str, object, float]] = {}  # (person, objective) -> sha, result, s
    blobs: dict[str, bytes] = {}
    started = time.monotonic()
    for person in chosen:
        pairs = preference_pairs(person)
        for run in RUNS:
            objective, parent = run, None
            if run == SFT_THEN_DPO:
                objective, parent = "dpo", blobs[trained[person.handle, "sft"][0]]
            base = load_base(base_folder, digest)
            began = time.monotonic()
            result = train_adapter(
                base.model,
                base.tokenizer,
                pairs,
                dataclasses.replace(config, objective=objective),
                replay=replay,
                start_from=parent,
            )
            sha = hashlib.sha256(result.payload).hexdigest()
            blobs[sha] = result.payload
            trained[person.handle, run] = (sha, result, time.monotonic() - began)
            log(f"trained {person.handle}'s {run} adapter on {len(pairs)} pairs")
    seconds = {"training": time.monotonic() - started}

    started = time.monotonic()
    general = retention_items(base_folder, world)
    suites = {p.handle: [i for i in p.eval_items(world) if i.suite == "preference"] for p in chosen}
    work: list[tuple[str | None, list]] = [(None, general)]
    for person in chosen:
        items = suites[person.handle]
        work.append((None, items))
        work += [(trained[person.handle, run][0], items + general) for run in RUNS]
    log(f"grading {len(work)} adapter runs ({sum(len(items) for _, items in work)} answers)")
    graded = iter(grade_many(base_folder, digest, work, blobs))
    bare_retention = scores(next(graded))["retention"]
    outcomes = []
    for person in chosen:
        heldout = preference_pairs(person, heldout=True)
        for objective in (BARE, *RUNS):
            got = scores(next(graded))
            retention = got.get("retention", bare_retention)
            sha, result, train_seconds = trained.get((person.handle, objective), (None, None, None))
            answers = _answer_scores(base_folder, digest, config, heldout, blobs.get(sha))
            margins = [chosen - rejected for chosen, rejected in answers]
            outcomes.append(
                Outcome(
                    person=person.handle,
                    objective=objective,
                    preference=got["preference"],
                    retention=retention,
                    retention_drop=bare_retention - retention,
                    margin=statistics.fmean(margins),
                    chosen_log_prob=statistics.fmean(chosen for chosen, _ in answers),
                    ordered=sum(m > 0 for m in margins) / len(margins),
                    first_loss=result.losses[0] if result else None,
                    final_loss=result.losses[-1] if result else None,
                    train_seconds=train_seconds,
                )
            )
    seconds["evaluation"] = time.monotonic() - started
    return PreferenceComparison(base_name, config.as_dict(), outcomes, seconds)


def _answer_scores(
    base_folder: str, digest: str, config: TrainingConfig, pairs: Sequence[Example], payload: bytes | None
) -> list[tuple[float, float]]:
    """(log π(chosen), log π(rejected)) per pair, under the payload's adapter (or the bare base)."""
    from workers.engine.architectures import architecture_of
    from workers.engine.base_models import load_base
    from workers.engine.preference import answer_scores
    from workers.engine.training import continued_model

    base = load_base(base_folder, digest)
    model = base.model
    if payload is not None:
        model = continued_model(model, payload, config, architecture_of(model.config))
    return answer_scores(model, base.tokenizer, pairs, max_length=config.max_length)
