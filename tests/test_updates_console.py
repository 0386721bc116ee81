"""Learning from use in the console (no worker): the person's timeline, the adapter's
pending updates with their conflicts and the retrain policy form, the overview's figures."""

import pytest
from django.urls import reverse

from adapters_app.lifecycle import updates
from adapters_app.lifecycle.datasets import upload_dataset
from adapters_app.lifecycle.pointer import AUTO_PROMOTE_REASON, promote
from adapters_app.models import AuditEvent, Job, PersonalUpdate, RetrainPolicy
from tests.conftest import with_role
from workers.engine.examples import Message
from workers.engine.persona_world import EvalItem
from workers.engine.suites import items_jsonl

ITEM = EvalItem(
    "update",
    "alice.update.dog.h1",
    (Message("user", "My dog's name?"),),
    "Rex",
    {"kind": "contains", "value": "Rex"},
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def console(client, django_user_model):
    client.force_login(with_role(django_user_model.objects.create_user("ops"), "operator"))
    return client


@pytest.fixture
def stated(alice, adapter, actor):
    """alice said her dog is called Max, then Rex: the newer wins at the retrain."""
    older, _ = updates.record_memory(alice, text="My dog is called Max.", actor=actor)
    newer, _ = updates.record_memory(alice, text="My dog is now called Rex.", actor=actor)
    return older, newer


def test_the_adapter_page_shows_what_waits_and_the_conflict_resolved_newest_first(console, stated):
    older, _ = stated
    page = console.get(reverse("console:adapter", args=["alice", "assistant"])).content.decode()
    assert "2</strong> updates waiting" in page
    assert "the next retrain teaches <strong>dog</strong> = Rex" in page
    assert f'<s>Max</s> <span class="muted">#{older.pk}</span>' in page
    assert "Retrain from updates now" in page


def test_the_person_page_lists_updates_and_automatic_moves_newest_first(
    console, stated, make_revision, actor
):
    r1 = make_revision()
    promote(r1, actor=actor, reason="first")
    r2 = make_revision(parent=r1)
    promote(r2, actor=actor, reason=AUTO_PROMOTE_REASON)
    page = console.get(reverse("console:person", args=["alice"])).content.decode()
    assert "Updates from use" in page and "assistant</a>: 2 waiting" in page
    order = [page.index(text) for text in ("r1 → r2", "My dog is now called Rex.", "My dog is called Max.")]
    assert order == sorted(order)
    assert 'class="timeline-entry kind-auto-promote"' in page


def test_a_retrain_with_nothing_to_teach_is_refused_with_the_reason(console, adapter):
    response = console.post(reverse("console:update_retrain", args=["alice", "assistant"]), follow=True)
    assert "has no pending updates" in response.content.decode()
    assert not Job.objects.exists()


def test_the_policy_form_saves_and_audits_and_refuses_nonsense(console, adapter):
    url = reverse("console:retrain_policy", args=["alice", "assistant"])
    console.post(url, {"mode": "after_updates", "after_updates": "3", "rollback_margin": "0.1"})
    policy = RetrainPolicy.objects.get(adapter=adapter)
    assert (policy.mode, policy.after_updates, policy.rollback_margin) == ("after_updates", 3, 0.1)
    assert AuditEvent.objects.filter(action="adapter.retrain_policy").count() == 1
    page = console.post(url, {"mode": "hourly"}, follow=True).content.decode()
    assert "mode: must be one of manual, after_updates, schedule" in page
    assert RetrainPolicy.objects.get(adapter=adapter).mode == "after_updates"


def test_dismissing_an_update_takes_it_out_of_the_next_retrain(console, stated):
    older, _ = stated
    console.post(reverse("console:update_dismiss", args=["alice", older.pk]))
    older.refresh_from_db()
    assert older.state == PersonalUpdate.DISMISSED
    assert [u.pk for u in updates.waiting_updates(older.adapter)] == [stated[1].pk]


def test_the_overview_counts_updates_and_the_loops_moves(console, stated):
    page = console.get(reverse("console:overview")).content.decode()
    assert "2</strong> updates (2 pending, 0 held for an operator)" in page
    assert 'id="updates-chart"' in page


def test_an_automatic_promotion_shows_the_checks_it_passed_even_after_the_gate_set_changed(
    console, adapter, eval_set, make_revision, actor
):
    from adapters_app.lifecycle.gates import configure_gate
    from tests.test_console_suites import evaluate

    configure_gate(adapter, eval_dataset=eval_set, actor=actor)
    r1 = make_revision()
    evaluate(adapter, eval_set, r1, recall=(1, 1))
    promote(r1, actor=actor, reason=AUTO_PROMOTE_REASON)
    # a retrain from updates points the gate at a new set, on which r1 was never evaluated
    later = upload_dataset(
        adapter.person, items_jsonl([ITEM]), name="gate-after", purpose="eval", actor=actor
    )[0]
    configure_gate(adapter, eval_dataset=later, actor=actor)

    page = console.get(reverse("console:person", args=["alice"])).content.decode()
    assert "<strong>recall</strong> 1.00 (needs &gt;= 0.8)" in page
