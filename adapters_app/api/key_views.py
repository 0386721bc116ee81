"""API keys, for admins: issue a person key, list, change limits and expiry, revoke
(lifecycle/keys.py decides; a person key itself reaches none of this)."""

from datetime import timedelta

from django.utils import timezone
from ninja import Router, Status

from adapters_app.api import schemas
from adapters_app.api.schemas import answers
from adapters_app.api.views import _limit, _page
from adapters_app.lifecycle import keys, people
from adapters_app.lifecycle.errors import Invalid

router = Router()

KEY_PATH = "/keys/{prefix}"


@router.get("/keys", response=answers({200: schemas.KeyPage}, 400, 401, 403), url_name="keys")
def list_keys(request, person: str = "", after: str = "", limit: int = 50):
    """Every API key, newest first (admin role; ?person= for one person's keys;
    ?after=<next_after>&limit= pages)."""
    limit = _limit(limit)
    found = keys.keys_for(request.actor)
    if person:
        found = found.filter(person=people.get_person(person))
    if after:
        if not after.isdigit():
            raise Invalid("after must be the next_after of the page before")
        found = found.filter(pk__lt=int(after))
    rows = list(found.order_by("-pk")[: limit + 1])
    return _page(rows, limit, cursor=lambda key: str(key.pk))


@router.post("/keys", response=answers({201: schemas.KeyIssued}, 400, 401, 403, 404), url_name="keys")
def issue_key(request, payload: schemas.KeyRequest):
    """Issue a person key: it may call /v1 only, with that person's adapters (or the one
    named), and the bare bases only with `allow_base`. The secret is in this answer only."""
    person = people.get_person(payload.person)
    adapter = people.get_adapter(payload.person, payload.adapter) if payload.adapter else None
    key, secret = keys.issue_person_key(
        person,
        actor=request.actor,
        adapter=adapter,
        allow_base=payload.allow_base,
        name=payload.name,
        expires_at=_expiry(payload.expires_in_days),
        limits=payload.model_dump(include=set(keys.LIMIT_FIELDS)),
    )
    key.secret = secret
    return Status(201, key)


@router.get(KEY_PATH, response=answers({200: schemas.Key}, 401, 403, 404), url_name="key")
def key_detail(request, prefix: str):
    """One key's public facts (never its secret)."""
    return keys.get_key(prefix, actor=request.actor)


@router.patch(KEY_PATH, response=answers({200: schemas.Key}, 400, 401, 403, 404), url_name="key")
def change_key(request, prefix: str, payload: schemas.KeyChange):
    """Change a key's limits or expiry; only the fields given change."""
    given = payload.model_fields_set
    changes = {field: getattr(payload, field) for field in keys.LIMIT_FIELDS if field in given}
    if "expires_in_days" in given:
        changes["expires_at"] = _expiry(payload.expires_in_days)
    if not changes:
        raise Invalid("nothing to change: give expires_in_days or a limit")
    return keys.change_key(keys.get_key(prefix, actor=request.actor), actor=request.actor, **changes)


@router.post(f"{KEY_PATH}/revoke", response=answers({200: schemas.Key}, 401, 403, 404), url_name="key-revoke")
def revoke_key(request, prefix: str):
    """Revoke a key: from now on it gets 401. Revoking a revoked key changes nothing."""
    return keys.revoke_key(keys.get_key(prefix, actor=request.actor), actor=request.actor)


def _expiry(days: int | None):
    return timezone.now() + timedelta(days=days) if days is not None else None
