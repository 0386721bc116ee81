"""The simulated fleet: one real `ResidencyManager` per worker, the residency rows they
would write, the load counters, and routing through `routing.choose`.

Each worker's manager is `workers.engine.residency.ResidencyManager` itself, with its
tiers, budgets, admission (device tier on demand, a device eviction demoted to the cpu
tier, the local file written when bytes first come from the store and kept until the
disk tier evicts it) and the eviction policy under test in every tier. Two things are
swapped for in-memory stand-ins, neither of them a policy: the shared store (`get`
returns a one-byte payload) and the manager's local file cache (`manager.local`, an
`AdapterStore` on disk in a worker, a dict here). All adapters are of one base and one
rank, so budgets are counted in payloads: a one-byte payload in a budget of N bytes is
N adapters, and bytes are reported as payloads times the measured payload size.

What routing reads: a real worker's manager tells its observer every change, and the
worker writes `ResidentAdapter` rows (tier = gpu, cpu or disk) that `route()` reads.
Here the observer keeps the same facts in two dicts (sha256 -> the workers holding it in
memory, and on disk), up to date at once where the real rows lag by a write round. Load
is requests in flight per worker, as the shared cache counts them; every worker is
healthy and leased.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable
from pathlib import Path

from adapters_app.lifecycle.routing import choose
from workers.engine.residency import (
    CPU,
    DEVICE,
    DISK,
    EvictionPolicy,
    ResidencyManager,
    TierChange,
)
from workers.engine.store import BlobNotFound

PAYLOAD = b"\0"  # one payload: budgets are counted in adapters
NOBODY: frozenset[str] = frozenset()

AFFINITY, RANDOM = "affinity", "random"
ROUTINGS = (AFFINITY, RANDOM)


class SharedStore:
    """The shared store's `get`: every revision is there; counts what it served."""

    def __init__(self) -> None:
        self.gets = 0

    def get(self, sha256: str) -> bytes:
        self.gets += 1
        return PAYLOAD


class LocalFiles:
    """A worker's local file cache (`ResidencyManager.local`) without the files."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def put(self, data: bytes, *, expected_sha256: str) -> None:
        self.files[expected_sha256] = data

    def get(self, sha256: str) -> bytes:
        try:
            return self.files[sha256]
        except KeyError:
            raise BlobNotFound(sha256) from None

    def delete(self, sha256: str) -> None:
        self.files.pop(sha256, None)


class Fleet:
    """`workers` workers, named w000, w001, … (so name order is number order)."""

    def __init__(
        self,
        *,
        workers: int,
        gpu_slots: int,
        cpu_slots: int,
        disk_slots: int,
        policy: Callable[[], EvictionPolicy],
        routing: str,
        seed: int = 0,
        scratch: str | Path | None = None,
    ):
        if routing not in ROUTINGS:
            raise ValueError(f"routing is one of {', '.join(ROUTINGS)}")
        self.routing = routing
        self.rng = random.Random(seed)
        self.names = [f"w{i:03d}" for i in range(workers)]
        self.store = SharedStore()
        self.in_memory: dict[str, set[str]] = {}  # sha256 -> workers holding it in gpu/cpu memory
        self.on_disk: dict[str, set[str]] = {}  # sha256 -> workers holding its local file
        self.loads = dict.fromkeys(self.names, 0)
        self._scratch = tempfile.TemporaryDirectory(prefix="fleet-sim-") if scratch is None else None
        root = Path(scratch if scratch is not None else self._scratch.name)
        budgets = {DEVICE: gpu_slots, CPU: cpu_slots, DISK: disk_slots}
        self.managers: dict[str, ResidencyManager] = {}
        for name in self.names:
            manager = ResidencyManager(
                self.store,
                root / name,  # stays empty: the local files are swapped for a dict below
                budgets,
                base_digest="fleet-sim",
                device="cuda",
                policy=policy,
                device_slots=gpu_slots,
                observer=self._observer(name),
                clock=_no_clock,
            )
            manager.local = LocalFiles()
            self.managers[name] = manager

    def route(self, sha256: str) -> tuple[str, str]:
        """(worker, reason): routing.py's decision, or a uniformly random worker."""
        if self.routing == RANDOM:
            return self.rng.choice(self.names), "random"
        in_memory, on_disk = self.in_memory.get(sha256, NOBODY), self.on_disk.get(sha256, NOBODY)
        return choose(self.names, in_memory, on_disk, self.loads)

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()

    def _observer(self, name: str) -> Callable[[TierChange], None]:
        in_memory, on_disk = self.in_memory, self.on_disk

        def observe(change: TierChange) -> None:
            index = on_disk if change.memory == "disk" else in_memory
            if change.action == "added":
                holders = index.get(change.sha256)
                if holders is None:
                    index[change.sha256] = {name}
                else:
                    holders.add(name)
            else:
                holders = index[change.sha256]
                holders.discard(name)
                if not holders:
                    del index[change.sha256]

        return observe


def _no_clock() -> float:
    # The manager times its loads with this; simulated time is kept outside it.
    return 0.0
