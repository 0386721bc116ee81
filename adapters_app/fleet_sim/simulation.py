"""One simulated day over one fleet, and what it reports.

Per request, in time order: the requests that have finished by then leave their
workers' load counts; the fleet routes it (`routing.choose`, or a random worker); the
chosen worker's `ResidencyManager.get` brings the revision onto its GPU from wherever it
is (`tier_of` just before says where that was); and the request is charged what that
load adds:

  device (GPU memory)  nothing
  cpu tier             the copy to the GPU
  local disk, store    the load itself (cold_loads.py), on the worker's one loader:
                       a load waits for the loads before it on that worker to finish
                       (the serving engine stages on one loader thread), then the copy

A request then stays in flight for `service_seconds` after its load (it is generating),
which is what the least-loaded choice sees. Loads of one revision that overlap are not
merged (a second request for an adapter being loaded waits for its own load): cold
loads are counted per request that found its adapter off the GPU.

A cold load is one from the local disk or the store; store egress is one payload per
load from the store. The first `warmup` of the day fills empty caches and is not
counted; rates are over the rest.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from adapters_app.fleet_sim.cold_loads import DEFAULT_BASE, MEASURED, ColdLoadTimes
from adapters_app.fleet_sim.fleet import AFFINITY, RANDOM, Fleet
from adapters_app.fleet_sim.trace import DriftingZipf
from workers.engine.residency import CPU, DEVICE, DISK, STORE, AgedLFUPolicy, EvictionPolicy, LRUPolicy

TIERS = (DEVICE, CPU, DISK, STORE)


@dataclass(frozen=True, slots=True)
class Policy:
    """What is compared: a routing and an eviction policy (residency.py's classes)."""

    name: str
    routing: str
    eviction: Callable[[], EvictionPolicy]


POLICIES = (
    Policy("MinT (routing.py + LFU-aging)", AFFINITY, AgedLFUPolicy),
    Policy("routing.py + plain LRU", AFFINITY, LRUPolicy),
    Policy("random routing + LFU-aging", RANDOM, AgedLFUPolicy),
)


@dataclass(frozen=True, slots=True)
class FleetSpec:
    adapters: int = 1_000_000
    workers: int = 64
    gpu_slots: int = 128  # adapters a worker's GPU bank holds
    cpu_slots: int = 1024  # parked in host memory
    disk_slots: int = 8192  # local files
    zipf: float = 1.0
    requests: int = 2_000_000
    seconds: float = 86_400.0  # one simulated day
    popular: int = 10_000  # the top ranks that drift
    drift: float = 0.5  # share of the popular set replaced over the day
    retrain_fraction: float = 0.05  # of all adapters, retrained over the day
    service_seconds: float = 2.0  # a request in flight after its load
    warmup: float = 0.1  # of the day, not counted
    seed: int = 0
    cold_loads: ColdLoadTimes = MEASURED[DEFAULT_BASE]

    def with_(self, **changes) -> FleetSpec:
        return FleetSpec(**{**{name: getattr(self, name) for name in self.__slots__}, **changes})


@dataclass(slots=True)
class FleetResult:
    policy: str
    spec: FleetSpec
    served: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    counted_seconds: float = 0.0
    added_p99_ms: float = 0.0  # over every counted request (most add nothing)
    loaded_p99_ms: float = 0.0  # over requests that found their adapter off the GPU
    per_worker: list[int] = field(default_factory=list)
    retrains: int = 0
    wall_seconds: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.served.values())

    def share(self, tier: str) -> float:
        return self.served[tier] / self.requests if self.requests else 0.0

    @property
    def cold_loads_per_s(self) -> float:
        return (self.served[DISK] + self.served[STORE]) / self.counted_seconds

    @property
    def store_egress_bytes_per_s(self) -> float:
        return self.served[STORE] * self.spec.cold_loads.payload_bytes / self.counted_seconds

    @property
    def busiest_worker(self) -> float:
        """The busiest worker's requests over the mean's: 1.0 is an even spread."""
        return max(self.per_worker) * len(self.per_worker) / sum(self.per_worker) if self.per_worker else 0.0

    @property
    def idle_workers(self) -> int:
        """Workers that served under a tenth of the mean: capacity routing left unused."""
        mean = sum(self.per_worker) / len(self.per_worker) if self.per_worker else 0
        return sum(1 for n in self.per_worker if n < mean / 10)

    def as_dict(self) -> dict:
        spec = asdict(self.spec)
        return {
            "policy": self.policy,
            "spec": spec,
            "requests": self.requests,
            "served": self.served,
            "hit_rate": {tier: self.share(tier) for tier in TIERS},
            "cold_loads_per_s": self.cold_loads_per_s,
            "added_p99_ms": self.added_p99_ms,
            "loaded_p99_ms": self.loaded_p99_ms,
            "store_egress_bytes_per_s": self.store_egress_bytes_per_s,
            "busiest_worker_over_mean": self.busiest_worker,
            "idle_workers": self.idle_workers,
            "requests_per_worker": self.per_worker,
            "retrains": self.retrains,
            "wall_seconds": self.wall_seconds,
        }


def simulate(spec: FleetSpec, policy: Policy) -> FleetResult:
    """Run one day of `spec`'s trace through a fleet under `policy`. The trace depends on
    the spec and its seed only, so every policy sees the same requests."""
    started = time.perf_counter()
    trace = DriftingZipf(
        adapters=spec.adapters,
        requests=spec.requests,
        seconds=spec.seconds,
        zipf=spec.zipf,
        popular=spec.popular,
        drift=spec.drift,
        retrain_fraction=spec.retrain_fraction,
        seed=spec.seed,
    )
    fleet = Fleet(
        workers=spec.workers,
        gpu_slots=spec.gpu_slots,
        cpu_slots=spec.cpu_slots,
        disk_slots=spec.disk_slots,
        policy=policy.eviction,
        routing=policy.routing,
        seed=spec.seed + 1,
    )
    loads = spec.cold_loads.sampler(spec.seed + 2)
    result = FleetResult(policy.name, spec)
    try:
        _run(spec, trace, fleet, loads, result)
    finally:
        fleet.close()
    result.retrains = trace.counts.retrains
    result.wall_seconds = time.perf_counter() - started
    return result


def _run(spec: FleetSpec, trace: DriftingZipf, fleet: Fleet, loads, result: FleetResult) -> None:
    managers, counts = fleet.managers, fleet.loads
    served = result.served
    per_worker = dict.fromkeys(fleet.names, 0)
    loader_free = dict.fromkeys(fleet.names, 0.0)  # when each worker's loader is next idle
    in_flight: list[tuple[float, str]] = []  # (finishes at, worker)
    added: list[float] = []  # seconds added, for counted requests that found the adapter off the GPU
    counted_from = spec.warmup * spec.seconds
    service = spec.service_seconds
    to_gpu = loads.host_to_gpu()
    for at, sha in trace.requests():
        while in_flight and in_flight[0][0] <= at:
            counts[heapq.heappop(in_flight)[1]] -= 1
        name, _ = fleet.route(sha)
        manager = managers[name]
        tier = manager.tier_of(sha)
        manager.get(sha)
        if tier == DEVICE:
            extra = 0.0
        elif tier == CPU:
            extra = to_gpu
        else:
            begins = max(at, loader_free[name])
            loader_free[name] = done = begins + (loads.local() if tier == DISK else loads.from_store())
            extra = done - at + to_gpu
        counts[name] += 1
        heapq.heappush(in_flight, (at + extra + service, name))
        if at >= counted_from:
            served[tier] += 1
            per_worker[name] += 1
            if extra:
                added.append(extra)
    result.counted_seconds = spec.seconds - counted_from
    result.per_worker = list(per_worker.values())
    result.added_p99_ms = _p99_with_zeros(added, result.requests) * 1000
    result.loaded_p99_ms = _p99_with_zeros(added, len(added)) * 1000


def _p99_with_zeros(nonzero: list[float], total: int) -> float:
    """Nearest-rank p99 of `total` values: `nonzero` and as many zeros as make up the rest."""
    if not total:
        return 0.0
    rank = max(1, math.ceil(total * 0.99))
    zeros = total - len(nonzero)
    if rank <= zeros:
        return 0.0
    nonzero.sort()
    return nonzero[rank - zeros - 1]


def simulate_policies(spec: FleetSpec, policies=POLICIES) -> list[FleetResult]:
    return [simulate(spec, policy) for policy in policies]
