"""Moving an adapter's live pointer: promote and rollback.

Both lock the adapter row (`select_for_update`), so two operators acting at
once serialise, and both append a PointerEvent and an audit event in the same
transaction as the move.
"""

from django.db import transaction

from adapters_app.lifecycle import audit
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.errors import Conflict, Invalid
from adapters_app.lifecycle.gates import GateFailed, verdict
from adapters_app.lifecycle.roles import authorize
from adapters_app.models import Adapter, PointerEvent, Revision

# What an automatic promotion's pointer event says: the promotion watch looks for it.
AUTO_PROMOTE_REASON = "auto-promote: gate passed"


def promote(revision: Revision, *, actor: Actor, reason: str = "", override_reason: str = "") -> PointerEvent:
    """Make `revision` live. A revision that fails its adapter's gate is refused
    unless `override_reason` says why it should serve anyway; the override is audited."""
    authorize(actor, "promote")
    with transaction.atomic():
        adapter = Adapter.objects.select_for_update().select_related("person").get(pk=revision.adapter_id)
        if adapter.live_revision_id == revision.pk:
            raise Conflict(f"{revision} is already live")
        gate = verdict(revision)
        if not gate.passed:
            if not override_reason.strip():
                raise GateFailed(
                    f"{revision} fails its gate: {'; '.join(gate.failures)}. "
                    "Give an override reason to promote it anyway.",
                    details=gate.as_dict(),
                )
            audit.record(
                actor,
                "adapter.gate_override",
                adapter,
                person_handle=adapter.person.handle,
                after={
                    "revision": revision.label,
                    "failures": gate.failures,
                    "override_reason": override_reason,
                },
            )
            reason = f"{reason} [gate overridden: {override_reason}]".strip()
        # The checks the promotion rested on, as they stood: a later gate set may judge differently.
        return _move(adapter, revision, PointerEvent.PROMOTE, actor, reason, gate=gate.as_dict()["checks"])


def rollback(adapter: Adapter, *, to: Revision | None = None, actor: Actor, reason: str = "") -> PointerEvent:
    """Move live back to `to`, or, with no target, to the revision live before the current one.

    A target must belong to the adapter and have been live before: rollback
    returns to known state; a revision never served is promoted, not rolled back to.
    """
    authorize(actor, "rollback")
    with transaction.atomic():
        adapter = Adapter.objects.select_for_update().select_related("person").get(pk=adapter.pk)
        if adapter.live_revision_id is None:
            raise Conflict(f"{adapter.handle} has no live revision to roll back from")
        if to is None:
            last = adapter.pointer_events.filter(to_revision_id=adapter.live_revision_id).first()
            if last is None or last.from_revision is None:
                raise Conflict(f"{adapter.handle} has no earlier live revision to roll back to")
            to = last.from_revision
        if to.adapter_id != adapter.pk:
            raise Invalid(f"{to} does not belong to {adapter.handle}")
        if to.pk == adapter.live_revision_id:
            raise Conflict(f"{to} is already live")
        if not adapter.pointer_events.filter(to_revision=to).exists():
            raise Invalid(f"{to} was never live; promote it instead of rolling back to it")
        return _move(adapter, to, PointerEvent.ROLLBACK, actor, reason)


def _move(
    adapter: Adapter, to: Revision, action: str, actor: Actor, reason: str, gate: list | None = None
) -> PointerEvent:
    previous = adapter.live_revision
    # A plain UPDATE of the pointer column only: Adapter rows are mutable, revisions are not.
    Adapter.objects.filter(pk=adapter.pk).update(live_revision=to)
    adapter.live_revision = to
    event = PointerEvent.objects.create(
        adapter=adapter,
        action=action,
        from_revision=previous,
        to_revision=to,
        actor=actor.name,
        reason=reason,
    )
    audit.record(
        actor,
        f"adapter.{action}",
        adapter,
        person_handle=adapter.person.handle,
        before={"live": previous.label if previous else None},
        after={"live": to.label, "reason": reason, **({"gate": gate} if gate is not None else {})},
    )
    return event


def auto_promote(revision: Revision, *, actor: Actor) -> bool:
    """Promote after an evaluation when the gate passes; otherwise record why not."""
    try:
        promote(revision, actor=actor, reason=AUTO_PROMOTE_REASON)
    except Conflict as refused:
        adapter = revision.adapter
        audit.record(
            actor,
            "adapter.auto_promote_refused",
            adapter,
            person_handle=adapter.person.handle,
            after={"revision": revision.label, "reason": refused.message},
        )
        return False
    return True
