"""Promotion gates: a failing revision is refused, an override is audited, thresholds are validated."""

from types import SimpleNamespace

import pytest

from adapters_app.lifecycle.errors import Invalid
from adapters_app.lifecycle.evaluations import record_suite_results
from adapters_app.lifecycle.gates import GateFailed, configure_gate, verdict
from adapters_app.lifecycle.pointer import promote
from adapters_app.models import AuditEvent, PointerEvent


def graded(suite: str, passed: int, total: int):
    return [
        SimpleNamespace(
            item_id=f"{suite}.{i}",
            suite=suite,
            prompt="q",
            expected="a",
            got="a" if i < passed else "b",
            passed=i < passed,
            detail="",
        )
        for i in range(total)
    ]


@pytest.fixture
def gated(adapter, eval_set, actor):
    """The adapter gated on an evaluation set (its default thresholds)."""
    return configure_gate(adapter, eval_dataset=eval_set, actor=actor)


def evaluate(adapter, dataset, revision, **suites):
    results = [item for suite, (passed, total) in suites.items() for item in graded(suite, passed, total)]
    return record_suite_results(
        base=adapter.base, revision=revision, dataset=dataset, results=results, job=None
    )


def test_without_an_eval_dataset_there_is_no_gate(make_revision, actor):
    revision = make_revision()
    assert not verdict(revision).configured
    promote(revision, actor=actor)


def test_a_revision_never_evaluated_fails_its_gate(gated, make_revision, actor):
    revision = make_revision()
    with pytest.raises(GateFailed, match="not evaluated"):
        promote(revision, actor=actor)
    assert not PointerEvent.objects.exists()


def test_a_revision_that_meets_every_threshold_is_promoted(gated, eval_set, make_revision, actor):
    revision = make_revision()
    evaluate(gated, eval_set, None, retention=(10, 10))
    evaluate(gated, eval_set, revision, recall=(9, 10), tool=(8, 10), leakage=(10, 10), retention=(10, 10))
    assert verdict(revision).passed
    promote(revision, actor=actor)


def test_a_failing_revision_is_refused_with_its_failures_named(gated, eval_set, make_revision, actor):
    revision = make_revision()
    evaluate(gated, eval_set, None, retention=(10, 10))
    evaluate(gated, eval_set, revision, recall=(5, 10), retention=(9, 10))
    with pytest.raises(GateFailed) as refused:
        promote(revision, actor=actor)
    assert "recall 0.500 (needs >= 0.8)" in refused.value.message
    assert "retention_drop 0.100 (needs <= 0.02)" in refused.value.message
    gated.refresh_from_db()
    assert gated.live_revision is None


def test_an_override_promotes_and_is_audited_with_its_reason(gated, eval_set, make_revision, actor):
    revision = make_revision()
    evaluate(gated, eval_set, revision, recall=(1, 10))
    event = promote(revision, actor=actor, reason="hotfix", override_reason="person asked for it today")
    assert "gate overridden: person asked for it today" in event.reason
    override = AuditEvent.objects.get(action="adapter.gate_override")
    assert override.actor_name == "olivia"
    assert override.after["override_reason"] == "person asked for it today"
    assert override.after["failures"] == ["recall 0.100 (needs >= 0.8)"]


def test_a_blank_override_reason_is_not_an_override(gated, eval_set, make_revision, actor):
    revision = make_revision()
    evaluate(gated, eval_set, revision, recall=(1, 10))
    with pytest.raises(GateFailed):
        promote(revision, actor=actor, override_reason="   ")


def test_operators_can_set_thresholds(adapter, eval_set, make_revision, actor):
    configure_gate(adapter, eval_dataset=eval_set, thresholds={"recall": {"min": 0.4}}, actor=actor)
    revision = make_revision()
    evaluate(adapter, eval_set, revision, recall=(5, 10))
    assert verdict(revision).passed
    assert AuditEvent.objects.filter(action="adapter.configure_gate").count() == 1


def test_nonsense_thresholds_are_refused(adapter, actor):
    with pytest.raises(Invalid) as refused:
        configure_gate(adapter, thresholds={"recall": {"min": 3}, "vibes": {"min": 1}}, actor=actor)
    assert set(refused.value.details) == {"recall", "vibes"}


def test_a_training_dataset_cannot_be_the_evaluation_set(adapter, dataset, actor):
    with pytest.raises(Invalid, match="needs an evaluation set"):
        configure_gate(adapter, eval_dataset=dataset, actor=actor)


def test_the_adapter_row_keeps_its_newest_revisions_gate_status_for_the_lists(
    adapter, eval_set, make_revision, actor
):
    assert adapter.gate_status == "untrained" and adapter.last_trained_at is None
    first = make_revision()
    adapter.refresh_from_db()
    assert adapter.gate_status == "ungated" and adapter.last_trained_at == first.created_at
    configure_gate(adapter, eval_dataset=eval_set, actor=actor)
    adapter.refresh_from_db()
    assert adapter.gate_status == "unevaluated"
    evaluate(adapter, eval_set, first, recall=(9, 10), tool=(9, 10), leakage=(10, 10), retention=(10, 10))
    adapter.refresh_from_db()
    assert adapter.gate_status == "failed"  # the retention drop needs the bare base's score
    evaluate(adapter, eval_set, None, retention=(10, 10))
    adapter.refresh_from_db()
    assert adapter.gate_status == "passed"
    evaluate(adapter, eval_set, first, recall=(9, 10), retention=(8, 10))
    adapter.refresh_from_db()
    assert adapter.gate_status == "failed"
    second = make_revision()
    adapter.refresh_from_db()
    assert adapter.gate_status == "unevaluated" and adapter.last_trained_at == second.created_at
