"""The whole lifecycle through the real stack: API → database → Redis → a Celery worker process."""

import pytest

from adapters_app.models import AuditEvent, Job, Revision
from tests.conftest import FACTS, OTHER_FACTS, generate_directly, wait_for_job
from workers.engine.examples import Message
from workers.engine.prompting import render_prompt

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TRAINING = {"steps": 40, "learning_rate": 0.01, "seed": 3}
QUESTION = "What is my dog called?"


def train(api, dataset_id) -> Revision:
    job = api(
        "post", "/api/adapters/alice/assistant/train", {"dataset": dataset_id, "config": TRAINING}, expect=202
    )
    finished = wait_for_job(Job.objects.get(pk=job["id"]))
    assert finished.state == Job.SUCCEEDED, finished.error
    assert api("get", f"/api/jobs/{job['id']}")["progress"]["percent"] == 100
    # The job's log tells the run's course, from claim to stored revision.
    lines = finished.log.splitlines()
    assert "claimed by" in lines[0]
    assert any("training rank 8" in line and "40 steps" in line for line in lines)
    assert any("step 40/40, loss" in line for line in lines)
    assert f"stored {finished.result_revision.label}" in lines[-1]
    return finished.result_revision


def chat(api, model: str) -> dict:
    return api(
        "post",
        "/v1/chat/completions",
        {
            "model": model,
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": 24,
            "temperature": 0,
        },
    )


def test_the_personal_adapter_lifecycle_end_to_end(api, celery_worker_process):
    api("post", "/api/people", {"handle": "alice", "display_name": "Alice"}, expect=201)
    api("post", "/api/people/alice/adapters", {"name": "assistant"}, expect=201)
    first = api("post", "/api/adapters/alice/assistant/datasets?name=facts", raw_body=FACTS, expect=201)
    second = api(
        "post", "/api/adapters/alice/assistant/datasets?name=moved", raw_body=OTHER_FACTS, expect=201
    )

    r1 = train(api, first["id"])
    api("post", "/api/adapters/alice/assistant/promote", {"revision": "r1", "reason": "first"})
    r2 = train(api, second["id"])
    assert r2.parent == r1  # trained while r1 was live
    api("post", "/api/adapters/alice/assistant/promote", {"revision": "r2", "reason": "moved to Oslo"})
    api("post", "/api/adapters/alice/assistant/rollback", {"reason": "r2 regressed"})

    detail = api("get", "/api/adapters/alice/assistant")
    assert detail["live"] == "r1"
    assert [(e["action"], e["from"], e["to"]) for e in detail["pointer_history"]] == [
        ("rollback", "r2", "r1"),
        ("promote", "r1", "r2"),
        ("promote", None, "r1"),
    ]
    assert [r["label"] for r in detail["revisions"]] == ["r1", "r2"]
    assert detail["revisions"][1]["provenance"]["dataset_sha256"] == second["sha256"]

    expected_r1, expected_r2 = generate_directly(r1, QUESTION), generate_directly(r2, QUESTION)
    assert expected_r1 != expected_r2, "the two revisions should have learned different answers"
    live = chat(api, "alice/assistant")
    pinned = chat(api, "alice/assistant@r2")
    assert live["choices"][0]["message"]["content"] == expected_r1
    assert live["mint"]["revision"] == "r1"
    assert pinned["choices"][0]["message"]["content"] == expected_r2
    assert pinned["usage"]["completion_tokens"] > 0

    completion = api(
        "post",
        "/v1/completions",
        {
            "model": f"alice/assistant@{r2.sha256[:10]}",
            "prompt": render_prompt([Message("user", QUESTION)]),
            "max_tokens": 24,
            "temperature": 0,
        },
    )
    assert completion["object"] == "text_completion"
    assert completion["choices"][0]["text"] == expected_r2


def test_every_lifecycle_action_leaves_an_audit_event_with_its_actor(api, celery_worker_process):
    api("post", "/api/people", {"handle": "alice"}, expect=201)
    api("post", "/api/people/alice/adapters", {"name": "assistant"}, expect=201)
    dataset = api("post", "/api/adapters/alice/assistant/datasets", raw_body=FACTS, expect=201)
    train(api, dataset["id"])
    api("post", "/api/adapters/alice/assistant/promote", {"revision": "r1"})
    train(api, dataset["id"])
    api("post", "/api/adapters/alice/assistant/promote", {"revision": "r2"})
    api("post", "/api/adapters/alice/assistant/rollback", {"to": "r1", "reason": "check"})

    events = AuditEvent.objects.exclude(action="base_model.register").order_by("id")
    actions = list(events.values_list("action", "actor_name", "via"))
    assert actions == [
        ("person.create", "ops", "api"),
        ("adapter.create", "ops", "api"),
        ("dataset.upload", "ops", "api"),
        ("job.train", "ops", "api"),
        ("revision.create", "ops", "worker"),
        ("adapter.promote", "ops", "api"),
        ("job.train", "ops", "api"),
        ("revision.create", "ops", "worker"),
        ("adapter.promote", "ops", "api"),
        ("adapter.rollback", "ops", "api"),
    ]


def test_evaluation_scores_a_revision_against_the_bare_base(api, celery_worker_process):
    api("post", "/api/people", {"handle": "alice"}, expect=201)
    api("post", "/api/people/alice/adapters", {"name": "assistant"}, expect=201)
    dataset = api("post", "/api/adapters/alice/assistant/datasets", raw_body=FACTS, expect=201)
    train(api, dataset["id"])

    scores = {}
    for revision in ("r1", None):
        job = api(
            "post",
            "/api/adapters/alice/assistant/evaluate",
            {"dataset": dataset["id"], "revision": revision},
            expect=202,
        )
        done = wait_for_job(Job.objects.get(pk=job["id"]))
        assert done.state == Job.SUCCEEDED, done.error
        scores[revision] = done.result
    assert scores["r1"]["token_accuracy"] > scores[None]["token_accuracy"]
    assert scores["r1"]["loss"] < scores[None]["loss"]


def start_training(api, handle: str, facts: bytes, steps: int) -> dict:
    """A person `handle` with an assistant adapter and a dataset; a training job queued."""
    api("post", "/api/people", {"handle": handle}, expect=201)
    api("post", f"/api/people/{handle}/adapters", {"name": "assistant"}, expect=201)
    dataset = api("post", f"/api/adapters/{handle}/assistant/datasets", raw_body=facts, expect=201)
    body = {"dataset": dataset["id"], "config": {"steps": steps}}
    return api("post", f"/api/adapters/{handle}/assistant/train", body, expect=202)


def test_a_running_job_can_be_cancelled(api, celery_worker_process):
    job = start_training(api, "alice", FACTS, steps=100000)
    wait_for_job(Job.objects.get(pk=job["id"]), until=lambda j: j.step > 0)
    api("post", f"/api/jobs/{job['id']}/cancel")
    done = wait_for_job(Job.objects.get(pk=job["id"]))
    assert done.state == Job.CANCELLED
    assert "cancelled at step" in done.log.splitlines()[-1]
    assert not Revision.objects.exists()


def test_erasing_a_person_stops_the_training_running_on_their_data(api, celery_worker_process):
    job = start_training(api, "alice", FACTS, steps=100000)
    wait_for_job(Job.objects.get(pk=job["id"]), until=lambda j: j.step > 0)

    api("post", "/api/people/alice/erase", {"reason": "asked to be forgotten"})

    # The job row went with the person. The worker (one at a time) is free again only if
    # it stopped those 100,000 steps at its next progress report: the next job runs now.
    next_job = start_training(api, "bob", OTHER_FACTS, steps=2)
    done = wait_for_job(Job.objects.get(pk=next_job["id"]), timeout=60)
    assert done.state == Job.SUCCEEDED, done.error
    assert not Revision.objects.filter(adapter__person__handle="alice").exists()


def test_an_inference_job_answers_with_the_live_revision(api, celery_worker_process):
    api("post", "/api/people", {"handle": "alice"}, expect=201)
    api("post", "/api/people/alice/adapters", {"name": "assistant"}, expect=201)
    dataset = api("post", "/api/adapters/alice/assistant/datasets", raw_body=FACTS, expect=201)
    r1 = train(api, dataset["id"])
    api("post", "/api/adapters/alice/assistant/promote", {"revision": "r1"})
    job = api(
        "post", "/api/adapters/alice/assistant/infer", {"prompt": QUESTION, "max_tokens": 24}, expect=202
    )
    done = wait_for_job(Job.objects.get(pk=job["id"]))
    assert done.state == Job.SUCCEEDED, done.error
    assert done.revision == r1
    assert done.result["text"] == generate_directly(r1, QUESTION)
