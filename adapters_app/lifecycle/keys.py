"""API keys: who a Bearer secret is, what it may reach, and the admins' keys lifecycle.

Two kinds. An operator key belongs to a console account and acts with its role (the
management API and /v1 alike). A person key belongs to one person, optionally one of their
adapters: it is what an application serving that person holds. It may ask only that
person's adapters on /v1 (and the bare bases where its issuer allowed it), sees only them in
/v1/models, and reaches no management endpoint. A person key asking for another person's
adapter gets the same 404 as a model that does not exist: it learns nothing.

Only a hash of each secret is stored. Every use stamps `last_used_at`; every refusal of a
known key (revoked, expired, out of scope) is an `api_key.denied` audit event naming the key
by its prefix, never the secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from adapters_app.lifecycle import audit
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.errors import Forbidden, Invalid, NotFound, Unauthenticated
from adapters_app.lifecycle.revisions import ModelName
from adapters_app.lifecycle.roles import PERSON_KEY, authorize
from adapters_app.models import Adapter, ApiKey, Person

LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "concurrent_streams")
MAX_LIMIT = 10**9


def authenticate(raw: str, *, path: str = "") -> ApiKey:
    """The active key whose secret is `raw`; Unauthenticated otherwise. A revoked or expired
    key's attempt is audited (its prefix, never the secret)."""
    raw = (raw or "").strip()
    key = ApiKey.find(raw) if raw else None
    if key is None or (key.user_id is not None and not key.user.is_active):
        raise Unauthenticated("a valid Bearer API key is required")
    state = key.state()
    if state != "active":
        deny(key, f"key {state}", path=path)
        raise Unauthenticated(f"this API key is {state}")
    now = timezone.now()
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    key.last_used_at = now
    return key


def actor_for(key: ApiKey) -> Actor:
    if key.is_person_key:
        return Actor(name=f"key mint_{key.prefix} ({key.owner})", via="api", role=PERSON_KEY)
    return Actor.from_user(key.user, via="api")


def deny(key: ApiKey, reason: str, *, path: str = "", model: str = "") -> None:
    """Record a refused use of `key` in the audit log."""
    after = {"reason": reason, "path": path[:200]}
    if model:
        after["model"] = model[:200]
    audit.record(
        actor_for(key),
        "api_key.denied",
        key,
        person_handle=key.person.handle if key.person_id else "",
        after=after,
    )


@dataclass(frozen=True, slots=True)
class KeyScope:
    """What a person key may reach on /v1. Operator keys have no scope (None)."""

    key: ApiKey

    @property
    def person(self) -> Person:
        return self.key.person

    def admit(self, model: str, *, path: str = "") -> ModelName:
        """`model` read, if this key may ask it; otherwise the not-found answer of a model
        that does not exist (audited). Decided on the name alone, before any lookup, so an
        adapter of someone else's answers exactly like one that was never created."""
        name = ModelName.parse(model)
        if name.base:
            allowed = self.key.allow_base
        else:
            allowed = name.person == self.person.handle and (
                self.key.adapter_id is None or name.adapter == self.key.adapter.name
            )
        if not allowed:
            deny(self.key, "model outside the key's scope", path=path, model=name.text)
            raise name.not_found()
        return name

    def adapters(self, adapters: QuerySet) -> QuerySet:
        adapters = adapters.filter(person_id=self.key.person_id)
        return adapters.filter(pk=self.key.adapter_id) if self.key.adapter_id else adapters

    def bases(self, bases: QuerySet) -> QuerySet:
        return bases if self.key.allow_base else bases.none()


def scope_of(key: ApiKey) -> KeyScope | None:
    return KeyScope(key) if key.is_person_key else None


def refuse_management(key: ApiKey, *, path: str) -> None:
    """Person keys reach /v1 only."""
    if key.is_person_key:
        deny(key, "management endpoint", path=path)
        raise Forbidden("a person key may only call /v1 inference with its person's adapters")


# --- the admins' side ------------------------------------------------------------------


def issue_person_key(
    person: Person,
    *,
    actor: Actor,
    adapter: Adapter | None = None,
    allow_base: bool = False,
    name: str = "",
    expires_at: datetime | None = None,
    limits: dict[str, int | None] | None = None,
) -> tuple[ApiKey, str]:
    """A new key for `person` (and only `adapter`, when given); the secret is returned once."""
    authorize(actor, "key.manage")
    if adapter is not None and adapter.person_id != person.pk:
        raise Invalid(f"{adapter.handle} is not one of {person.handle}'s adapters")
    _check_expiry(expires_at)
    with transaction.atomic():
        key, raw = ApiKey.issue(
            name=name.strip()[:100],
            person=person,
            adapter=adapter,
            allow_base=allow_base,
            issued_by_id=actor.user_id,
            expires_at=expires_at,
            **_checked_limits(limits or {}),
        )
        audit.record(actor, "api_key.create", key, person_handle=person.handle, after=describe(key))
    return key, raw


def revoke_key(key: ApiKey, *, actor: Actor) -> ApiKey:
    authorize(actor, "key.manage")
    with transaction.atomic():
        key = (
            ApiKey.objects.select_for_update(of=("self",))
            .select_related("person", "adapter", "user")
            .get(pk=key.pk)
        )
        if key.revoked_at is None:
            key.revoked_at = timezone.now()
            key.save(update_fields=["revoked_at"])
            audit.record(actor, "api_key.revoke", key, person_handle=_handle(key), after=describe(key))
    return key


def change_key(key: ApiKey, *, actor: Actor, **changes) -> ApiKey:
    """Set a key's expiry (None: never) and limits (None: the default, 0: none)."""
    authorize(actor, "key.manage")
    unknown = set(changes) - {"expires_at", *LIMIT_FIELDS}
    if unknown:
        raise Invalid(f"cannot change {', '.join(sorted(unknown))} of a key")
    # Every field is checked before the row is locked: the new values, expiry and limits.
    new = _checked_limits({f: changes[f] for f in LIMIT_FIELDS if f in changes})
    if "expires_at" in changes:
        _check_expiry(changes["expires_at"])
        new["expires_at"] = changes["expires_at"]
    with transaction.atomic():
        key = (
            ApiKey.objects.select_for_update(of=("self",))
            .select_related("person", "adapter", "user")
            .get(pk=key.pk)
        )
        if key.revoked_at is not None:
            raise Invalid(f"key mint_{key.prefix} is revoked; issue a new one")
        before = describe(key)
        for field, value in new.items():
            setattr(key, field, value)
        key.save(update_fields=list(new))
        audit.record(
            actor, "api_key.change", key, person_handle=_handle(key), before=before, after=describe(key)
        )
    return key


def get_key(prefix: str, *, actor: Actor) -> ApiKey:
    """The key named `prefix`, for an admin (who may be told whether it exists)."""
    authorize(actor, "key.manage")
    key = ApiKey.objects.select_related("person", "adapter", "user").filter(prefix=prefix).first()
    if key is None:
        raise NotFound(f"no API key mint_{prefix}")
    return key


def keys_for(actor: Actor) -> QuerySet:
    """Every key, newest first, for an admin."""
    authorize(actor, "key.manage")
    return ApiKey.objects.select_related("person", "adapter", "user").order_by("-created_at", "-pk")


def describe(key: ApiKey) -> dict:
    """A key's public facts (never its secret or hash), for the audit log and the API."""
    return {
        "prefix": key.prefix,
        "kind": "person" if key.is_person_key else "operator",
        "owner": key.owner,
        "allow_base": key.allow_base,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        **{field: getattr(key, field) for field in LIMIT_FIELDS},
    }


def _handle(key: ApiKey) -> str:
    return key.person.handle if key.person_id else ""


def _check_expiry(expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= timezone.now():
        raise Invalid("expires_at must be in the future")


def _checked_limits(limits: dict[str, int | None]) -> dict[str, int | None]:
    checked = {}
    for field, value in limits.items():
        if field not in LIMIT_FIELDS:
            raise Invalid(f"{field} is not a key limit; use {', '.join(LIMIT_FIELDS)}")
        whole = isinstance(value, int) and not isinstance(value, bool)
        if value is not None and not (whole and 0 <= value <= MAX_LIMIT):
            raise Invalid(
                f"{field} must be a whole number from 0 (no limit) to {MAX_LIMIT}, or null (the default)"
            )
        checked[field] = value
    return checked
