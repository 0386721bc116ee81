"""Personal updates: feedback on answers, stated memories, what waits for a retrain, the
retrain policy, and a retrain from updates by hand (lifecycle/updates.py does the work)."""

from ninja import Router, Status

from adapters_app.api import schemas
from adapters_app.api.schemas import answers
from adapters_app.api.views import ADAPTER_PATH, _limit, _page
from adapters_app.lifecycle import people, updates
from adapters_app.lifecycle.errors import Invalid, NotFound
from adapters_app.models import PersonalUpdate

router = Router()


def _idempotency_key(request, given: str) -> str:
    return given or request.headers.get("Idempotency-Key", "")


def _landed(update: PersonalUpdate, created: bool):
    # A retried request gets the update it made the first time, with 200 instead of 201.
    return Status(201 if created else 200, update)


@router.post(
    "/feedback",
    response=answers({201: schemas.Update, 200: schemas.Update}, 400, 401, 403, 404),
    url_name="feedback",
)
def feedback(request, payload: schemas.FeedbackRequest):
    """Rate an answer a person's adapter gave (a /v1 response's `id`), optionally with the
    answer it should have given. It waits, with the revision that answered, for the
    adapter's next retrain; a bad rating also counts against a promotion being watched."""
    update, created = updates.record_feedback(
        payload.completion_id,
        rating=payload.rating,
        correction=payload.correction,
        note=payload.note,
        choice=payload.choice,
        idempotency_key=_idempotency_key(request, payload.idempotency_key),
        actor=request.actor,
    )
    return _landed(update, created)


@router.post(
    "/people/{person}/memories",
    response=answers({201: schemas.Update, 200: schemas.Update}, 400, 401, 403, 404),
    url_name="memories",
)
def remember(request, person: str, payload: schemas.MemoryRequest):
    """A fact or preference the person stated, in plain text ("My dog is now called Rex.")
    or as subject and value. A newer value of a fact supersedes the older at the retrain."""
    owner = people.get_person(person)
    adapter = people.get_adapter(person, payload.adapter) if payload.adapter else None
    update, created = updates.record_memory(
        owner,
        text=payload.text,
        adapter=adapter,
        subject=payload.subject,
        value=payload.value,
        idempotency_key=_idempotency_key(request, payload.idempotency_key),
        actor=request.actor,
    )
    return _landed(update, created)


@router.get(
    "/people/{person}/updates",
    response=answers({200: schemas.UpdatePage}, 400, 401, 404),
    url_name="person-updates",
)
def list_updates(
    request,
    person: str,
    adapter: str = "",
    state: str = "",
    after: int | None = None,
    limit: int = 50,
):
    """A person's updates, newest first (?adapter=&state=&after=<id>&limit=: `after` is the
    last id of the previous page, as `next_after` gives it)."""
    owner = people.get_person(person)
    rows = owner.updates.select_related("person", "adapter__person", "revision")
    if adapter:
        rows = rows.filter(adapter=people.get_adapter(person, adapter))
    if state:
        if state not in dict(PersonalUpdate.STATES):
            raise Invalid(f"state must be one of {', '.join(dict(PersonalUpdate.STATES))}")
        rows = rows.filter(state=state)
    if after is not None:
        rows = rows.filter(pk__lt=after)
    limit = _limit(limit)
    return _page(list(rows.order_by("-pk")[: limit + 1]), limit, cursor=lambda update: update.pk)


@router.post(
    "/people/{person}/updates/{int:update_id}/dismiss",
    response=answers({200: schemas.Update}, 400, 401, 403, 404, 409),
    url_name="update-dismiss",
)
def dismiss(request, person: str, update_id: int, payload: schemas.DismissRequest | None = None):
    """Drop a pending or held update: no retrain will take it."""
    owner = people.get_person(person)
    update = owner.updates.select_related("person", "adapter__person").filter(pk=update_id).first()
    if update is None:
        raise NotFound(f"{person} has no update {update_id}")
    return updates.dismiss_update(update, actor=request.actor, reason=payload.reason if payload else "")


@router.get(
    f"{ADAPTER_PATH}/updates",
    response=answers({200: schemas.PendingUpdates}, 401, 404),
    url_name="pending-updates",
)
def pending(request, person: str, adapter: str):
    """What the adapter's waiting updates would teach, and the conflicts resolved newest first."""
    target = people.get_adapter(person, adapter)
    return pending_summary(target)


def pending_summary(adapter) -> dict:
    waiting = updates.pending(adapter)
    resolution, job = waiting.resolution, waiting.retrain_job
    return {
        "waiting": len(waiting.waiting),
        "facts": {fact.subject: fact.value for fact in resolution.facts.values()},
        "superseded": {resolution.facts[k].subject: v for k, v in resolution.superseded.items()},
        "conflicts": [
            {
                "subject": c.kept.subject,
                "kept": c.kept.value,
                "kept_update": c.kept_update,
                "superseded": c.superseded.value,
                "superseded_update": c.superseded_update,
            }
            for c in resolution.conflicts
        ],
        "pairs": len(resolution.pairs),
        "retrain_job": job.pk if job else None,
        "policy": waiting.policy,
    }


@router.get(
    f"{ADAPTER_PATH}/retrain-policy",
    response=answers({200: schemas.RetrainPolicy}, 401, 404),
    url_name="retrain-policy",
)
def retrain_policy(request, person: str, adapter: str):
    """When the adapter retrains from its updates, and how its promotions are watched."""
    return updates.policy_of(people.get_adapter(person, adapter))


@router.post(
    f"{ADAPTER_PATH}/retrain-policy",
    response=answers({200: schemas.RetrainPolicy}, 400, 401, 403, 404),
    url_name="retrain-policy",
)
def configure_retrain_policy(request, person: str, adapter: str, payload: schemas.RetrainPolicyRequest):
    """Set the retrain policy: manual, after N pending updates, or every so many hours; a
    fresh start or continued training; the watch window and rollback margin."""
    target = people.get_adapter(person, adapter)
    return updates.configure_policy(target, actor=request.actor, **payload.dict())


@router.post(
    f"{ADAPTER_PATH}/retrain-from-updates",
    response=answers({202: schemas.Job}, 400, 401, 403, 404, 409),
    url_name="retrain-from-updates",
)
def retrain(request, person: str, adapter: str, payload: schemas.RetrainRequest | None = None):
    """Retrain now from the waiting updates: evaluated on the gate set plus the update
    suite, promoted only if it passes."""
    target = people.get_adapter(person, adapter)
    payload = payload or schemas.RetrainRequest()
    job = updates.start_update_retrain(
        target, actor=request.actor, fresh_start=payload.fresh_start, reason=payload.reason
    )
    return Status(202, job)
