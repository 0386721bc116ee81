"""Where an inference request goes: residency-aware routing over the worker fleet.

Each worker consumes, besides the fleet's shared queue, a queue of its own
(`worker_queue(name)`). A request for a revision goes to a healthy worker whose
batched server already holds it in memory (affinity: no load at all), the least
loaded of them when several do; else to one that has it on its local disk (a
load without a trip to the store); otherwise to the least loaded healthy worker,
which cold-loads it. With no healthy worker known the shared queue takes it, so a
fleet that has not reported yet still serves. Only the batched server's holdings
count: an adapter the one-at-a-time runtime loaded for an evaluation is not where
requests are answered. The exception is a revision the bank refused (DoRA, a rank
above MINT_SERVING_MAX_RANK, …): the worker that served it through its runtime says
so (`note_served_one_at_a_time`), and from then on the runtime's holdings are where
that revision is resident.

"Healthy" and "holds" come from the rows workers keep (`Worker`, `ResidentAdapter`):
a worker is a candidate only if it also consumes this fleet's shared queue (or its
serving queue, which a serving-only worker consumes instead: it takes no jobs), so two
deployments (or two test sessions) sharing one database never route to each other.
Load is the number of requests routed to a worker and not yet answered, counted in
the shared cache (Redis), so every web process sees the same numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

from adapters_app.lifecycle import liveness
from adapters_app.models import ResidentAdapter, Worker

log = logging.getLogger(__name__)

WORKER_QUEUE_PREFIX = "mint.worker."
# A counter left behind by a web process killed mid-request expires by itself once no
# request has begun or ended on that worker for this long; every change renews it.
LOAD_TTL_SECONDS = 600
# Renewed by every request the runtime answers; a revision nobody asks for is forgotten.
ONE_AT_A_TIME_TTL_SECONDS = 24 * 3600


def serving_queue() -> str:
    """The queue a serving-only worker consumes instead of the shared one: it is part of
    this fleet for routing, but takes no training or evaluation jobs."""
    return f"{settings.CELERY_TASK_DEFAULT_QUEUE}.serve"


def worker_queue(worker_name: str) -> str:
    """The queue only this worker consumes (Celery node names are unique in a fleet)."""
    return f"{WORKER_QUEUE_PREFIX}{worker_name}"


@dataclass(frozen=True, slots=True)
class Route:
    queue: str
    worker: str | None  # None: the shared queue, any worker
    reason: str  # "resident" (in memory), "disk" (on its local disk), "cold" or "shared"


def route(sha256: str) -> Route:
    """The queue for a request needing `sha256` (a revision's, or the base's digest for
    a bare-base request)."""
    shared = settings.CELERY_TASK_DEFAULT_QUEUE
    fleet = {shared, serving_queue()}
    candidates = [
        worker
        for worker in Worker.objects.with_health(Worker.HEALTHY).only("name", "queues")
        if fleet & set(worker.queues) and worker_queue(worker.name) in worker.queues
    ]
    names = [worker.name for worker in candidates]
    one_at_a_time, loads, leased = route_figures(sha256, names, leases=True)
    # A worker killed outright keeps a healthy row for three missed beats; its lease lapses
    # in seconds (liveness.py). Believed only when some lease is there: a Redis restart
    # loses them all for a moment.
    if leased:
        names = [name for name in names if name in leased]
    if not names:
        return Route(shared, None, "shared")
    holders = [ResidentAdapter.SERVING]
    if one_at_a_time:
        holders.append(ResidentAdapter.RUNTIME)
    held = ResidentAdapter.objects.filter(
        worker__name__in=names, sha256=sha256, holder__in=holders
    ).values_list("worker__name", "tier")
    in_memory = {name for name, tier in held if tier in ResidentAdapter.MEMORY_TIERS}
    on_disk = {name for name, tier in held if tier == ResidentAdapter.DISK}
    chosen, reason = choose(names, in_memory, on_disk, loads)
    return Route(worker_queue(chosen), chosen, reason)


def choose(
    names: Sequence[str], in_memory: AbstractSet[str], on_disk: AbstractSet[str], loads: Mapping[str, int]
) -> tuple[str, str]:
    """The decision itself, from figures already read: the worker for a request among the
    candidates `names` (not empty), given which of them hold the revision in memory and
    which on their local disk, and each one's requests in flight. Returns the worker and
    the reason ("resident", "disk" or "cold"). Pure, so the fleet simulation
    (adapters_app/fleet_sim/) runs this very decision over a simulated fleet."""
    pool, reason = names, "cold"
    if in_memory:
        pool, reason = [name for name in names if name in in_memory], "resident"
    elif on_disk:
        pool, reason = [name for name in names if name in on_disk], "disk"
    # Least loaded first; the name breaks ties so the choice is stable.
    chosen = min(pool, key=lambda name: (loads.get(name, 0), name))
    return chosen, reason


def _one_at_a_time_key(sha256: str) -> str:
    return f"route-one-at-a-time:{sha256}"


def note_served_one_at_a_time(sha256: str) -> None:
    """A worker's batched bank refused this revision and its runtime answered instead.
    Keyed by content: the same bytes are refused for the same reason everywhere."""
    try:
        cache.set(_one_at_a_time_key(sha256), 1, timeout=ONE_AT_A_TIME_TTL_SECONDS)
    except Exception:  # the cache is down: routing loses affinity for it, serving goes on
        log.warning("could not note a revision served one at a time", exc_info=True)


def served_one_at_a_time(sha256: str) -> bool:
    return route_figures(sha256, [])[0]


def _load_key(worker_name: str) -> str:
    return f"route-load:{worker_name}"


def current_loads(worker_names: list[str]) -> dict[str, int]:
    return route_figures(None, worker_names)[1]


def route_figures(
    sha256: str | None, worker_names: list[str], *, leases: bool = False
) -> tuple[bool, dict[str, int], set[str]]:
    """What routing reads from the shared cache for one request, in one round trip: was
    `sha256` served one at a time, how many requests each worker has in flight, and (with
    `leases`) which of the workers hold a live lease."""
    one_key = _one_at_a_time_key(sha256) if sha256 else None
    load_keys = {name: _load_key(name) for name in worker_names}
    lease_keys = {name: liveness.alive_key(name) for name in worker_names} if leases else {}
    keys = [*load_keys.values(), *lease_keys.values(), *([one_key] if one_key else [])]
    if not keys:
        return False, {}, set()
    try:
        found = cache.get_many(keys)
    except Exception:  # the cache is down: route without load or notes, never fail the request
        log.warning("routing without load figures or one-at-a-time notes: cache unreachable", exc_info=True)
        return False, {}, set()
    one_at_a_time = bool(found.get(one_key)) if one_key else False
    leased = {name for name, key in lease_keys.items() if key in found}
    return one_at_a_time, {name: int(found.get(key, 0)) for name, key in load_keys.items()}, leased


# Each change is one Lua script, so it is atomic in Redis and renews the expiry with the
# count. Setting the expiry only when the key was created let it lapse every
# LOAD_TTL_SECONDS under steady traffic; the in-flight requests' DECRs then drove the
# new counter below zero, and `min(loads)` sent every request to that worker.
_BEGIN = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return n
"""
# A counter that expired while the request was in flight is not created again by its
# end, nor taken below zero: at worst a worker's load reads low until its requests end.
_END = """
local n = tonumber(redis.call('GET', KEYS[1]))
if not n then return 0 end
if n <= 1 then
  redis.call('DEL', KEYS[1])
  return 0
end
n = redis.call('DECR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return n
"""


def _change_load(script: str, name: str) -> None:
    # The cache's own client and key, so `route_figures` reads the counter with get_many
    # (the cache stores an int as its decimal digits, as INCR leaves it).
    key = cache.make_and_validate_key(name)
    client = cache._cache.get_client(key, write=True)
    client.eval(script, 1, key, LOAD_TTL_SECONDS)


class Dispatched:
    """Counts a request against its worker's load while it is in flight:
    `with Dispatched(route): …send and wait…`, or `begin()` … `end()` for a stream
    that outlives the call that started it. `end()` counts once, however often called."""

    def __init__(self, chosen: Route):
        self.key = _load_key(chosen.worker) if chosen.worker else None

    def begin(self) -> Dispatched:
        if self.key:
            try:
                _change_load(_BEGIN, self.key)
            except Exception:
                log.warning("could not count a routed request", exc_info=True)
                self.key = None
        return self

    def end(self) -> None:
        key, self.key = self.key, None
        if key:
            try:
                _change_load(_END, key)
            except Exception:  # the cache is down
                log.warning("could not uncount a routed request", exc_info=True)

    def __enter__(self) -> Dispatched:
        return self.begin()

    def __exit__(self, *exc) -> None:
        self.end()
