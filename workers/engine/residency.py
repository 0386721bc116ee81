"""Tiered residency on one worker: which adapter revisions sit where, and what moves next.

Tiers, fast to slow:

``device``  ready for the engine on the compute device. On a GPU worker that is GPU
            memory (its `memory` is "gpu"). On a CPU worker it is host memory too (its
            `memory` is "cpu"): adapters in the layout the engine computes with (the
            batched LoRA bank's slots). The device and cpu tiers are then two separate
            budgets of the same host memory, and what adapters take there is their sum.
``cpu``     parsed into host memory, parked: one copy away from the device.
``disk``    verified payload bytes in a local cache folder (a content-addressed store
            of its own), so a cold load does not go back to the shared store.
``store``   the shared `AdapterStore`; never evicted from here, no budget.

Every tier but the store has a budget in bytes (the device tier may also cap its
entries: a bank has a fixed number of slots). Everything is keyed by the revision's
sha256, never by an adapter's name: two revisions of one adapter are two entries, and
a re-trained adapter can never be served from a stale copy.

The memory tiers are exclusive: an adapter is on the device or in the cpu tier, not
both. `get` promotes it to the device (store → disk → cpu → device), and a device
eviction demotes the victim to the cpu tier, whose own evictions just drop the host
copy. The disk tier is inclusive: the local file is written when the bytes first come
from the store and stays until the disk tier evicts it (deleting the file), whatever
the memory tiers do, so a cpu eviction "demotes to disk" by dropping the copy; if the
disk tier has deleted the file meanwhile, the adapter is back to the store only.

Loads verify the bytes: the store's `get` checks the sha256, and so does a read from the
disk cache; a local file whose bytes no longer hash to its name is deleted and the
adapter is fetched from the store again. Pinned adapters are never evicted from their
tier (nor lower: a pin also keeps the local file). A prefetch loads without counting as
a request in the hit/miss statistics. `forget` is erasure's: the adapter leaves every
tier at once, pin and local file included, nothing demoted.

How an adapter becomes a host object and a device object is injected (`Transfers`), so
the engine's batched LoRA bank can plug in; `BYTES` (payload bytes as they are) and
`tensor_transfers()` (the unpacked `AdapterPayload`, its tensors moved to the device)
are the plain defaults. One lock guards the manager's books. `stage` does a cold load's
slow part (the disk or store read, its sha256, parsing) outside that lock, so a request
for an adapter already in memory never waits behind someone else's cold load: the
batched server stages on a loader thread and admits only what is in memory, and the
console's prefetch and pin stage first. `get` on an adapter that is not staged still
does the whole load under the lock.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Container, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from workers.engine.store import SHA256_RE, AdapterStore, BlobCorrupted, BlobNotFound

log = logging.getLogger(__name__)

DEVICE, CPU, DISK, STORE = "device", "cpu", "disk", "store"
TIERS = (DEVICE, CPU, DISK, STORE)
CACHED_TIERS = (DEVICE, CPU, DISK)

LATENCY_SAMPLES = 1024  # the newest cold loads kept per source for p50/p95


class ResidencyError(RuntimeError):
    pass


# --- eviction policies ------------------------------------------------------------------
class EvictionPolicy(Protocol):
    """Chooses which resident key a tier evicts. Keys are revision sha256s (or any
    hashable, in the simulator). A tier calls `record` for every request (resident or
    not), `insert`/`remove` as keys come and go, and `victim` when it needs room."""

    name: str

    def record(self, key: Hashable) -> None: ...

    def insert(self, key: Hashable) -> None: ...

    def remove(self, key: Hashable) -> None: ...

    def victim(self, protected: Container = ()) -> Hashable | None: ...


class LRUPolicy:
    """Least recently used: evicts the resident key whose last request is oldest."""

    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def record(self, key: Hashable) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def insert(self, key: Hashable) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def remove(self, key: Hashable) -> None:
        self._order.pop(key, None)

    def victim(self, protected: Container = ()) -> Hashable | None:
        return next((key for key in self._order if key not in protected), None)


class AgedLFUPolicy:
    """LFU with aging: evicts the resident key requested least often lately, the least
    recently used among equals. The default policy of every tier.

    Why it beats LRU on per-person adapter traffic: requests for adapters are close to
    independent draws from a skewed (Zipf-like) popularity. For such traffic the cache
    that maximises expected hits holds the most *popular* keys, and LRU holds the most
    *recent* ones instead: every request for a tail adapter (with Zipf(1.0) over 10,000
    adapters, the ones outside the top 256 draw about 37% of requests) pushes every hot
    adapter one step closer to eviction, and a hot one whose few-second gap happens to
    be long is dropped for a one-off. Here a newcomer enters with its count (1 when it
    is new) and is the next victim unless it is requested again, so one-offs churn
    through a single slot while the hot set stays, and a sweep over many adapters (a
    batch evaluation) cannot flush it.

    Counts are kept for keys that are not resident too, so a popular adapter evicted
    once comes back with its standing. Aging, as in TinyLFU's reset: every
    `aging_window` requests all counts are halved and zeros forgotten, so popularity
    that has moved on fades geometrically and the history stays bounded by the keys seen
    in the last few windows. On `cache_sim.zipf_replay()` (10,000 adapters, 256 slots)
    this gets ~0.62 hits beside ~0.50 for LRU and ~0.68 for Belady's offline optimum; the
    default window (8,192 requests, 32 times such a tier) sits where a longer one no
    longer gains. It counts requests, not bytes: adapters of one base are of similar
    size, and a cold load costs about in proportion to its size, so a size-weighted
    priority (GDSF) would not change the order much.

    Cost: O(log n) a request — a heap of (count, recency) entries with lazy deletion.
    """

    name = "lfu-aging"

    def __init__(self, aging_window: int = 8192) -> None:
        if aging_window < 1:
            raise ValueError("aging_window must be at least 1 request")
        self.aging_window = aging_window
        self._counts: dict[Hashable, int] = {}
        self._entries: dict[Hashable, tuple] = {}  # resident key -> its live heap entry
        self._heap: list[tuple] = []
        self._sequence = 0  # recency: later pushes sort after earlier ones among equal counts
        self._since_aging = 0

    def count(self, key: Hashable) -> int:
        return self._counts.get(key, 0)

    def record(self, key: Hashable) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1
        if key in self._entries:
            self._push(key)
        self._since_aging += 1
        if self._since_aging >= self.aging_window:
            self._age()

    def insert(self, key: Hashable) -> None:
        self._push(key)

    def remove(self, key: Hashable) -> None:
        self._entries.pop(key, None)  # its heap entries go stale and are skipped

    def victim(self, protected: Container = ()) -> Hashable | None:
        set_aside, found = [], None
        while self._heap:
            entry = self._heap[0]
            key = entry[2]
            if self._entries.get(key) is not entry:
                heapq.heappop(self._heap)
            elif key in protected:
                set_aside.append(heapq.heappop(self._heap))
            else:
                found = key
                break
        for entry in set_aside:
            heapq.heappush(self._heap, entry)
        return found

    def _push(self, key: Hashable) -> None:
        self._sequence += 1
        entry = (self._counts.get(key, 0), self._sequence, key)
        self._entries[key] = entry
        heapq.heappush(self._heap, entry)
        if len(self._heap) > 4 * len(self._entries) + 64:
            self._rebuild()

    def _age(self) -> None:
        self._since_aging = 0
        self._counts = {key: count // 2 for key, count in self._counts.items() if count > 1}
        self._entries = {
            key: (self._counts.get(key, 0), sequence, key) for key, (_, sequence, _) in self._entries.items()
        }
        self._rebuild()

    def _rebuild(self) -> None:
        self._heap = list(self._entries.values())
        heapq.heapify(self._heap)


DEFAULT_POLICY = AgedLFUPolicy
POLICIES: dict[str, Callable[[], EvictionPolicy]] = {"lru": LRUPolicy, "lfu-aging": AgedLFUPolicy}


# --- how an adapter moves between tiers -------------------------------------------------
@dataclass(frozen=True, slots=True)
class Transfers:
    """The engine's side of a move: verified payload bytes → host object → device object."""

    materialize: Callable[[bytes], Any]  # bytes (hash already checked) -> the cpu tier's object
    to_device: Callable[[Any], Any]  # cpu tier's object -> the device tier's object
    to_host: Callable[[Any], Any]  # device tier's object -> the cpu tier's object (a demotion)
    nbytes: Callable[[Any], int]  # memory an object takes in its tier


def _same(value):
    return value


# The payload bytes themselves in every tier: what the tests and the simulator use.
BYTES = Transfers(materialize=_same, to_device=_same, to_host=_same, nbytes=len)


def tensor_transfers(device: str) -> Transfers:
    """The unpacked `AdapterPayload`, its tensors moved to `device` in the device tier."""
    from workers.engine.payload import AdapterPayload, unpack

    def moved(target: str):
        return lambda payload: AdapterPayload(
            {name: tensor.to(target) for name, tensor in payload.tensors.items()}, payload.config
        )

    def nbytes(payload) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in payload.tensors.values())

    return Transfers(materialize=unpack, to_device=moved(device), to_host=moved("cpu"), nbytes=nbytes)


# --- what the manager reports -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TierChange:
    """Told to the observer: an adapter entered or left a tier."""

    action: str  # "added" or "removed"
    sha256: str
    tier: str  # "device", "cpu" or "disk"
    memory: str  # where that tier lives: "gpu", "cpu" or "disk" (ResidentAdapter's tiers)
    bytes: int


TierObserver = Callable[[TierChange], None]


@dataclass(slots=True)
class _Tier:
    name: str
    memory: str
    budget: int
    max_entries: int | None
    policy: EvictionPolicy
    held: dict[str, tuple[Any, int]] = field(default_factory=dict)  # sha256 -> (object, bytes)
    bytes_used: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0

    def fits(self, extra_bytes: int, extra_entries: int) -> bool:
        if self.bytes_used + extra_bytes > self.budget:
            return False
        return self.max_entries is None or len(self.held) + extra_entries <= self.max_entries


@dataclass(slots=True)
class _Latencies:
    count: int = 0
    samples: deque = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    def add(self, seconds: float) -> None:
        self.count += 1
        self.samples.append(seconds)

    def summary(self) -> dict:
        ordered = sorted(self.samples)
        return {
            "count": self.count,
            "p50_ms": _percentile(ordered, 0.50) * 1000 if ordered else None,
            "p95_ms": _percentile(ordered, 0.95) * 1000 if ordered else None,
        }


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest rank: the smallest sample with at least q of the samples at or below it."""
    return ordered[max(1, math.ceil(len(ordered) * q)) - 1]


# --- the manager ------------------------------------------------------------------------
class ResidencyManager:
    """One worker's tiers for one base. `get(sha256)` is the request path; `pin`, `unpin`
    and `prefetch` are the console's; `snapshot()` is what gets reported.

    A worker process serving several bases has one manager per base, each knowing its
    base's digest: its figures are reported per base, and the console's actions for a
    revision reach only the manager of the revision's base."""

    def __init__(
        self,
        store: AdapterStore,
        cache_dir: str | Path,
        budgets: Mapping[str, int],
        *,
        base_digest: str,
        device: str = "cpu",
        transfers: Transfers = BYTES,
        policy: Callable[[], EvictionPolicy] = DEFAULT_POLICY,
        device_slots: int | None = None,
        observer: TierObserver | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        unknown = set(budgets) - set(CACHED_TIERS)
        missing = set(CACHED_TIERS) - set(budgets)
        if unknown or missing:
            raise ValueError(f"budgets needs exactly {', '.join(CACHED_TIERS)} (bytes each)")
        if any(budget < 0 for budget in budgets.values()):
            raise ValueError("a tier's budget cannot be negative")
        if not base_digest:
            raise ValueError("a residency manager serves one base: give its digest")
        self.base_digest = base_digest
        self.store = store
        self.local = AdapterStore(cache_dir)  # the disk tier: same layout, same verified reads
        self.device = device
        self.transfers = transfers
        self.observer = observer
        self.clock = clock
        device_memory = "gpu" if device.startswith("cuda") else "cpu"
        self._tiers = {
            DEVICE: _Tier(DEVICE, device_memory, budgets[DEVICE], device_slots, policy()),
            CPU: _Tier(CPU, "cpu", budgets[CPU], None, policy()),
            DISK: _Tier(DISK, "disk", budgets[DISK], None, policy()),
        }
        self._pins: dict[str, str] = {}  # sha256 -> the slowest tier it may sit in
        self._store_hits = self._store_misses = 0
        self._corrupt_files = 0
        self._loads = {source: _Latencies() for source in (STORE, DISK, CPU)}
        self._lock = threading.RLock()
        self._staging: dict[str, int] = {}  # sha256 -> stages reading it now
        self._forgets: dict[str, int] = {}  # sha256 -> times forgotten while being staged
        self._adopt_local_files()

    # --- the request path -----------------------------------------------------------
    def get(self, sha256: str) -> Any:
        """The adapter's device object, loaded (and verified) from wherever it is."""
        _check_key(sha256)
        with self._lock:
            self._record(sha256)
            return self._bring(sha256, DEVICE, counted=True)

    def stage(self, sha256: str, *, counted: bool = True) -> None:
        """Bring the adapter into the cpu tier (or leave it in memory where it is), reading,
        verifying and parsing it without holding the manager's lock: under it go only the
        books and, for bytes that came from the store, the local cache file's write. A `get`
        that follows is a cpu hit, one copy away from the device.

        `counted` as a request's load: hits and misses of the disk and store are counted. The
        load's time goes into the cold-load figures of its source either way. An adapter forgotten
        (erased) while it was being read is dropped, not placed."""
        _check_key(sha256)
        with self._lock:
            if any(sha256 in self._tiers[name].held for name in (DEVICE, CPU)):
                return
            on_disk = sha256 in self._tiers[DISK].held
            self._staging[sha256] = self._staging.get(sha256, 0) + 1
            forgotten = self._forgets.get(sha256, 0)
        try:
            started, data, source = self.clock(), None, DISK
            if on_disk:
                try:
                    data = self.local.get(sha256)  # verifies the sha256
                except (BlobCorrupted, BlobNotFound) as exc:
                    log.warning("dropping the local copy of %s: %s", sha256[:12], exc)
                    with self._lock:
                        self._corrupt_files += isinstance(exc, BlobCorrupted)
                        if sha256 in self._tiers[DISK].held:
                            self._evict(self._tiers[DISK], sha256, count=False)
            if data is None:
                source = STORE
                try:
                    data = self.store.get(sha256)  # verifies the sha256
                except BlobNotFound:
                    with self._lock:
                        self._store_misses += counted
                    raise
            host = self.transfers.materialize(data)
            with self._lock:
                if self._forgets.get(sha256, 0) != forgotten:
                    return  # erased meanwhile: its bytes go nowhere
                disk = self._tiers[DISK]
                self._count(disk, hit=source == DISK, counted=counted)
                if source == STORE:
                    self._store_hits += counted
                    self._write_local(sha256, data)
                # Not a use: the caller that wants it (`get`, `prefetch`) records that itself.
                if not any(sha256 in self._tiers[name].held for name in (DEVICE, CPU)):
                    # Pins may fill the cpu tier: then `get` loads it straight onto the device.
                    with contextlib.suppress(ResidencyError):
                        self._place(self._tiers[CPU], sha256, host, keep=True)
                self._loads[source].add(self.clock() - started)  # a cold load, whoever asked
        finally:
            with self._lock:
                self._staging[sha256] -= 1
                if not self._staging[sha256]:
                    del self._staging[sha256]
                    self._forgets.pop(sha256, None)

    # --- the console's actions ------------------------------------------------------
    def prefetch(self, sha256: str, tier: str = CPU) -> None:
        """Load the adapter into `tier` (or leave it where it is, if that is faster).

        Not a request: the hit/miss counters stay as they are. The eviction policy does
        count it as one use, since someone expects the adapter to be wanted soon."""
        _check_key(sha256)
        _check_tier(tier)
        if tier != DISK:
            self.stage(sha256, counted=False)  # the slow part, outside the lock
        with self._lock:
            self._record(sha256)
            self._bring(sha256, tier, counted=False, keep=True)

    def pin(self, sha256: str, tier: str = DEVICE) -> None:
        """Keep the adapter in `tier` or faster, and its local file, until `unpin`.

        Refused (ResidencyError) when the adapters pinned to that tier would not fit its
        budget together."""
        _check_key(sha256)
        _check_tier(tier)
        if tier != DISK:
            self.stage(sha256, counted=False)  # the slow part, outside the lock
        with self._lock:
            self._bring(sha256, tier, counted=False, keep=True)
            self._check_pins_fit(sha256, tier)
            self._pins[sha256] = tier

    def unpin(self, sha256: str) -> bool:
        with self._lock:
            return self._pins.pop(sha256, None) is not None

    def forget(self, sha256: str, *, unless_in: Callable[[], Container] | None = None) -> list[str] | None:
        """Drop the adapter from every tier at once, pin and local file included: its
        revision was erased, so nothing may keep its bytes (`workers/forgetting.py`).

        Unlike an eviction nothing is demoted or counted. Returns the tiers it left, or
        None, touching nothing, while `unless_in()` (asked under the manager's lock, so
        no load can slip in between) holds it: a request still running with it."""
        _check_key(sha256)
        with self._lock:
            if unless_in is not None and sha256 in unless_in():
                return None
            if sha256 in self._staging:
                self._forgets[sha256] = self._forgets.get(sha256, 0) + 1  # its stage drops it
            self._pins.pop(sha256, None)
            left = []
            for tier in self._tiers.values():
                if sha256 in tier.held:
                    value = self._take(tier, sha256)
                    if tier.name == DEVICE:
                        self.transfers.to_host(value)  # how the device lets go: a bank clears its slot
                    left.append(tier.name)
            self.local.delete(sha256)  # also a file the disk tier never adopted
            return left

    def held(self) -> set[str]:
        """Every sha256 some tier of this manager holds."""
        with self._lock:
            return {sha for tier in self._tiers.values() for sha in tier.held}

    def tier_of(self, sha256: str) -> str:
        """The fastest tier holding the adapter ("store" when no cache has it)."""
        with self._lock:
            return next((name for name in CACHED_TIERS if sha256 in self._tiers[name].held), STORE)

    def snapshot(self) -> dict:
        """Plain data for the worker's report: its base, per tier what is resident, bytes of budget,
        hits, misses, evictions; cold-load latency per source."""
        with self._lock:
            tiers = [
                {
                    "tier": tier.name,
                    "memory": tier.memory,
                    "budget": tier.budget,
                    "max_entries": tier.max_entries,
                    "bytes_used": tier.bytes_used,
                    "entries": len(tier.held),
                    "hits": tier.hits,
                    "misses": tier.misses,
                    "evictions": tier.evictions,
                    "resident": [
                        {"sha256": sha, "bytes": nbytes, "pinned": self._pins.get(sha)}
                        for sha, (_, nbytes) in tier.held.items()
                    ],
                }
                for tier in self._tiers.values()
            ]
            store = {"tier": STORE, "memory": "store", "hits": self._store_hits, "misses": self._store_misses}
            tiers.append(store)
            return {
                "base_digest": self.base_digest,
                "device": self.device,
                "policy": self._tiers[DEVICE].policy.name,
                "tiers": tiers,
                "pins": dict(self._pins),
                "cold_loads": {source: latencies.summary() for source, latencies in self._loads.items()},
                "corrupt_files_dropped": self._corrupt_files,
            }

    # --- moving adapters --------------------------------------------------------------
    def _record(self, sha256: str) -> None:
        for tier in self._tiers.values():
            tier.policy.record(sha256)

    def _bring(self, sha256: str, target: str, *, counted: bool, keep: bool = False) -> Any:
        """Make the adapter resident in `target` or a faster tier; return the device
        object when the target is the device. With `keep` (a prefetch, a pin) the adapter
        is given room in the target tier rather than left to compete for it."""
        device, cpu, disk = self._tiers[DEVICE], self._tiers[CPU], self._tiers[DISK]
        if sha256 in device.held:
            self._count(device, hit=True, counted=counted)
            return device.held[sha256][0]
        self._count(device, hit=False, counted=counted)
        if sha256 in cpu.held:
            self._count(cpu, hit=True, counted=counted)
            if target != DEVICE:
                return None
            started, host = self.clock(), self._take(cpu, sha256)
            try:
                value = self._to_device(sha256, host)
            except ResidencyError:
                self._place(cpu, sha256, host)  # no room on the device: it stays parked
                raise
            self._loads[CPU].add(self.clock() - started)
            return value
        self._count(cpu, hit=False, counted=counted)
        if target == DISK and sha256 in disk.held:
            return None

        started = self.clock()
        data, source = self._read_local(sha256, counted), DISK
        if data is None:
            data, source = self._fetch(sha256, counted), STORE
        value = None
        if target == DISK:
            if sha256 not in disk.held:
                raise ResidencyError(f"the disk tier has no room for {sha256[:12]} beside its pinned files")
        elif target == CPU:
            self._place(cpu, sha256, self.transfers.materialize(data), keep=keep)
        else:
            value = self._to_device(sha256, self.transfers.materialize(data))
        self._loads[source].add(self.clock() - started)
        return value

    def _read_local(self, sha256: str, counted: bool) -> bytes | None:
        disk = self._tiers[DISK]
        if sha256 not in disk.held:
            self._count(disk, hit=False, counted=counted)
            return None
        try:
            data = self.local.get(sha256)
        except (BlobCorrupted, BlobNotFound) as exc:
            # The local copy went bad (or someone removed it): drop it, go to the store.
            log.warning("dropping the local copy of %s: %s", sha256[:12], exc)
            self._corrupt_files += isinstance(exc, BlobCorrupted)
            self._evict(disk, sha256, count=False)
            self._count(disk, hit=False, counted=counted)
            return None
        self._count(disk, hit=True, counted=counted)
        return data

    def _fetch(self, sha256: str, counted: bool) -> bytes:
        try:
            data = self.store.get(sha256)  # verifies the sha256
        except BlobNotFound:
            self._store_misses += counted
            raise
        self._store_hits += counted
        self._write_local(sha256, data)
        return data

    def _write_local(self, sha256: str, data: bytes) -> None:
        disk = self._tiers[DISK]
        if len(data) > disk.budget or not self._make_room(disk, len(data), protected={sha256}):
            return  # served from the store this time, not cached locally
        self.local.put(data, expected_sha256=sha256)
        self._hold(disk, sha256, None, len(data))

    def _to_device(self, sha256: str, host: Any) -> Any:
        device = self._tiers[DEVICE]
        if not self._make_room(device, self.transfers.nbytes(host), protected={sha256}):
            raise ResidencyError(
                f"the device tier cannot hold {sha256[:12]}: its budget ({device.budget} bytes"
                + (f", {device.max_entries} slots" if device.max_entries else "")
                + ") is taken by pinned adapters or smaller than the adapter"
            )
        value = self.transfers.to_device(host)
        self._hold(device, sha256, value, self.transfers.nbytes(value))
        return value

    def _place(self, tier: _Tier, sha256: str, value: Any, *, keep: bool = False) -> None:
        """Put an adapter into a memory tier below the device. A demoted adapter is held,
        then the tier trimmed: it may itself be the one that goes, if the policy ranks it
        lowest (then it falls a tier further). With `keep` it is given room first."""
        nbytes = self.transfers.nbytes(value)
        if keep:
            if not self._make_room(tier, nbytes, protected={sha256}):
                raise ResidencyError(f"the {tier.name} tier has no room for {sha256[:12]} beside its pins")
            self._hold(tier, sha256, value, nbytes)
        elif nbytes <= tier.budget:
            self._hold(tier, sha256, value, nbytes)
            self._make_room(tier, 0)

    def _make_room(self, tier: _Tier, nbytes: int, protected: Container = ()) -> bool:
        """Evict from `tier` until `nbytes` more (and one more entry, if any) would fit."""
        extra_entries = 1 if nbytes else 0
        pinned = _Protected(self._pins, tier.name, protected)
        while not tier.fits(nbytes, extra_entries):
            victim = tier.policy.victim(pinned)
            if victim is None:
                return False
            self._evict(tier, victim)
        return True

    def _evict(self, tier: _Tier, sha256: str, *, count: bool = True) -> None:
        value = self._take(tier, sha256)
        tier.evictions += count
        if tier.name == DEVICE:
            self._place(self._tiers[CPU], sha256, self.transfers.to_host(value))
        elif tier.name == DISK:
            self.local.delete(sha256)
        # A cpu eviction just drops the host copy: the local file, if the disk tier
        # still has it, is the demoted adapter.

    def _hold(self, tier: _Tier, sha256: str, value: Any, nbytes: int) -> None:
        tier.held[sha256] = (value, nbytes)
        tier.bytes_used += nbytes
        tier.policy.insert(sha256)
        self._tell("added", tier, sha256, nbytes)

    def _take(self, tier: _Tier, sha256: str) -> Any:
        value, nbytes = tier.held.pop(sha256)
        tier.bytes_used -= nbytes
        tier.policy.remove(sha256)
        self._tell("removed", tier, sha256, nbytes)
        return value

    def _count(self, tier: _Tier, *, hit: bool, counted: bool) -> None:
        if counted:
            if hit:
                tier.hits += 1
            else:
                tier.misses += 1

    def _check_pins_fit(self, sha256: str, tier: str) -> None:
        """Adapters pinned to a tier must fit its budget together (and its slots), and
        the local files of all pinned adapters the disk's."""
        others = [key for key in self._pins if key != sha256]
        disk = self._tiers[DISK]
        checks = [(disk, [disk.held[key][1] for key in [*others, sha256] if key in disk.held])]
        if tier != DISK:
            same_tier = [key for key in others if self._pins[key] == tier]
            checks.append((self._tiers[tier], [self._size(key) for key in [*same_tier, sha256]]))
        for checked, sizes in checks:
            slots = checked.max_entries
            if sum(sizes) > checked.budget or (slots is not None and len(sizes) > slots):
                raise ResidencyError(
                    f"cannot pin {sha256[:12]} to {tier}: the pinned adapters would take {sum(sizes)} "
                    f"bytes of the {checked.name} tier's {checked.budget}"
                )

    def _size(self, sha256: str) -> int:
        """What the adapter takes in the memory tier holding it."""
        for name in (DEVICE, CPU):
            if sha256 in self._tiers[name].held:
                return self._tiers[name].held[sha256][1]
        return 0

    def _tell(self, action: str, tier: _Tier, sha256: str, nbytes: int) -> None:
        if self.observer is None:
            return
        try:
            self.observer(TierChange(action, sha256, tier.name, tier.memory, nbytes))
        except Exception:
            log.exception("the residency observer failed on %s %s %s", action, tier.name, sha256[:12])

    def _adopt_local_files(self) -> None:
        """A restarted worker keeps its local cache: files are taken oldest first (their
        hash is checked when read), and trimmed to the disk budget."""
        disk = self._tiers[DISK]
        files = sorted(self.local.all_keys(), key=lambda key: self.local.path_for(key).stat().st_mtime)
        for sha256 in files:
            self._hold(disk, sha256, None, self.local.path_for(sha256).stat().st_size)
        self._make_room(disk, 0)


@dataclass(frozen=True, slots=True)
class _Protected:
    """The keys a tier may not evict now: those pinned to it or a faster tier, and the
    request's own."""

    pins: Mapping[str, str]
    tier: str
    extra: Container

    def __contains__(self, key: object) -> bool:
        at = self.pins.get(key)  # type: ignore[call-overload]
        return key in self.extra or (at is not None and _pinned_in(at, self.tier))


def _pinned_in(pinned_at: str, tier: str) -> bool:
    """Whether a pin to `pinned_at` keeps an adapter from leaving `tier`: a pin holds its
    own tier and the ones below it, and every pin keeps the local file."""
    return tier == DISK or TIERS.index(pinned_at) <= TIERS.index(tier)


def _check_key(sha256: str) -> None:
    if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
        raise ValueError(f"residency is keyed by a revision's sha256, not {sha256!r}")


def _check_tier(tier: str) -> None:
    if tier not in CACHED_TIERS:
        raise ValueError(f"unknown tier {tier!r}; use one of {', '.join(CACHED_TIERS)}")
