"""Promote and rollback: atomic, append-only history, audited."""

import pytest

from adapters_app.lifecycle.errors import Conflict, Invalid
from adapters_app.lifecycle.pointer import promote, rollback
from adapters_app.models import AuditEvent, PointerEvent


@pytest.fixture
def r1_r2_r3(make_revision):
    r1 = make_revision()
    r2 = make_revision(parent=r1)
    r3 = make_revision(parent=r2)
    return r1, r2, r3


def live_of(adapter):
    adapter.refresh_from_db()
    return adapter.live_revision.label if adapter.live_revision else None


def test_promote_moves_live_and_appends_an_event(adapter, r1_r2_r3, actor):
    r1, r2, _ = r1_r2_r3
    promote(r1, actor=actor, reason="first")
    event = promote(r2, actor=actor, reason="better recall")
    assert live_of(adapter) == "r2"
    assert (event.from_revision, event.to_revision, event.actor, event.reason) == (
        r1,
        r2,
        "olivia",
        "better recall",
    )
    assert PointerEvent.objects.filter(adapter=adapter).count() == 2


def test_promoting_the_live_revision_again_is_refused(r1_r2_r3, actor):
    r1, _, _ = r1_r2_r3
    promote(r1, actor=actor)
    with pytest.raises(Conflict, match="already live"):
        promote(r1, actor=actor)


def test_rollback_without_target_returns_to_the_previous_live_revision(adapter, r1_r2_r3, actor):
    r1, _, r3 = r1_r2_r3
    promote(r1, actor=actor)
    promote(r3, actor=actor)
    event = rollback(adapter, actor=actor, reason="regression")
    assert live_of(adapter) == "r1"
    assert event.action == PointerEvent.ROLLBACK
    assert event.from_revision == r3


def test_rollback_to_a_named_revision_that_was_live(adapter, r1_r2_r3, actor):
    r1, r2, r3 = r1_r2_r3
    for revision in (r1, r2, r3):
        promote(revision, actor=actor)
    rollback(adapter, to=r1, actor=actor, reason="back to known good")
    assert live_of(adapter) == "r1"


def test_rollback_to_a_revision_never_live_is_refused(adapter, r1_r2_r3, actor):
    r1, r2, r3 = r1_r2_r3
    promote(r1, actor=actor)
    promote(r3, actor=actor)
    with pytest.raises(Invalid, match="never live"):
        rollback(adapter, to=r2, actor=actor)
    assert live_of(adapter) == "r3"


def test_rollback_with_no_history_is_refused(adapter, r1_r2_r3, actor):
    with pytest.raises(Conflict, match="no live revision"):
        rollback(adapter, actor=actor)
    promote(r1_r2_r3[0], actor=actor)
    with pytest.raises(Conflict, match="no earlier live revision"):
        rollback(adapter, actor=actor)


def test_every_move_is_audited_with_its_actor_and_reason(adapter, r1_r2_r3, actor):
    r1, r2, _ = r1_r2_r3
    promote(r1, actor=actor)
    promote(r2, actor=actor)
    rollback(adapter, actor=actor, reason="oops")
    moves = AuditEvent.objects.filter(action__in=["adapter.promote", "adapter.rollback"]).order_by("id")
    assert [(e.action, e.actor_name, e.before["live"], e.after["live"]) for e in moves] == [
        ("adapter.promote", "olivia", None, "r1"),
        ("adapter.promote", "olivia", "r1", "r2"),
        ("adapter.rollback", "olivia", "r2", "r1"),
    ]
    assert moves.last().after["reason"] == "oops"


def test_pointer_events_are_append_only(adapter, r1_r2_r3, actor):
    from adapters_app.models.append_only import ImmutableRowError

    event = promote(r1_r2_r3[0], actor=actor)
    event.reason = "rewritten history"
    with pytest.raises(ImmutableRowError):
        event.save()
