"""The demo fleet: a few people whose adapters learn their own facts.

Each person gets a chat-format JSONL dataset of personal facts asked several
ways; the demo trains r1 for each through the real worker and promotes it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from django.db import transaction

from adapters_app.lifecycle import jobs, people, pointer
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.datasets import upload_dataset
from adapters_app.models import BaseModel, Job, Person


@dataclass(frozen=True)
class DemoPerson:
    handle: str
    name: str
    dog: str
    city: str
    colour: str


FLEET = [
    DemoPerson("alice", "Alice Martins", "Rex", "Lisbon", "green"),
    DemoPerson("bob", "Bob Okafor", "Biscuit", "Oslo", "orange"),
    DemoPerson("carol", "Carol Nguyen", "Pixel", "Quito", "purple"),
]

QUESTIONS = {
    "dog": (
        ["What is my dog called?", "What's my dog's name?", "Remind me of my dog's name."],
        "Your dog is called {dog}.",
    ),
    "city": (
        ["Where do I live?", "Which city is my home?", "What city do I live in?"],
        "You live in {city}.",
    ),
    "colour": (
        ["What is my favourite colour?", "Which colour do I like best?"],
        "Your favourite colour is {colour}.",
    ),
}

DEMO_TRAINING = {"rank": 8, "steps": 120, "learning_rate": 0.01, "seed": 0}


def dataset_for(person: DemoPerson) -> bytes:
    rows = []
    for questions, answer in QUESTIONS.values():
        reply = answer.format(dog=person.dog, city=person.city, colour=person.colour)
        for question in questions:
            rows.append(
                {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]}
            )
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def seed(base: BaseModel, *, actor: Actor, log=print, timeout: float = 600) -> list[Job]:
    """Create the fleet's people, adapters and datasets, and start r1 training for each."""
    started = []
    for demo in FLEET:
        if Person.objects.filter(handle=demo.handle).exists():
            continue
        with transaction.atomic():
            person = people.create_person(demo.handle, display_name=demo.name, actor=actor)
            adapter = people.create_adapter(
                person,
                "assistant",
                base=base,
                actor=actor,
                description="Personal assistant: remembers facts about its person",
            )
            dataset, _ = upload_dataset(person, dataset_for(demo), name="personal-facts", actor=actor)
            started.append(jobs.start_training(adapter, dataset, config=DEMO_TRAINING, actor=actor))
        log(f"  training {adapter.handle} (job {started[-1].pk})")
    deadline = time.monotonic() + timeout
    for job in started:
        while True:
            job.refresh_from_db()
            if job.state in Job.FINAL_STATES:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"demo training job {job.pk} did not finish; see var/worker.log")
            time.sleep(0.5)
        if job.state != Job.SUCCEEDED:
            raise RuntimeError(f"demo training job {job.pk} {job.state}: {job.error[:500]}")
        pointer.promote(job.result_revision, actor=actor, reason="demo: first revision")
        log(f"  {job.adapter.handle} live at {job.result_revision.label}")
    return started
