"""Offline replay of the fast (device) tier: our eviction policy beside plain LRU and the
offline optimum (Belady's MIN), on the same request trace.

The model is the device tier's: a fixed number of slots of one adapter each, and the
requested adapter must be in a slot to be served (demand paging: no policy may serve
a request without caching it, Belady included, so MIN is the true ceiling here).
`simulate` drives the very policy classes `workers.engine.residency` uses, so the number
it gives for "ours" is what a `ResidencyManager` with that many device slots would do.

Warm-up convention: every request counts, from the first one, for every policy. The
first request for each adapter is a miss that no policy can avoid (a compulsory miss),
so it lowers all three rates alike and Belady's stays the ceiling for the trace as
given. With 200,000 requests over 10,000 adapters that is under 5% of requests.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from itertools import accumulate

from workers.engine.residency import DEFAULT_POLICY, EvictionPolicy, LRUPolicy

POLICIES = {"lru": LRUPolicy, "ours": DEFAULT_POLICY}


@dataclass(frozen=True, slots=True)
class ReplayResult:
    policy: str  # "belady", "lru" or "ours"
    hit_rate: float
    hits: int
    requests: int


def zipf_trace(adapters: int, requests: int, alpha: float = 1.0, seed: int = 0) -> list[int]:
    """`requests` adapter ids drawn independently with P(id k) ∝ 1/(k+1)^alpha: id 0 is
    the most popular. Inverse CDF: a bisection over the cumulative weights per draw."""
    if adapters < 1 or requests < 0:
        raise ValueError("a trace needs at least one adapter and no negative number of requests")
    cumulative = list(accumulate(rank**-alpha for rank in range(1, adapters + 1)))
    return random.Random(seed).choices(range(adapters), cum_weights=cumulative, k=requests)


def simulate(trace: Sequence[Hashable], slots: int, policy: str | EvictionPolicy = "ours") -> ReplayResult:
    """Replay `trace` through `slots` slots evicted by `policy` ("lru", "ours" or an instance)."""
    name, chooser = (policy, POLICIES[policy]()) if isinstance(policy, str) else (policy.name, policy)
    _check_slots(slots)
    resident: set = set()
    hits = 0
    for key in trace:
        chooser.record(key)
        if key in resident:
            hits += 1
            continue
        if len(resident) >= slots:
            victim = chooser.victim()
            chooser.remove(victim)
            resident.discard(victim)
        resident.add(key)
        chooser.insert(key)
    return _result(name, hits, len(trace))


def belady_hits(trace: Sequence[Hashable], slots: int) -> int:
    """Hits of the offline optimum: on a miss with every slot taken, evict the resident
    key whose next request is farthest away (never again counts as farthest).

    O(n log n): next-use positions come from one backward pass, and a max-heap on next
    use holds the residents, with stale entries (a key since requested again, or gone)
    skipped when they surface."""
    _check_slots(slots)
    n = len(trace)
    next_use = [0] * n
    seen: dict = {}
    for i in range(n - 1, -1, -1):
        # A key never requested again gets n + i: farther than any real position, and
        # distinct, so the choice never depends on comparing keys.
        next_use[i] = seen.get(trace[i], n + i)
        seen[trace[i]] = i
    resident: dict = {}  # key -> its next use
    heap: list[tuple[int, Hashable]] = []  # (-next use, key)
    hits = 0
    for i, key in enumerate(trace):
        if key in resident:
            hits += 1
        elif len(resident) >= slots:
            while True:
                farthest, victim = heapq.heappop(heap)
                if resident.get(victim) == -farthest:
                    del resident[victim]
                    break
        resident[key] = next_use[i]
        heapq.heappush(heap, (-next_use[i], key))
    return hits


def belady_hit_rate(trace: Sequence[Hashable], slots: int) -> float:
    return belady_hits(trace, slots) / len(trace) if trace else 0.0


def zipf_replay(
    adapters: int = 10_000, slots: int = 256, requests: int = 200_000, alpha: float = 1.0, seed: int = 0
) -> list[ReplayResult]:
    """One Zipf(`alpha`) trace replayed through `slots` slots: Belady, LRU, ours."""
    trace = zipf_trace(adapters, requests, alpha, seed)
    return [
        _result("belady", belady_hits(trace, slots), len(trace)),
        simulate(trace, slots, "lru"),
        simulate(trace, slots, "ours"),
    ]


def _result(policy: str, hits: int, requests: int) -> ReplayResult:
    return ReplayResult(policy, hits / requests if requests else 0.0, hits, requests)


def _check_slots(slots: int) -> None:
    if slots < 1:
        raise ValueError("the tier needs at least one slot")


if __name__ == "__main__":
    print(f"{'policy':<8} {'hit rate':>8} {'hits':>8} {'requests':>9}")
    for result in zipf_replay():
        print(f"{result.policy:<8} {result.hit_rate:>8.4f} {result.hits:>8} {result.requests:>9}")
