"""Signing in, with failed attempts throttled per account and per client address.

After too many failures in one window, further attempts are refused without the
password even being checked (so guessing gains nothing) until the window ends.
Counters live in the shared cache (Redis), so every web process sees them.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.http import HttpResponse

log = logging.getLogger(__name__)


def _key(kind: str, value: str) -> str:
    # Hashed: usernames and addresses are not kept in the cache as they were typed.
    return f"login-failures:{kind}:{hashlib.sha256(value.encode()).hexdigest()[:32]}"


def _subjects(request) -> list[tuple[str, int]]:
    """(cache key, limit) for the account named in the form and the client address."""
    username = request.POST.get("username", "").strip().lower()
    # REMOTE_ADDR: behind a reverse proxy, configure it to pass the client's address.
    address = request.META.get("REMOTE_ADDR", "")
    return [
        (_key("account", username), settings.MINT_LOGIN_FAILURES_PER_ACCOUNT),
        (_key("address", address), settings.MINT_LOGIN_FAILURES_PER_ADDRESS),
    ]


def seconds_locked(request) -> int:
    """How long this sign-in must wait; 0 when it may proceed."""
    try:
        counted = cache.get_many([key for key, _ in _subjects(request)])
    except Exception:  # the cache is down: count nothing rather than lock everyone out
        log.warning("login throttle unavailable: cache unreachable", exc_info=True)
        return 0
    waits = []
    for key, limit in _subjects(request):
        failures, window_ends = counted.get(key, (0, 0.0))
        if failures >= limit:
            waits.append(window_ends - time.time())
    return max(0, math.ceil(max(waits))) if waits else 0


def record_failure(request) -> None:
    window = settings.MINT_LOGIN_WINDOW_SECONDS
    try:
        for key, _ in _subjects(request):
            failures, window_ends = cache.get(key, (0, 0.0))
            if window_ends <= time.time():
                failures, window_ends = 0, time.time() + window
            cache.set(key, (failures + 1, window_ends), timeout=max(1, math.ceil(window_ends - time.time())))
    except Exception:
        log.warning("login throttle unavailable: cache unreachable", exc_info=True)


def forget_failures(request) -> None:
    """A successful sign-in clears its account's count (not the address's: one valid
    account must not reset guessing at others from the same address)."""
    try:
        cache.delete(_subjects(request)[0][0])
    except Exception:
        log.warning("login throttle unavailable: cache unreachable", exc_info=True)


class ThrottledLoginView(auth_views.LoginView):
    def post(self, request, *args, **kwargs) -> HttpResponse:
        wait = seconds_locked(request)
        if wait:
            log.warning("sign-in refused: too many failures (account or address), %ss left", wait)
            form = self.get_form_class()(request, data=None)
            context = self.get_context_data(form=form, locked_minutes=math.ceil(wait / 60))
            return self.render_to_response(context, status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form):
        record_failure(self.request)
        return super().form_invalid(form)

    def form_valid(self, form):
        forget_failures(self.request)
        return super().form_valid(form)
