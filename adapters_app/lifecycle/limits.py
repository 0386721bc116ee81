"""Per-key limits: requests and tokens per minute, and concurrent streams, counted in Redis.

Every web process (on every host) counts in the same Redis, so a key's limit holds for the
deployment, not per process. Requests and tokens are counted in fixed one-minute windows
(a refusal's Retry-After is the time left in the window). A request reserves the most tokens
it may use (its `max_tokens` x `n`) before it reaches a worker, so a burst fired at once cannot
overshoot; when the answer is known the reservation is settled to what was really used,
prompt included. A stream holds a slot in a sorted set until it ends; a slot whose process
died without releasing it lapses after the longest a stream can run.

A key's own value wins; null takes the deployment's default (settings.MINT_KEY_*), and 0
means no limit. When Redis cannot be reached nothing is counted: inference needs Redis
anyway, and an outage of the counter must not turn into refusals.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

import redis
from django.conf import settings

from adapters_app.lifecycle.errors import Invalid, RateLimited
from adapters_app.lifecycle.inference import redis_client, stream_ttl
from adapters_app.models import ApiKey

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60
PREFIX = "mint:limit:"

# Take a stream slot unless the key already holds `limit` live ones: atomic, so two web
# processes cannot both take the last slot. Slots older than the longest stream lapse.
TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# Reserve tokens unless the window would pass its limit.
RESERVE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return -1 end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return used + tonumber(ARGV[1])
"""


def limit_of(key: ApiKey, name: str) -> int:
    """The key's limit `name` (0: none)."""
    own = getattr(key, name)
    return own if own is not None else getattr(settings, f"MINT_KEY_{name.upper()}")


def admit_request(key: ApiKey) -> None:
    """Count one request against the key's requests per minute; RateLimited past it."""
    limit = limit_of(key, "requests_per_minute")
    if not limit:
        return
    window, left = _window()
    name = f"{PREFIX}{key.prefix}:requests:{window}"
    try:
        pipe = redis_client().pipeline()
        pipe.incr(name)
        pipe.expire(name, 2 * WINDOW_SECONDS)
        count = pipe.execute()[0]
    except redis.RedisError:
        log.warning("rate limits unavailable: Redis unreachable", exc_info=True)
        return
    if count > limit:
        raise RateLimited(
            f"Rate limit reached for requests per minute: limit {limit}; try again in {left} s",
            retry_after=left,
            limit="requests",
        )


@dataclass
class Admission:
    """What one /v1 request holds: its token reservation and, for a stream, its slot.
    `finish` settles and releases once (the stream's end, a disconnect, an error)."""

    key_id: str  # the key's prefix: random, so no two keys ever share counters
    reserved: int = 0
    window: int = 0
    slot: str = ""
    finished: bool = field(default=False, repr=False)

    def finish(self, used_tokens: int | None = None) -> None:
        """Settle the reservation to `used_tokens` (None: keep it) and give the slot back."""
        if self.finished:
            return
        self.finished = True
        try:
            pipe = redis_client().pipeline(transaction=False)
            if self.reserved and used_tokens is not None and used_tokens != self.reserved:
                pipe.incrby(_tokens_name(self.key_id, self.window), used_tokens - self.reserved)
            if self.slot:
                pipe.zrem(_streams_name(self.key_id), self.slot)
            pipe.execute()
        except redis.RedisError:
            log.warning("could not settle a key's limits: Redis unreachable", exc_info=True)


def admit_generation(key: ApiKey, *, max_tokens: int, n: int, stream: bool) -> Admission:
    """Reserve `max_tokens` x `n` of the key's tokens per minute and, for a stream, one of its
    concurrent streams; RateLimited when either is used up, Invalid when the request alone
    asks more tokens than a minute allows."""
    admission = Admission(key.prefix)
    tokens = limit_of(key, "tokens_per_minute")
    requested = max_tokens * n
    if tokens and requested > tokens:
        raise Invalid(
            f"max_tokens x n ({requested}) exceeds this key's tokens_per_minute ({tokens})",
            details={"max_tokens": f"at most {tokens // n} with n={n} for this key"},
        )
    try:
        client = redis_client()
        if tokens:
            window, left = _window()
            name = _tokens_name(key.prefix, window)
            if client.eval(RESERVE, 1, name, requested, tokens, 2 * WINDOW_SECONDS) < 0:
                raise RateLimited(
                    f"Rate limit reached for tokens per minute: limit {tokens}, requested "
                    f"{requested}; try again in {left} s",
                    retry_after=left,
                    limit="tokens",
                )
            admission.reserved, admission.window = requested, window
        streams = limit_of(key, "concurrent_streams") if stream else 0
        if streams:
            slot = uuid.uuid4().hex
            ttl = stream_ttl()
            if not client.eval(TAKE_SLOT, 1, _streams_name(key.prefix), time.time(), streams, ttl, slot):
                admission.finish(0)  # give back the tokens just reserved
                raise RateLimited(
                    f"Too many concurrent streams for this key: limit {streams}; try again when one ends",
                    retry_after=1,
                    limit="streams",
                )
            admission.slot = slot
    except redis.RedisError:
        log.warning("rate limits unavailable: Redis unreachable", exc_info=True)
    return admission


def _window() -> tuple[int, int]:
    """The current window's number and the whole seconds left in it."""
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    return window, max(1, int((window + 1) * WINDOW_SECONDS - now + 0.999))


def _tokens_name(key_id: str, window: int) -> str:
    return f"{PREFIX}{key_id}:tokens:{window}"


def _streams_name(key_id: str) -> str:
    return f"{PREFIX}{key_id}:streams"
