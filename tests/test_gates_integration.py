"""Evaluation suites and auto-promotion through a real Celery worker."""

import json

import pytest

from adapters_app.models import AuditEvent, Evaluation, EvaluationItem, Job
from tests.conftest import wait_for_job
from workers.engine.examples import Message
from workers.engine.persona_world import EvalItem
from workers.engine.suites import items_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

FACTS = [
    ("What is my dog called?", "Your dog is called Rex.", "Rex"),
    ("Where do I live?", "You live in Lisbon.", "Lisbon"),
]
TRAINING = b"".join(
    json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}).encode()
    + b"\n"
    for q, a, _ in FACTS
)


def recall_items(questions=FACTS) -> bytes:
    return items_jsonl(
        EvalItem("recall", f"alice.recall.{i}", (Message("user", q),), a, {"kind": "contains", "value": v})
        for i, (q, a, v) in enumerate(questions)
    )


@pytest.fixture
def api(api):
    """The API, with alice and her adapter created."""
    api("post", "/api/people", {"handle": "alice"}, expect=201)
    api("post", "/api/people/alice/adapters", {"name": "assistant"}, expect=201)
    return api


def upload(api, data: bytes, purpose: str) -> dict:
    return api("post", f"/api/adapters/alice/assistant/datasets?purpose={purpose}", raw_body=data, expect=201)


def train_and_settle(api, dataset_id) -> list[Job]:
    job = api(
        "post",
        "/api/adapters/alice/assistant/train",
        {"dataset": dataset_id, "config": {"steps": 60, "learning_rate": 0.01}},
        expect=202,
    )
    trained = wait_for_job(Job.objects.get(pk=job["id"]))
    assert trained.state == Job.SUCCEEDED, trained.error
    evaluation = wait_for_job(Job.objects.get(kind=Job.EVALUATE))
    assert evaluation.state == Job.SUCCEEDED, evaluation.error
    return [trained, evaluation]


def test_a_retrain_is_evaluated_and_auto_promoted_when_its_gate_passes(api, celery_worker_process):
    training = upload(api, TRAINING, "train")
    suite = upload(api, recall_items(), "eval")
    assert suite["format"] == "suite"
    gate = api(
        "post", "/api/adapters/alice/assistant/gate", {"eval_dataset": suite["id"], "auto_promote": True}
    )
    assert gate["thresholds"]["recall"] == {"min": 0.8}

    train_and_settle(api, training["id"])

    detail = api("get", "/api/adapters/alice/assistant")
    assert detail["live"] == "r1"
    assert detail["pointer_history"][0]["reason"] == "auto-promote: gate passed"
    assert detail["revisions"][0]["gate"]["passed"]
    own = Evaluation.objects.get(revision__isnull=False, suite="recall")
    assert own.metrics == {"score": 1.0, "items": 2, "passed": 2}
    assert Evaluation.objects.filter(revision__isnull=True, suite="recall").exists()  # the bare base, once
    item = EvaluationItem.objects.filter(evaluation=own).first()
    assert item.passed and "Rex" in item.got


def test_a_retrain_that_fails_its_gate_is_not_promoted_and_says_why(api, celery_worker_process):
    training = upload(api, TRAINING, "train")
    unseen = [("Which planet do I dream of visiting?", "Mars.", "Mars")]
    suite = upload(api, recall_items(unseen), "eval")
    api("post", "/api/adapters/alice/assistant/gate", {"eval_dataset": suite["id"], "auto_promote": True})

    train_and_settle(api, training["id"])

    assert api("get", "/api/adapters/alice/assistant")["live"] is None
    refused = AuditEvent.objects.get(action="adapter.auto_promote_refused")
    assert "recall 0.000 (needs >= 0.8)" in refused.after["reason"]
    # the operator can still promote it, with a reason the audit log keeps
    api("post", "/api/adapters/alice/assistant/promote", {"revision": "r1"}, expect=409)
    api("post", "/api/adapters/alice/assistant/promote", {"revision": "r1", "override_reason": "demo only"})
    assert AuditEvent.objects.filter(action="adapter.gate_override").exists()
