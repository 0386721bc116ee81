from django.db.models import QuerySet

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.roles import authorize
from adapters_app.models import AuditEvent


def record(
    actor: Actor,
    action: str,
    obj,
    *,
    person_handle: str = "",
    before: dict | None = None,
    after: dict | None = None,
) -> AuditEvent:
    """Append an audit event; call inside the transaction that made the change."""
    return AuditEvent.objects.create(
        actor_id=actor.user_id,
        actor_name=actor.name,
        via=actor.via,
        action=action,
        object_type=type(obj).__name__,
        object_id=str(getattr(obj, "pk", "") or ""),
        object_repr=str(obj)[:300],
        person_handle=person_handle,
        before=before,
        after=after,
    )


def export_audit(events: QuerySet, *, actor: Actor) -> QuerySet:
    """`events` for an export of the audit log, once the actor's role allows it: the log
    names every person and what was done to their data, so viewers may read it page by
    page in the console but not carry it away whole."""
    authorize(actor, "audit.export")
    return events
