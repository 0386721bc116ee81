"""The demo fleet: generated people whose adapters carry their own state.

Each person comes from the persona world (`workers.engine.persona_world`): their
training rows (facts, preferences, tool habits, asked with training phrasings)
are uploaded as a chat dataset, their held-out evaluation set plus the shared
general set as an evaluation set that gates the adapter. The demo then trains
r1 for everyone through the real worker, evaluates it, and promotes it when
its gate passes. A revision that fails its gate is still promoted, with an
audited override that names the failures, so every demo person answers and the
console shows what a gate failure looks like.

On an imported (real pretrained) base the fleet is smaller and trained with the recipe
measured on SmolLM2 (`REAL_BASE_TRAINING`), and its evaluation sets judge retention on the
general-knowledge set that base answered, not on our bases' pretraining skills.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from django.db import transaction

from adapters_app.lifecycle import jobs, people, pointer
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.datasets import upload_dataset
from adapters_app.lifecycle.gates import configure_gate, verdict
from adapters_app.lifecycle.updates import configure_policy
from adapters_app.models import Adapter, BaseModel, Dataset, Job, Person, RetrainPolicy
from workers.engine.base_import import import_record
from workers.engine.persona_world import EvalItem, Persona, World, generate_world, jsonl
from workers.engine.report import measured_recipe, retention_items
from workers.engine.suites import items_jsonl
from workers.engine.training import TrainingConfig

DEMO_PEOPLE = 20
# SmolLM2-135M trains at about 5 s a step on the demo's two cores and REAL_BASE_TRAINING
# takes 80 steps a person: four people's training is half an hour, twenty people's three hours.
REAL_BASE_PEOPLE = 4
# The world's first two people: the playground example `make demo` and the README print asks
# them, so no fleet is smaller.
NAMED_PEOPLE = ("alice", "bob")
DEMO_WORLD_SEED = 0
ADAPTER_NAME = "assistant"
# The seed's deadline follows the work it waits for, estimated from the base's size. On
# SmolLM2-135M (134.5 M parameters) a training step of 8 rows takes about 5 s on the demo's
# two cores, and one graded answer about 2.7 s (measured on one core of a loaded machine: an
# evaluation job answers its items one at a time, for r1 and, once per evaluation set, for
# the bare base). The margin covers a machine shared with other work and the replay rows an
# imported base makes on its first training; the floor is the half hour a mint-s fleet has
# always had.
SECONDS_PER_PARAMETER_ROW = 5.0 / (134.5e6 * 8)
SECONDS_PER_PARAMETER_ANSWER = 2.7 / 134.5e6
TIMEOUT_MARGIN = 2
MIN_TIMEOUT = 1800.0


@dataclass(frozen=True, slots=True)
class FleetPlan:
    """What a demo fleet on one base is: how many people, trained how, waited on how long."""

    people: int
    training: dict
    timeout: float
    imported: bool


def plan(base: BaseModel, *, people: int | None = None, training: dict | None = None) -> FleetPlan:
    """The fleet for `base`: on ours, DEMO_PEOPLE trained with REPORT_TRAINING; on an imported
    base, REAL_BASE_PEOPLE with REAL_BASE_TRAINING. `people` and `training` override those."""
    imported = bool(import_record(base.path))
    if people is None:
        people = REAL_BASE_PEOPLE if imported else DEMO_PEOPLE
    if people < len(NAMED_PEOPLE):
        raise ValueError(f"a demo fleet has at least {len(NAMED_PEOPLE)} people ({', '.join(NAMED_PEOPLE)})")
    if training is None:
        training = measured_recipe(base.path)
    config = TrainingConfig.from_dict(training)
    world = generate_world(DEMO_WORLD_SEED, people=people)
    answers = 2 * sum(len(evaluation_items(persona, world, base)) for persona in world.people)
    work = base.parameters * (
        people * config.steps * config.batch_size * SECONDS_PER_PARAMETER_ROW
        + answers * SECONDS_PER_PARAMETER_ANSWER
    )
    return FleetPlan(people, dict(training), max(MIN_TIMEOUT, TIMEOUT_MARGIN * work), imported)


def seed(
    base: BaseModel,
    *,
    actor: Actor,
    people: int | None = None,
    training: dict | None = None,
    log: Callable[[str], None] = print,
    timeout: float | None = None,
) -> list[Adapter]:
    """Create the fleet's people, datasets and adapters, train and evaluate r1 for each
    through the worker, and make it live. People who already have their adapter on this
    base are left alone, so a second `make demo` starts at once. `people`, `training` and
    `timeout` default to the base's plan (see `plan`)."""
    fleet = plan(base, people=people, training=training)
    timeout = fleet.timeout if timeout is None else timeout
    world = generate_world(DEMO_WORLD_SEED, people=fleet.people)
    trainings = {}
    for persona in world.people:
        name = adapter_name(persona.handle, base)
        if Adapter.objects.filter(person__handle=persona.handle, name=name, base=base).exists():
            continue
        adapter, train_set = _enrol(persona, world, base, name, actor)
        trainings[adapter.handle] = jobs.start_training(
            adapter, train_set, config=fleet.training, actor=actor, auto_promote=False
        )
    if trainings:
        log(f"  training {len(trainings)} adapters on {base.name} (watch them at /jobs/)")
    else:
        log(f"  all {fleet.people} people exist already")

    deadline = time.monotonic() + timeout
    evaluations = {}
    for handle, job in trainings.items():
        revision = _wait(job, deadline).result_revision
        adapter = revision.adapter
        evaluations[handle] = jobs.start_evaluation(
            adapter, adapter.eval_dataset, revision=revision, actor=actor, then_promote=True
        )
    for handle, job in evaluations.items():
        _wait(job, deadline)
        adapter = Adapter.objects.select_related("live_revision").get(pk=job.adapter_id)
        if adapter.live_revision is None:
            gate = verdict(job.revision)
            pointer.promote(
                job.revision,
                actor=actor,
                reason="demo: first revision",
                override_reason="demo seed: every demo person gets a live adapter; "
                + "; ".join(gate.failures),
            )
            log(f"  {handle} live at {job.revision.label} (gate overridden: {'; '.join(gate.failures)})")
        else:
            log(f"  {handle} live at {adapter.live_revision.label} (gate passed)")
    return [Adapter.objects.get(pk=job.adapter_id) for job in evaluations.values()]


def adapter_name(handle: str, base: BaseModel) -> str:
    """The name of a demo person's adapter on `base`: "assistant", unless their assistant is
    on another base already (a fleet seeded before with another MINT_DEMO_BASE); then
    "assistant-<base>", so both fleets live side by side and a second run finds either."""
    elsewhere = Adapter.objects.filter(person__handle=handle, name=ADAPTER_NAME).exclude(base=base)
    return f"{ADAPTER_NAME}-{base.name}"[:63] if elsewhere.exists() else ADAPTER_NAME


def evaluation_items(persona: Persona, world: World, base: BaseModel) -> list[EvalItem]:
    """What a person's gate judges: their held-out items, and retention on what `base` knew
    before (our general skills on ours, the general-knowledge set on an imported base)."""
    return persona.eval_items(world) + retention_items(base.path, world)


def _enrol(
    persona: Persona, world: World, base: BaseModel, name: str, actor: Actor
) -> tuple[Adapter, Dataset]:
    imported = bool(import_record(base.path))
    with transaction.atomic():
        person = Person.objects.filter(handle=persona.handle).first() or people.create_person(
            persona.handle, display_name=persona.display_name, actor=actor
        )
        adapter = people.create_adapter(
            person,
            name,
            base=base,
            actor=actor,
            description="Personal assistant: remembers its person's facts, preferences and tool habits",
        )
        train_set, _ = upload_dataset(
            person, jsonl(persona.training_rows()), name="persona-training", actor=actor
        )
        eval_set, _ = upload_dataset(
            person,
            items_jsonl(evaluation_items(persona, world, base)),
            name="persona-heldout-knowledge" if imported else "persona-heldout",
            purpose=Dataset.EVAL,
            actor=actor,
        )
        configure_gate(adapter, actor=actor, eval_dataset=eval_set)
        # The demo fleet learns from use: a stated fact retrains at once (docs/updates.md).
        configure_policy(adapter, actor=actor, mode=RetrainPolicy.AFTER_UPDATES, after_updates=1)
    return adapter, train_set


def _wait(job: Job, deadline: float) -> Job:
    while True:
        job.refresh_from_db()
        if job.state in Job.FINAL_STATES:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"demo job {job.pk} ({job.kind}) did not finish; see var/worker.log")
        time.sleep(0.5)
    if job.state != Job.SUCCEEDED:
        raise RuntimeError(f"demo job {job.pk} ({job.kind}) {job.state}: {job.error[:500]}")
    return job
