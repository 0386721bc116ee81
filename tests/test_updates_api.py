"""Personal updates through the JSON API and the lifecycle: feedback on remembered answers,
stated memories, what waits for a retrain, the retrain policy, and the watch that rolls an
automatic promotion back. The database and the real Redis; no worker (a retrain's task is
sent on commit, which these tests' transactions never reach)."""

import json
import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.errors import Invalid
from adapters_app.lifecycle.inference import redis_client
from adapters_app.lifecycle.pointer import AUTO_PROMOTE_REASON, promote
from adapters_app.lifecycle.updates import (
    configure_policy,
    due_policies,
    forget_answers_of,
    recalled_answer,
    record_feedback,
    record_memory,
    release_failed_retrains,
    remember_answer,
    watch_promotion,
)
from adapters_app.models import ApiKey, AuditEvent, Job, PersonalUpdate, PointerEvent, RetrainPolicy
from tests.conftest import with_role
from workers.engine.examples import Message

pytestmark = pytest.mark.django_db

ADAPTER = "/api/adapters/alice/assistant"
DOG_QUESTION = "What is my dog called?"


@pytest.fixture
def serve(adapter):
    """Remember an answer `revision` gave, as /v1 does; returns its completion id. The
    person's remembered answers leave the shared Redis at teardown."""

    def answered(revision, answer: str = "Your dog is called Rex.", question: str = DOG_QUESTION) -> str:
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        remember_answer(
            completion_id,
            revision=revision,
            prompt=[Message("user", question)],
            generations=[{"text": answer, "finish_reason": "stop"}],
        )
        return completion_id

    yield answered
    forget_answers_of(adapter.person_id)


@pytest.fixture
def r1(make_revision):
    return make_revision()


@pytest.fixture
def send(client, django_user_model):
    """POST with the key of an admin (ada) or a viewer (vera), and any extra headers."""

    def post(path: str, body: dict, *, role: str = "admin", **headers):
        name = {"admin": "ada", "viewer": "vera"}[role]
        user = django_user_model.objects.filter(username=name).first()
        if user is None:
            user = django_user_model.objects.create_user(name, password=f"pw-{name}-12345")
            if role == "admin":
                with_role(user, role)
        _, raw = ApiKey.issue(user)
        return client.post(
            path,
            data=json.dumps(body),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {raw}",
            **headers,
        )

    return post


def remember(api, text: str = "", expect: int = 201, **fields) -> dict:
    return api("post", "/api/people/alice/memories", {"text": text, **fields}, expect=expect)


# --- feedback -------------------------------------------------------------------------------


def test_feedback_on_an_unknown_completion_is_a_404_naming_the_window(api, adapter):
    refused = api("post", "/api/feedback", {"completion_id": "chatcmpl-nope", "rating": 1}, expect=404)
    assert "no answer 'chatcmpl-nope' on record" in refused["error"]["message"]
    assert f"older than {settings.MINT_FEEDBACK_WINDOW_HOURS:g} hours" in refused["error"]["message"]
    assert not PersonalUpdate.objects.exists()


@pytest.mark.parametrize(
    "rating",
    [
        0,
        2,
        -2,
        "1",
        None,
        True,
    ],
)
def test_a_rating_other_than_1_or_minus_1_is_a_400(api, serve, r1, rating):
    refused = api("post", "/api/feedback", {"completion_id": serve(r1), "rating": rating}, expect=400)
    assert set(refused["error"]["details"]) == {"rating"}
    assert not PersonalUpdate.objects.exists()


def test_feedback_on_a_remembered_answer_records_the_revision_prompt_and_answer(api, serve, r1):
    completion_id = serve(r1, answer="Your dog is called Rex.")
    update = api(
        "post", "/api/feedback", {"completion_id": completion_id, "rating": 1, "note": "spot on"}, expect=201
    )
    assert update["kind"] == "feedback" and update["rating"] == 1 and update["note"] == "spot on"
    assert (update["person"], update["adapter"], update["revision"]) == ("alice", "alice/assistant", "r1")
    assert update["answer"] == "Your dog is called Rex." and update["completion_id"] == completion_id
    stored = PersonalUpdate.objects.get(pk=update["id"])
    assert stored.prompt == [{"role": "user", "content": DOG_QUESTION}]
    assert stored.revision == r1
    event = AuditEvent.objects.get(action="update.feedback")
    assert event.after["update"] == update["id"] and event.after["revision"] == r1.pk


def test_feedback_may_choose_only_a_choice_the_response_had(api, serve, r1):
    refused = api("post", "/api/feedback", {"completion_id": serve(r1), "rating": 1, "choice": 1}, expect=400)
    assert refused["error"]["message"] == "choice must be between 0 and 0"


def test_a_retried_feedback_with_the_same_key_in_the_body_returns_the_first_update(api, serve, r1):
    completion_id = serve(r1)
    body = {"completion_id": completion_id, "rating": -1, "idempotency_key": "retry-1"}
    first = api("post", "/api/feedback", body, expect=201)
    again = api("post", "/api/feedback", {**body, "correction": "Something else."}, expect=200)
    assert again == first
    assert PersonalUpdate.objects.count() == 1
    assert AuditEvent.objects.filter(action="update.feedback").count() == 1


def test_a_retried_feedback_with_the_same_idempotency_key_header_returns_the_first_update(send, serve, r1):
    body = {"completion_id": serve(r1), "rating": 1}
    first = send("/api/feedback", body, HTTP_IDEMPOTENCY_KEY="header-7")
    again = send("/api/feedback", body, HTTP_IDEMPOTENCY_KEY="header-7")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert PersonalUpdate.objects.get().idempotency_key == "header-7"


def test_a_rating_without_a_correction_is_recorded_not_pending(api, serve, r1):
    for rating in (1, -1):
        update = api("post", "/api/feedback", {"completion_id": serve(r1), "rating": rating}, expect=201)
        assert update["state"] == "recorded" and update["fact"] is None


def test_a_correction_that_states_a_fact_becomes_a_fact_update(api, serve, r1):
    completion_id = serve(r1, answer="Your dog is called Biscuit.")
    body = {"completion_id": completion_id, "rating": -1, "correction": "no, my dog is called Rex now"}
    update = api("post", "/api/feedback", body, expect=201)
    assert update["state"] == "pending"
    assert update["fact"] == {"subject": "dog", "value": "Rex"}
    assert update["correction"] == "no, my dog is called Rex now"
    assert api("get", f"{ADAPTER}/updates")["facts"] == {"dog": "Rex"}


def test_a_bad_rating_with_a_correction_that_states_no_fact_becomes_a_pair(api, serve, r1):
    completion_id = serve(r1, question="Say hello.", answer="Good day to you.")
    body = {"completion_id": completion_id, "rating": -1, "correction": "Hey!"}
    assert api("post", "/api/feedback", body, expect=201)["state"] == "pending"
    pending = api("get", f"{ADAPTER}/updates")
    assert (pending["pairs"], pending["facts"]) == (1, {})


# --- memories -------------------------------------------------------------------------------


def test_a_memory_for_a_person_with_two_adapters_must_name_the_adapter(api, adapter):
    api("post", "/api/people/alice/adapters", {"name": "writer"}, expect=201)
    refused = remember(api, "My dog is now called Rex.", expect=400)
    assert (
        refused["error"]["message"] == "alice has more than one adapter; name the adapter the memory is for"
    )
    assert not PersonalUpdate.objects.exists()
    update = remember(api, "My dog is now called Rex.", adapter="writer")
    assert update["adapter"] == "alice/writer"


def test_a_memory_may_be_given_as_subject_and_value(api, adapter):
    update = remember(api, subject="dog", value="Rex")
    assert update["fact"] == {"subject": "dog", "value": "Rex"}
    assert update["text"] == "My dog is Rex." and update["state"] == "pending"
    free = remember(api, subject="Favourite colour", value="green")
    assert free["fact"] == {"subject": "favourite colour", "value": "green"}
    refused = remember(api, subject="dog", expect=400)
    assert "non-empty subject and value" in refused["error"]["message"]


def test_a_statement_with_no_fact_is_recorded_not_pending(api, adapter):
    update = remember(api, "I had a lovely day at the beach.")
    assert update["state"] == "recorded" and update["fact"] is None
    assert api("get", f"{ADAPTER}/updates")["waiting"] == 0


def test_a_retried_memory_returns_the_first_update(send, adapter):
    statement = {"text": "My dog is now called Rex.", "idempotency_key": "chat-42"}
    first = send("/api/people/alice/memories", statement)
    again = send("/api/people/alice/memories", {**statement, "text": "My dog is now called Max."})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert PersonalUpdate.objects.count() == 1


def test_restating_an_earlier_value_makes_it_the_newest_again(api, adapter):
    remember(api, "My dog is called Rex.")
    remember(api, "My dog is called Max.")
    remember(api, "My dog is called Rex.")
    assert api("get", f"{ADAPTER}/updates")["facts"] == {"dog": "Rex"}


# --- what waits -----------------------------------------------------------------------------


def test_a_persons_updates_come_newest_first_a_page_at_a_time(api, adapter):
    made = [remember(api, f"My dog is now called {name}.")["id"] for name in ("Luna", "Max", "Rex")]
    made += [remember(api, text)["id"] for text in ("Hello there.", "What a day.")]

    page = api("get", "/api/people/alice/updates?limit=2")
    assert [u["id"] for u in page["data"]] == made[:-3:-1]
    rest = api("get", f"/api/people/alice/updates?limit=2&after={page['next_after']}")
    assert [u["id"] for u in rest["data"]] == made[2:0:-1]
    last = api("get", f"/api/people/alice/updates?limit=2&after={rest['next_after']}")
    assert [u["id"] for u in last["data"]] == made[:1] and last["next_after"] is None


def test_a_persons_updates_are_filtered_by_state(api, adapter):
    remember(api, "My dog is now called Rex.")
    chat = remember(api, "What a day.")["id"]
    recorded = api("get", "/api/people/alice/updates?state=recorded")
    assert [u["id"] for u in recorded["data"]] == [chat]
    refused = api("get", "/api/people/alice/updates?state=lost", expect=400)
    assert refused["error"]["message"].startswith("state must be one of recorded, pending")


def test_the_adapters_waiting_updates_show_facts_superseded_values_and_conflicts_newest_first(api, adapter):
    ids = {name: remember(api, f"My dog is now called {name}.")["id"] for name in ("Luna", "Max", "Rex")}
    remember(api, "I live in Lyon.")
    remember(api, "What a day.")

    pending = api("get", f"{ADAPTER}/updates")
    assert pending["waiting"] == 4
    assert pending["facts"] == {"dog": "Rex", "city": "Lyon"}
    assert pending["superseded"] == {"dog": ["Max", "Luna"]}
    assert pending["conflicts"] == [
        {
            "subject": "dog",
            "kept": "Rex",
            "kept_update": ids["Rex"],
            "superseded": name,
            "superseded_update": ids[name],
        }
        for name in ("Max", "Luna")
    ]
    assert pending["retrain_job"] is None and pending["policy"]["mode"] == "manual"


def test_dismissing_a_pending_update_takes_it_out_and_dismissing_it_again_is_a_409(api, adapter):
    update = remember(api, "My dog is now called Rex.")
    path = f"/api/people/alice/updates/{update['id']}/dismiss"
    dismissed = api("post", path, {"reason": "a typo"})
    assert dismissed["state"] == "dismissed"
    assert api("get", f"{ADAPTER}/updates")["waiting"] == 0
    assert AuditEvent.objects.get(action="update.dismiss").after == {
        "update": update["id"],
        "reason": "a typo",
    }
    again = api("post", path, {}, expect=409)
    assert (
        again["error"]["message"]
        == f"update {update['id']} is dismissed; only pending or held ones can be dismissed"
    )
    api("post", "/api/people/alice/updates/999999/dismiss", {}, expect=404)


# --- the retrain policy ---------------------------------------------------------------------


def test_the_retrain_policy_is_changed_and_audited(api, adapter):
    policy = api(
        "post", f"{ADAPTER}/retrain-policy", {"mode": "schedule", "every_hours": 6, "fresh_start": True}
    )
    assert (policy["mode"], policy["every_hours"], policy["fresh_start"]) == ("schedule", 6.0, True)
    assert policy["next_run_at"] is not None
    assert api("get", f"{ADAPTER}/retrain-policy") == policy
    event = AuditEvent.objects.get(action="adapter.retrain_policy")
    assert event.before == {"mode": "manual", "every_hours": 24.0, "fresh_start": False}
    assert event.after == {"mode": "schedule", "every_hours": 6.0, "fresh_start": True}


def test_an_unknown_retrain_mode_is_a_400_naming_it(api, adapter):
    refused = api("post", f"{ADAPTER}/retrain-policy", {"mode": "weekly"}, expect=400)
    assert set(refused["error"]["details"]) == {"mode"}


def test_out_of_range_policy_numbers_are_a_400_naming_each_field(api, adapter):
    body = {
        "after_updates": -1,
        "every_hours": 0,
        "watch_hours": -2,
        "min_feedback": 0,
        "rollback_margin": 1.5,
    }
    refused = api("post", f"{ADAPTER}/retrain-policy", body, expect=400)
    assert set(refused["error"]["details"]) == set(body)
    assert "rollback_margin: must be a number between 0 and 1" in refused["error"]["message"]
    assert not AuditEvent.objects.filter(action="adapter.retrain_policy").exists()


def test_an_unknown_policy_setting_is_a_400_naming_it(api, adapter):
    refused = api("post", f"{ADAPTER}/retrain-policy", {"after_update": 3}, expect=400)
    assert set(refused["error"]["details"]) == {"after_update"}


def test_the_policy_service_names_an_unknown_setting(adapter, actor):
    with pytest.raises(Invalid) as refused:
        configure_policy(adapter, actor=actor, colour="blue", mode="weekly")
    assert refused.value.details == {
        "colour": "unknown setting",
        "mode": "must be one of manual, after_updates, schedule",
    }


# --- retraining from updates ----------------------------------------------------------------


def test_retraining_with_nothing_pending_is_a_409(api, adapter):
    refused = api("post", f"{ADAPTER}/retrain-from-updates", {}, expect=409)
    assert refused["error"]["message"].startswith("alice/assistant has no pending updates")
    assert not Job.objects.exists()


def test_retraining_with_only_ratings_is_a_409_since_ratings_wait_for_no_retrain(api, serve, r1):
    for rating in (1, -1):
        api("post", "/api/feedback", {"completion_id": serve(r1), "rating": rating}, expect=201)
    refused = api("post", f"{ADAPTER}/retrain-from-updates", {}, expect=409)
    assert "no pending updates" in refused["error"]["message"]
    assert not Job.objects.exists()


def test_a_correction_that_repeats_the_answer_is_recorded_and_retrains_nothing(api, serve, r1):
    completion_id = serve(r1, question="Say hello.", answer="Hey!")
    feedback = api(
        "post",
        "/api/feedback",
        {"completion_id": completion_id, "rating": -1, "correction": "Hey!"},
        expect=201,
    )
    assert feedback["state"] == "recorded"
    refused = api("post", f"{ADAPTER}/retrain-from-updates", {}, expect=409)
    assert "has no pending updates" in refused["error"]["message"]
    assert not Job.objects.exists()


def test_a_retrain_from_updates_trains_the_new_fact_without_the_old_rows(api, r1, actor):
    promote(r1, actor=actor)
    update = remember(api, "My dog is now called Biscuit.")
    job = api("post", f"{ADAPTER}/retrain-from-updates", {"reason": "by hand"}, expect=202)

    started = Job.objects.get(pk=job["id"])
    provenance = started.params["updates"]
    assert provenance["facts"] == {"dog": "Biscuit"} and provenance["superseded"] == {"dog": ["Rex"]}
    assert provenance["dropped_rows"] == 2 and provenance["continued_from"] == "r1"
    assert started.params["config"]["objective"] == "sft" and started.params["start_from"] == r1.sha256
    assert started.dataset.rows == 1 + 5  # Lisbon kept, the dog on its five TRAIN phrasings
    assert PersonalUpdate.objects.get(pk=update["id"]).state == PersonalUpdate.TRAINING
    pending = api("get", f"{ADAPTER}/updates")
    assert (pending["waiting"], pending["retrain_job"]) == (0, job["id"])
    assert api("post", f"{ADAPTER}/retrain-from-updates", {}, expect=409)["error"]["message"] == (
        "alice/assistant is already retraining from its updates"
    )


# --- roles ----------------------------------------------------------------------------------


def test_a_viewer_may_send_feedback_and_memories_but_may_not_change_the_policy(send, serve, r1):
    feedback = send("/api/feedback", {"completion_id": serve(r1), "rating": 1}, role="viewer")
    assert feedback.status_code == 201 and feedback.json()["created_by"] == "vera"
    assert send("/api/people/alice/memories", {"text": "I live in Lyon."}, role="viewer").status_code == 201

    policy = send(f"{ADAPTER}/retrain-policy", {"mode": "after_updates"}, role="viewer")
    assert policy.status_code == 403 and "needs the operator role" in policy.json()["error"]["message"]
    assert send(f"{ADAPTER}/retrain-from-updates", {}, role="viewer").status_code == 403
    update = PersonalUpdate.objects.get(kind=PersonalUpdate.MEMORY)
    assert send(f"/api/people/alice/updates/{update.pk}/dismiss", {}, role="viewer").status_code == 403
    assert not AuditEvent.objects.filter(action="adapter.retrain_policy").exists()


# --- erasure --------------------------------------------------------------------------------


def test_erasing_a_person_forgets_their_remembered_answers(api, serve, r1, adapter):
    completion_id = serve(r1)
    assert recalled_answer(completion_id)["revision_id"] == r1.pk
    person_id = adapter.person_id

    api("post", "/api/people/alice/erase", {"reason": "asked to be forgotten"})
    assert recalled_answer(completion_id) is None
    assert not redis_client().exists(f"mint:{settings.CELERY_TASK_DEFAULT_QUEUE}:answers-of:{person_id}")
    api("post", "/api/feedback", {"completion_id": completion_id, "rating": -1}, expect=404)


# --- failed retrains ------------------------------------------------------------------------


def test_updates_of_a_cancelled_retrain_wait_again_and_of_a_failed_one_are_held(adapter, actor):
    def retrain(state):
        return Job.objects.create(
            kind=Job.TRAIN, adapter=adapter, state=state, params={"updates": {}}, created_by="t"
        )

    failed, cancelled, running = retrain(Job.FAILED), retrain(Job.CANCELLED), retrain(Job.RUNNING)
    taken = {}
    for job, name in ((failed, "Luna"), (cancelled, "Max"), (running, "Rex")):
        update, _ = record_memory(adapter.person, text=f"My dog is now called {name}.", actor=actor)
        PersonalUpdate.objects.filter(pk=update.pk).update(state=PersonalUpdate.TRAINING, retrain_job=job)
        taken[name] = update.pk

    assert release_failed_retrains() == 2
    states = {u.pk: (u.state, u.retrain_job_id) for u in PersonalUpdate.objects.all()}
    assert states[taken["Max"]] == (PersonalUpdate.PENDING, None)
    # a retrain that failed would fail again on every beat: the operator decides
    assert states[taken["Luna"]] == (PersonalUpdate.HELD, failed.pk)
    assert states[taken["Rex"]] == (PersonalUpdate.TRAINING, running.pk)


# --- the watch after an automatic promotion -------------------------------------------------


@pytest.fixture
def r2_promoted_automatically(adapter, make_revision, actor, serve):
    """r1 promoted by hand and rated well twice, then r2 promoted automatically; the policy
    watches for a day, from 3 ratings, with a 20% margin."""
    r1 = make_revision()
    promote(r1, actor=actor, reason="first")
    for _ in range(2):
        record_feedback(serve(r1), rating=1, actor=actor)
    r2 = make_revision(parent=r1)
    promote(r2, actor=Actor.system("worker"), reason=AUTO_PROMOTE_REASON)
    configure_policy(adapter, actor=actor, watch_hours=24, min_feedback=3, rollback_margin=0.2)
    return r1, r2


def rate(serve, revision, actor, *ratings):
    for rating in ratings:
        record_feedback(serve(revision), rating=rating, actor=actor)


def live_label(adapter) -> str:
    adapter.refresh_from_db()
    return adapter.live_revision.label


def test_bad_ratings_beyond_the_margin_roll_an_automatic_promotion_back_with_the_figures(
    adapter, r2_promoted_automatically, serve, actor
):
    r1, r2 = r2_promoted_automatically
    rate(serve, r2, actor, -1, -1)
    assert live_label(adapter) == "r2"  # two ratings: below min_feedback
    rate(serve, r2, actor, -1)  # the third rolls it back, from record_feedback itself

    assert live_label(adapter) == "r1"
    event = PointerEvent.objects.filter(adapter=adapter).first()
    assert (event.action, event.actor, event.to_revision) == (
        PointerEvent.ROLLBACK,
        "mint-promotion-watch",
        r1,
    )
    assert event.reason.startswith("automatic rollback: 3/3 ratings of r2 negative (100%) against 0% for r1")
    assert AuditEvent.objects.get(action="adapter.auto_rollback").after == {
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
    assert watch_promotion(adapter) is None  # r1 was not promoted automatically


def test_the_watch_keeps_a_promotion_rated_worse_by_less_than_the_margin(
    adapter, r2_promoted_automatically, serve, actor
):
    r1, r2 = r2_promoted_automatically
    rate(serve, r1, actor, -1, -1)  # r1: 2 of 4 negative (50%)
    rate(serve, r2, actor, 1, 1, -1, -1, -1)  # r2: 3 of 5 negative (60%): 10 points worse
    assert watch_promotion(adapter) is None
    assert live_label(adapter) == "r2"


def test_the_watch_does_nothing_below_min_feedback(adapter, r2_promoted_automatically, serve, actor):
    _, r2 = r2_promoted_automatically
    configure_policy(adapter, actor=actor, min_feedback=10)
    rate(serve, r2, actor, *[-1] * 9)
    assert watch_promotion(adapter) is None
    assert live_label(adapter) == "r2"


def test_the_watch_does_nothing_outside_its_window(adapter, r2_promoted_automatically, serve, actor):
    _, r2 = r2_promoted_automatically
    configure_policy(adapter, actor=actor, watch_hours=0)
    rate(serve, r2, actor, -1, -1, -1)
    assert watch_promotion(adapter) is None
    assert live_label(adapter) == "r2"
    assert not AuditEvent.objects.filter(action="adapter.auto_rollback").exists()


def test_the_watch_does_nothing_after_a_promotion_by_hand(adapter, make_revision, serve, actor):
    r1 = make_revision()
    promote(r1, actor=actor)
    r2 = make_revision(parent=r1)
    promote(r2, actor=actor, reason="looks better")
    configure_policy(adapter, actor=actor, min_feedback=1)
    rate(serve, r2, actor, -1, -1)
    assert watch_promotion(adapter) is None
    assert live_label(adapter) == "r2"


# --- which policies are due -----------------------------------------------------------------


def due_adapters() -> list[int]:
    return [policy.adapter_id for policy in due_policies()]


def test_a_policy_after_updates_is_due_once_enough_updates_are_pending(adapter, actor):
    configure_policy(adapter, actor=actor, mode="after_updates", after_updates=2)
    record_memory(adapter.person, text="My dog is now called Rex.", actor=actor)
    record_memory(adapter.person, text="What a day.", actor=actor)  # recorded: it does not count
    assert due_adapters() == []
    record_memory(adapter.person, text="I live in Lyon.", actor=actor)
    assert due_adapters() == [adapter.pk]

    Job.objects.create(kind=Job.TRAIN, adapter=adapter, params={"updates": {}}, created_by="t")
    assert due_adapters() == []  # one retrain at a time


def test_a_scheduled_policy_is_due_when_its_time_comes_and_updates_are_pending(adapter, actor):
    policy = configure_policy(adapter, actor=actor, mode="schedule", every_hours=1)
    assert timezone.now() < policy.next_run_at <= timezone.now() + timedelta(hours=1)
    record_memory(adapter.person, text="My dog is now called Rex.", actor=actor)
    assert due_adapters() == []

    RetrainPolicy.objects.filter(pk=policy.pk).update(next_run_at=timezone.now() - timedelta(minutes=1))
    assert due_adapters() == [adapter.pk]
    PersonalUpdate.objects.update(state=PersonalUpdate.DISMISSED)
    assert due_adapters() == []  # time, but nothing to teach


def test_a_manual_policy_is_never_due(adapter, actor):
    configure_policy(adapter, actor=actor, mode="manual", after_updates=1)
    record_memory(adapter.person, text="My dog is now called Rex.", actor=actor)
    assert due_adapters() == []


def test_answers_that_still_give_a_replaced_value_roll_an_automatic_promotion_back(
    adapter, dataset, make_revision, tiny_payload, serve, actor
):
    from adapters_app.lifecycle.revisions import create_revision

    r1 = make_revision()
    promote(r1, actor=actor, reason="first")
    # r2 was retrained from "my dog is now called Rex" and replaced Biscuit.
    r2 = create_revision(
        adapter,
        tiny_payload,
        dataset=dataset,
        training_config={"steps": 2},
        parent=r1,
        job=None,
        actor=actor,
        updates={"facts": {"dog": "Rex"}, "superseded": {"dog": ["Biscuit"]}},
    )
    promote(r2, actor=Actor.system("worker"), reason=AUTO_PROMOTE_REASON)
    configure_policy(adapter, actor=actor, watch_hours=24, min_feedback=3, rollback_margin=0.2)

    serve(r2, answer="Your dog is called Rex.")
    serve(r2, answer="Your cat is called Tom.", question="And my cat?")  # not about the dog: not checked
    assert watch_promotion(adapter) is None
    serve(r2, answer="Your dog is called Biscuit.", question="What's my dog's name again?")
    serve(r2, answer="Biscuit, I think.", question="remind me, my dog?")
    assert live_label(adapter) == "r2"  # no rating came, so only the beat's watch sees it
    watch_promotion(adapter)

    assert live_label(adapter) == "r1"
    figures = AuditEvent.objects.get(action="adapter.auto_rollback").after
    assert (figures["update_checked"], figures["update_failed"]) == (3, 2)
    event = PointerEvent.objects.filter(adapter=adapter).first()
    assert "2/3 answers of r2 about a changed fact still gave an old value (67%)" in event.reason


def test_a_live_revision_whose_recipe_no_longer_loads_is_retrained_from_scratch(
    adapter, dataset, tiny_payload, actor
):
    from adapters_app.lifecycle.revisions import create_revision
    from adapters_app.lifecycle.updates import start_update_retrain

    # a recipe written by an older code version: a setting this one does not know
    old = create_revision(
        adapter,
        tiny_payload,
        dataset=dataset,
        training_config={"steps": 2, "warmup": 10},
        parent=None,
        job=None,
        actor=actor,
    )
    promote(old, actor=actor, reason="first")
    record_memory(adapter.person, text="My dog is now called Luna.", actor=actor)
    job = start_update_retrain(adapter, actor=actor)
    assert job.params["start_from"] is None and job.params["updates"]["continued_from"] is None
    assert job.params["config"]["objective"] == "sft"
