import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

PREFIX_LEN = 8


def hash_key(raw: str) -> str:
    # Keys carry 256 bits of randomness, so a plain sha256 is enough; a slow
    # password hash would only add latency to every API call.
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiKey(models.Model):
    """A Bearer key for the APIs; only its hash is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=PREFIX_LEN, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"mint_{self.prefix}_… ({self.user})"

    @classmethod
    def issue(cls, user, name: str = "") -> tuple["ApiKey", str]:
        """Create a key; the raw secret is returned once and never stored."""
        prefix = secrets.token_hex(PREFIX_LEN // 2)
        raw = f"mint_{prefix}_{secrets.token_urlsafe(32)}"
        return cls.objects.create(user=user, name=name, prefix=prefix, key_hash=hash_key(raw)), raw

    @classmethod
    def authenticate(cls, raw: str):
        key = (
            cls.objects.select_related("user")
            .filter(key_hash=hash_key(raw), revoked_at=None, user__is_active=True)
            .first()
        )
        if key is None:
            return None
        cls.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
        return key.user
