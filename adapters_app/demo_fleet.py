"""The demo fleet: generated people whose adapters carry their own state.

Each person comes from the persona world (`workers.engine.persona_world`): their
training rows (facts, preferences, tool habits, asked with training phrasings)
are uploaded as a chat dataset, their held-out evaluation set plus the shared
general set as an evaluation set that gates the adapter. The demo then trains
r1 for everyone through the real worker, evaluates it, and promotes it when
its gate passes. A revision that fails its gate is still promoted, with an
audited override that names the failures, so every demo person answers and the
console shows what a gate failure looks like.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.db import transaction

from adapters_app.lifecycle import jobs, people, pointer
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.datasets import upload_dataset
from adapters_app.lifecycle.gates import configure_gate, verdict
from adapters_app.models import Adapter, BaseModel, Dataset, Job, Person
from workers.engine.persona_world import Persona, World, generate_world, jsonl
from workers.engine.report import REPORT_TRAINING
from workers.engine.suites import items_jsonl

DEMO_PEOPLE = 20
DEMO_WORLD_SEED = 0
ADAPTER_NAME = "assistant"


def seed(
    base: BaseModel,
    *,
    actor: Actor,
    people: int = DEMO_PEOPLE,
    training: dict | None = None,
    log: Callable[[str], None] = print,
    timeout: float = 1800,
) -> list[Adapter]:
    """Create the fleet's people, datasets and adapters, train and evaluate r1 for each
    through the worker, and make it live. People who already exist are left alone,
    so a second `make demo` starts at once."""
    world = generate_world(DEMO_WORLD_SEED, people=people)
    config = dict(REPORT_TRAINING if training is None else training)
    trainings = {}
    for persona in world.people:
        if Person.objects.filter(handle=persona.handle).exists():
            continue
        adapter, train_set = _enrol(persona, world, base, actor)
        trainings[adapter.handle] = jobs.start_training(
            adapter, train_set, config=config, actor=actor, auto_promote=False
        )
    if trainings:
        log(f"  training {len(trainings)} adapters on {base.name} (watch them at /jobs/)")
    else:
        log(f"  all {people} people exist already")

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


def _enrol(persona: Persona, world: World, base: BaseModel, actor: Actor) -> tuple[Adapter, Dataset]:
    with transaction.atomic():
        person = people.create_person(persona.handle, display_name=persona.display_name, actor=actor)
        adapter = people.create_adapter(
            person,
            ADAPTER_NAME,
            base=base,
            actor=actor,
            description="Personal assistant: remembers its person's facts, preferences and tool habits",
        )
        train_set, _ = upload_dataset(
            person, jsonl(persona.training_rows()), name="persona-training", actor=actor
        )
        eval_set, _ = upload_dataset(
            person,
            items_jsonl(persona.eval_items(world) + world.general_items()),
            name="persona-heldout",
            purpose=Dataset.EVAL,
            actor=actor,
        )
        configure_gate(adapter, actor=actor, eval_dataset=eval_set)
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
