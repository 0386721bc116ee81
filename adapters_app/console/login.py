"""Signing in, with failed attempts throttled per account and per client address.

Every attempt is counted before its password is checked; after too many in one window,
further attempts are refused without the password even being checked (so guessing
gains nothing) until the window ends. A successful sign-in clears its account's count.
Counters live in the shared cache (Redis), so every web process sees them.
"""

from __future__ import annotations

import hashlib
import logging
import math

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.http import HttpResponse

log = logging.getLogger(__name__)


def _key(kind: str, value: str) -> str:
    # Hashed: usernames and addresses are not kept in the cache as they were typed.
    # ("attempts", not the old "failures" keys, which held a pickled (count, window end).)
    return f"login-attempts:{kind}:{hashlib.sha256(value.encode()).hexdigest()[:32]}"


def _subjects(request) -> list[tuple[str, int]]:
    """(cache key, limit) for the account named in the form and the client address."""
    username = request.POST.get("username", "").strip().lower()
    # REMOTE_ADDR: behind a reverse proxy, configure it to pass the client's address.
    address = request.META.get("REMOTE_ADDR", "")
    return [
        (_key("account", username), settings.MINT_LOGIN_FAILURES_PER_ACCOUNT),
        (_key("address", address), settings.MINT_LOGIN_FAILURES_PER_ADDRESS),
    ]


# Counting an attempt before its password is checked, and checking the lock in the same
# atomic step (one Lua script: Redis runs it whole), is what stops parallel guesses: a
# lock check before the hash, then a read-then-write of the count after it, let 50
# parallel guesses all be checked and counted as a handful. Each key is the INCR-then-
# EXPIRE-on-creation counter of a fixed window that starts at the first attempt.
# Not django-axes: it would add a dependency, an authentication backend and a table of
# attempts to do what these few lines do in the Redis every web process already shares.
_CLAIM = """
local wait = 0
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key)) or 0
  if count >= tonumber(ARGV[i]) then
    local ttl = redis.call('TTL', key)
    if ttl < 0 then ttl = tonumber(ARGV[#ARGV]) end
    wait = math.max(wait, ttl)
  end
end
if wait > 0 then return wait end
for _, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then redis.call('EXPIRE', key, ARGV[#ARGV]) end
end
return 0
"""
# A successful sign-in gives its address's attempt back (it was no failure); never below zero.
_GIVE_BACK = """
local count = tonumber(redis.call('GET', KEYS[1]))
if count and count > 1 then return redis.call('DECR', KEYS[1]) end
redis.call('DEL', KEYS[1])
return 0
"""


def _eval(script: str, names: list[str], *args) -> int:
    keys = [cache.make_and_validate_key(name) for name in names]
    # The cache's own client: the keys live where `cache.delete` finds them.
    return cache._cache.get_client(keys[0], write=True).eval(script, len(keys), *keys, *args)


def claim_attempt(request) -> int:
    """Count this sign-in against its account and address, unless either is locked.
    Returns how many seconds it must wait (the password is not checked), or 0."""
    subjects = _subjects(request)
    limits = [limit for _, limit in subjects]
    try:
        return int(_eval(_CLAIM, [key for key, _ in subjects], *limits, settings.MINT_LOGIN_WINDOW_SECONDS))
    except Exception:  # the cache is down: count nothing rather than lock everyone out
        log.warning("login throttle unavailable: cache unreachable", exc_info=True)
        return 0


def forget_failures(request) -> None:
    """A successful sign-in clears its account's count, and gives back the one attempt
    it claimed from its address (only that: one valid account must not reset guessing at
    others from the same address)."""
    (account, _), (address, _) = _subjects(request)
    try:
        cache.delete(account)
        _eval(_GIVE_BACK, [address])
    except Exception:
        log.warning("login throttle unavailable: cache unreachable", exc_info=True)


class ThrottledLoginView(auth_views.LoginView):
    def post(self, request, *args, **kwargs) -> HttpResponse:
        wait = claim_attempt(request)
        if wait:
            log.warning("sign-in refused: too many failures (account or address), %ss left", wait)
            form = self.get_form_class()(request, data=None)
            context = self.get_context_data(form=form, locked_minutes=math.ceil(wait / 60))
            return self.render_to_response(context, status=429)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form):
        forget_failures(self.request)
        return super().form_valid(form)
