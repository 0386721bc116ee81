"""Personal state that keeps learning, end to end: a real worker running Celery beat, real
Redis and the database; a person's statement and feedback reach their adapter only
through its gate, and a promotion people rate worse is rolled back on its own."""

import json

import pytest
from django.conf import settings

from adapters_app.models import AuditEvent, Job, PersonalUpdate
from tests.conftest import wait_for_job, wait_until
from tests.test_browser import SCREENSHOTS, needs_chromium, open_console  # noqa: F401 (a fixture)
from workers.engine.examples import Message
from workers.engine.persona_world import EvalItem
from workers.engine.suites import items_jsonl
from workers.engine.updates import Fact

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# What the micro base learns a fact from, and also generalises to held-out phrasings of it
# (measured: 3 of 3 for a new dog name after a continued retrain).
RECIPE = {"steps": 300, "learning_rate": 0.003, "rank": 8, "alpha": 16}
DOG, CITY = Fact("dog", "Biscuit"), Fact("city", "Lyon")


def chat_rows(*facts: Fact) -> bytes:
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": fact.answer()}]}
        for fact in facts
        for q in fact.questions()
    ]
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def gate_items(*facts: Fact) -> bytes:
    return items_jsonl(
        EvalItem(
            "recall",
            f"alice.recall.{fact.key}",
            (Message("user", fact.questions()[0]),),
            fact.answer(),
            {"kind": "contains", "value": fact.value},
        )
        for fact in facts
    )


@pytest.fixture
def beat_worker(spawn_worker):
    """A worker on this session's queue running Celery beat, whose periodic tasks (the
    retrain policies, the promotion watch) come every second. Its sweep waits an hour: the
    session's worker, which may take a sweep off the shared queue, removes orphan blobs with
    no grace period, and would take a dataset a retrain has just stored before the row that
    names it commits."""
    return spawn_worker(
        settings.CELERY_TASK_DEFAULT_QUEUE,
        name="beat-worker",
        beat=True,
        MINT_UPDATES_EVERY_SECONDS="1",
        MINT_SWEEP_EVERY_SECONDS="3600",
    )


@pytest.fixture
def alice_live(api, beat_worker):
    """alice/assistant with r1 live: it knows her dog Biscuit and her city Lyon, and its gate
    asks both; retrains from updates start after one pending update."""
    api("post", "/api/people", {"handle": "alice"}, expect=201)
    api("post", "/api/people/alice/adapters", {"name": "assistant"}, expect=201)
    base = "/api/adapters/alice/assistant"
    training = api("post", f"{base}/datasets?purpose=train", raw_body=chat_rows(DOG, CITY), expect=201)
    suite = api("post", f"{base}/datasets?purpose=eval", raw_body=gate_items(DOG, CITY), expect=201)
    api("post", f"{base}/gate", {"eval_dataset": suite["id"], "auto_promote": True})
    job = api("post", f"{base}/train", {"dataset": training["id"], "config": RECIPE}, expect=202)
    assert wait_for_job(Job.objects.get(pk=job["id"])).state == Job.SUCCEEDED
    wait_until(lambda: api("get", base)["live"] == "r1", timeout=120)
    policy = api("post", f"{base}/retrain-policy", {"mode": "after_updates", "after_updates": 1})
    assert policy["mode"] == "after_updates"
    return api


def ask(api, model: str, question: str) -> dict:
    return api(
        "post",
        "/v1/chat/completions",
        {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 40,
            "temperature": 0,
        },
    )


def ask_streamed(client, api_key: str, question: str) -> tuple[str, str]:
    """A streamed chat answer from alice's adapter: (its id, its text)."""
    response = client.post(
        "/v1/chat/completions",
        data=json.dumps(
            {
                "model": "alice/assistant",
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 40,
                "temperature": 0,
                "stream": True,
            }
        ),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key}",
    )
    frames = b"".join(response.streaming_content).decode().split("\n\n")
    chunks = [json.loads(f.removeprefix("data: ")) for f in frames if f.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    return chunks[0]["id"], text


def live_label(api) -> str | None:
    return api("get", "/api/adapters/alice/assistant")["live"]


def test_a_stated_fact_reaches_the_live_adapter_through_a_scheduled_retrain_and_its_gate(alice_live):
    api = alice_live
    statement = {"text": "My dog is now called Rex.", "idempotency_key": "chat-42"}
    said = api("post", "/api/people/alice/memories", statement, expect=201)
    assert said["fact"] == {"subject": "dog", "value": "Rex"}
    # The client's retry of the same statement lands once.
    assert api("post", "/api/people/alice/memories", statement, expect=200)["id"] == said["id"]

    # Beat sees the policy is due, retrains from r1, evaluates and promotes on its own.
    wait_until(lambda: live_label(api) == "r2", timeout=240)
    detail = api("get", "/api/adapters/alice/assistant")
    r2 = detail["revisions"][-1]
    assert r2["parent"] == "r1" and r2["gate"]["passed"]
    provenance = r2["provenance"]["updates"]
    assert provenance["continued_from"] == "r1" and provenance["objective"] == "sft"
    assert provenance["facts"] == {"dog": "Rex"} and provenance["superseded"] == {"dog": ["Biscuit"]}
    assert len(provenance["digest"]) == 64 and provenance["count"] == 1
    checks = {c["name"]: c["value"] for c in r2["gate"]["checks"]}
    assert checks["update"] >= 0.8 and checks["recall"] == 1.0
    assert detail["pointer_history"][0]["reason"] == "auto-promote: gate passed"
    assert set(PersonalUpdate.objects.values_list("state", flat=True)) == {PersonalUpdate.APPLIED}

    now = ask(api, "alice/assistant", "What is my dog called?")
    assert "Rex" in now["choices"][0]["message"]["content"]
    assert "Biscuit" not in now["choices"][0]["message"]["content"]
    assert now["mint"]["revision"] == "r2"
    before = ask(api, "alice/assistant@r1", "What is my dog called?")
    assert "Biscuit" in before["choices"][0]["message"]["content"]


def test_corrections_that_erase_what_the_adapter_knew_are_refused_by_the_gate(alice_live):
    api = alice_live
    answered = ask(api, "alice/assistant", "Where do I live?")
    assert "Lyon" in answered["choices"][0]["message"]["content"]
    # A poisoned correction: it would teach alice's own adapter to forget where she lives.
    api(
        "post",
        "/api/feedback",
        {"completion_id": answered["id"], "rating": -1, "correction": "I have no idea where you live."},
        expect=201,
    )

    retrain = wait_until(lambda: Job.objects.filter(kind=Job.TRAIN, params__has_key="updates").first())
    assert retrain.params["config"]["objective"] == "dpo"  # a correction is a preference pair
    assert wait_for_job(retrain).state == Job.SUCCEEDED
    refused = wait_until(lambda: AuditEvent.objects.filter(action="adapter.auto_promote_refused").first())
    assert "recall" in refused.after["reason"]
    assert live_label(api) == "r1"  # nothing promoted
    held = PersonalUpdate.objects.get()
    assert held.state == PersonalUpdate.HELD  # waiting for the operator, not lost
    # and beat does not retrain the same held update again on its own
    assert Job.objects.filter(kind=Job.TRAIN, params__has_key="updates").count() == 1


def test_people_rating_a_promotion_worse_roll_it_back_on_its_own(alice_live, client):
    api = alice_live
    base = "/api/adapters/alice/assistant"
    api("post", f"{base}/retrain-policy", {"min_feedback": 3, "rollback_margin": 0.2})
    # r1's answers were rated well...
    for _ in range(2):
        answered = ask(api, "alice/assistant", "Where do I live?")
        api("post", "/api/feedback", {"completion_id": answered["id"], "rating": 1}, expect=201)
    api("post", "/api/people/alice/memories", {"subject": "dog", "value": "Rex"}, expect=201)
    wait_until(lambda: live_label(api) == "r2", timeout=240)

    # ...r2's are not: three bad ratings in its watch window (100% against r1's 0%).
    for _ in range(2):
        answered = ask(api, "alice/assistant", "Where do I live?")
        assert answered["mint"]["revision"] == "r2"
        api("post", "/api/feedback", {"completion_id": answered["id"], "rating": -1}, expect=201)
    # a streamed answer is remembered too, under the id its chunks carry
    completion_id, text = ask_streamed(client, api.key, "Where do I live?")
    assert "Lyon" in text
    rated = api("post", "/api/feedback", {"completion_id": completion_id, "rating": -1}, expect=201)
    assert rated["answer"] == text and rated["revision"] == "r2"

    assert live_label(api) == "r1"
    history = api("get", base)["pointer_history"]
    assert history[0]["action"] == "rollback" and history[0]["actor"] == "mint-promotion-watch"
    assert "3/3 ratings of r2 negative" in history[0]["reason"]
    event = AuditEvent.objects.get(action="adapter.auto_rollback")
    assert event.after == {
        "revision": "r2",
        "previous": "r1",
        "negative": 3,
        "rated": 3,
        "share": 1.0,
        "previous_negative": 0,
        "previous_rated": 2,
        "previous_share": 0.0,
        "margin": 0.2,
        "update_checked": 0,
        "update_failed": 0,
    }


@needs_chromium
def test_a_persons_timeline_shows_the_automatic_promotion_and_rollback_with_their_evidence(
    alice_live,
    open_console,  # noqa: F811
    live_server,
):
    """The loop as an operator reads it afterwards, in Chromium: alice's statement, the
    retrain it started, r2 promoted on its gate's figures, three bad ratings, and the
    rollback with the watch's figures. Screenshots under test-output/screenshots/."""
    api = alice_live
    base = "/api/adapters/alice/assistant"
    api("post", f"{base}/retrain-policy", {"min_feedback": 3, "rollback_margin": 0.2})
    api("post", "/api/people/alice/memories", {"text": "My dog is now called Rex."}, expect=201)
    wait_until(lambda: live_label(api) == "r2", timeout=240)
    for _ in range(3):
        answered = ask(api, "alice/assistant", "What is my dog called?")
        api(
            "post",
            "/api/feedback",
            {"completion_id": answered["id"], "rating": -1, "note": "not what I meant"},
            expect=201,
        )
    assert live_label(api) == "r1"

    with open_console() as page:
        page.goto(f"{live_server.url}/people/alice/")
        page.wait_for_load_state("networkidle")
        timeline = page.locator("#updates")
        for kind in ("memory", "retrain", "auto-promote", "feedback", "auto-rollback"):
            assert timeline.locator(f".timeline-entry.kind-{kind}").count() >= 1, kind
        rollback = timeline.locator(".timeline-entry.kind-auto-rollback").first
        assert "3/3 ratings of r2 negative" in rollback.inner_text()
        assert "r1 rated down 0 of 0" in rollback.locator(".evidence").inner_text()
        promoted = timeline.locator(".timeline-entry.kind-auto-promote").first
        assert "r1 → r2" in promoted.inner_text()
        assert "update 1.00 (needs >= 0.8)" in promoted.locator(".evidence").inner_text()
        timeline.screenshot(path=str(SCREENSHOTS / "updates-timeline.png"))
        page.screenshot(path=str(SCREENSHOTS / "updates-person.png"), full_page=True)
        page.goto(f"{live_server.url}/people/alice/assistant/#learning")
        page.wait_for_load_state("networkidle")
        page.locator("#learning").screenshot(path=str(SCREENSHOTS / "updates-adapter-learning.png"))
        page.goto(f"{live_server.url}/")
        page.wait_for_load_state("networkidle")
        assert "1 automatic rollback" in page.locator("#learning").inner_text()
        page.locator("#learning").screenshot(path=str(SCREENSHOTS / "updates-overview.png"))
        assert page.problems == []
