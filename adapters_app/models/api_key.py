import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

PREFIX_LEN = 8


def hash_key(raw: str) -> str:
    # Keys carry 256 bits of randomness, so a plain sha256 is enough; a slow
    # password hash would only add latency to every API call.
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiKey(models.Model):
    """A Bearer key for the APIs; only its hash is stored.

    An operator key belongs to a console account and acts with its role. A person key
    belongs to one person (optionally one of their adapters): it is what an application
    serving that person holds, and it may only ask that person's adapters on /v1
    (adapters_app.lifecycle.keys.KeyScope says exactly what it may reach)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="api_keys"
    )
    # Erasing the person deletes their keys with them.
    person = models.ForeignKey(
        "adapters_app.Person", null=True, blank=True, on_delete=models.CASCADE, related_name="api_keys"
    )
    adapter = models.ForeignKey(
        "adapters_app.Adapter", null=True, blank=True, on_delete=models.CASCADE, related_name="api_keys"
    )
    allow_base = models.BooleanField(
        default=False, help_text="A person key may also ask the bare base models (never other adapters)"
    )
    issued_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=PREFIX_LEN, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Per-key limits (adapters_app.lifecycle.limits); null takes the deployment's default,
    # 0 means no limit.
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    concurrent_streams = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            # Exactly one owner: an account (operator key) or a person (person key).
            models.CheckConstraint(
                condition=Q(user__isnull=False, person__isnull=True)
                | Q(user__isnull=True, person__isnull=False),
                name="api_key_one_owner",
            ),
            models.CheckConstraint(
                condition=Q(adapter__isnull=True) | Q(person__isnull=False),
                name="api_key_adapter_needs_person",
            ),
        ]

    def __str__(self) -> str:
        return f"mint_{self.prefix}_… ({self.owner})"

    @property
    def owner(self) -> str:
        if self.person_id is None:
            return str(self.user)
        return f"{self.person}/{self.adapter.name}" if self.adapter_id else str(self.person)

    @property
    def is_person_key(self) -> bool:
        return self.person_id is not None

    def state(self, now=None) -> str:
        """ "active", "revoked" or "expired"."""
        now = now or timezone.now()
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    @classmethod
    def issue(cls, user=None, name: str = "", **scope) -> tuple["ApiKey", str]:
        """Create a key; the raw secret is returned once and never stored. `scope` holds a
        person key's person, adapter, allow_base, issued_by, expiry and limits."""
        prefix = secrets.token_hex(PREFIX_LEN // 2)
        raw = f"mint_{prefix}_{secrets.token_urlsafe(32)}"
        key = cls.objects.create(user=user, name=name, prefix=prefix, key_hash=hash_key(raw), **scope)
        return key, raw

    @classmethod
    def find(cls, raw: str):
        """The key whose secret is `raw`, whatever its state, or None."""
        return cls.objects.select_related("user", "person", "adapter").filter(key_hash=hash_key(raw)).first()
