"""The one writer of a worker process's residency rows, `ResidentAdapter` and `ResidencyStats`.

Several parts of a worker process know what it holds and what went: the holders'
reporters (`workers/residency.py`: what the one-at-a-time runtime and the batched server
load, use and evict), the heartbeat (`workers/heartbeat.py`: a fresh start or a stop
wipes what the worker's processes reported, and a process gone from the pool takes its
rows with it), the erasure sweep (`workers/forgetting.py`: erased revisions dropped) and
the residency managers, one per base (`workers.serving.residency_managers()`), whose
`snapshot()` gives the tiers' figures. None of them writes those rows. Each hands its
change to the process's `ResidencyWriter`, which applies the changes in the order they
came and then writes the managers' snapshots, so one part cannot undo another behind its
back: a revision's load handed over before the sweep dropped it is written before the
drop, never after it, and a wipe is followed by a round that writes again what the
managers hold. (The sweep of a silent worker, `adapters_app/lifecycle/fleet.py`, deletes
a dead worker's rows from another process: none of its own is left to do it.)

Where changes are written: on the thread that hands them over when it asks to (`now`),
which the reporters do from a Celery task's thread (a request returns with its rows
written) and the heartbeat does for its own; otherwise on the writer's daemon thread.
That thread starts on the first sign of a model in a worker process (an adapter loaded
in a task, a console action, a held-back use, or the heartbeat in a solo pool; a forked
child starts its own) and runs a round at most every STATS_SECONDS: the erasure sweep,
the changes waiting, the uses held back (a model's uses are written at most once every
USE_WRITE_SECONDS, so inference does not wait on the database for a counter) and the
snapshots: one `ResidencyStats` row per manager (so per base) and tier, and one
`ResidentAdapter` row per adapter and tier it holds (holder `serving`; the disk tier is
inclusive, so an adapter in memory and on disk is two rows), which is what the router
reads. Only what changed since the last write, or is missing, is written, so an idle
worker costs one read a round. Nothing here runs in the request path's engine code.

The database may be down for a while: a change that fails on a connection error stays
first in line and is tried again at the next round or hand-over, up to MAX_WAITING
changes (then the oldest go; the managers' next snapshots put the batched server's rows
right again).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from celery import current_task
from django.db import InterfaceError, OperationalError, connection
from django.db.models import F
from django.utils import timezone

from adapters_app.models import BaseModel, ResidencyStats, ResidentAdapter, Revision, Worker
from workers.engine.residency import STORE, ResidencyManager, TierChange

log = logging.getLogger(__name__)

STATS_SECONDS = 2.0  # at most one round (and one write of a manager's figures) this often
USE_WRITE_SECONDS = 1.0  # at most one write of a model's uses this often
MAX_WAITING = 10_000  # changes kept while the database is down
# The cold loads served from a tier (a source in the snapshot's `cold_loads`).
COLD_LOAD_SOURCE = {"cpu": "cpu", "disk": "disk", "store": STORE}
# What a down or restarting database raises: the change is kept and tried again.
CONNECTION_ERRORS = (OperationalError, InterfaceError)


def worker_name() -> str | None:
    """The Celery node running the current task; None outside a worker's task."""
    request = getattr(current_task, "request", None)
    return getattr(request, "hostname", None) or None


# --- what the writer is handed ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Loaded:
    """A holder of this process loaded a model: its row, with no uses yet."""

    holder: str  # ResidentAdapter.SERVING or RUNTIME
    worker: str
    kind: str  # ResidentAdapter.ADAPTER or BASE
    sha256: str  # the revision's, or the base's weight digest
    base_digest: str
    tier: str  # where it sits: ResidentAdapter.GPU or CPU
    bytes: int
    at: datetime = field(default_factory=timezone.now)


@dataclass(frozen=True, slots=True)
class Used:
    """A holder of this process answered a request with the model."""

    holder: str
    worker: str
    sha256: str
    at: datetime = field(default_factory=timezone.now)


@dataclass(frozen=True, slots=True)
class Evicted:
    """A holder of this process let the model go from a tier."""

    holder: str
    worker: str
    sha256: str
    tier: str


@dataclass(frozen=True, slots=True)
class Forgotten:
    """The erasure sweep dropped these revisions from every holder and tier of this process."""

    worker: str
    sha256s: frozenset[str]


@dataclass(frozen=True, slots=True)
class PoolChanged:
    """The worker's pool is these processes now: what any other one reported went with it."""

    worker: str
    pids: frozenset[int]


@dataclass(frozen=True, slots=True)
class WorkerReset:
    """The worker started afresh or stopped: whatever its processes reported is gone."""

    worker: str


ResidencyChange = Loaded | Used | Evicted | Forgotten | PoolChanged | WorkerReset


# --- the managers' snapshots ---------------------------------------------------------------
def managers_here() -> list[ResidencyManager]:
    """This process's residency managers; none where serving is not set up."""
    try:
        from workers.serving import residency_managers
    except ImportError:
        return []
    return list(residency_managers())


def stats_values(tier: dict, cold_loads: dict) -> dict:
    """One tier of a `snapshot()`, as ResidencyStats columns."""
    source = COLD_LOAD_SOURCE.get(tier["tier"])
    loads = cold_loads.get(source, {}) if source else {}
    return {
        "memory": tier["memory"],
        "budget_bytes": tier.get("budget"),
        "max_entries": tier.get("max_entries"),
        "used_bytes": tier.get("bytes_used", 0),
        "entries": tier.get("entries", 0),
        "hits": tier["hits"],
        "misses": tier["misses"],
        "evictions": tier.get("evictions", 0),
        "cold_loads": loads.get("count", 0),
        "cold_load_p50_ms": loads.get("p50_ms"),
        "cold_load_p95_ms": loads.get("p95_ms"),
    }


class ResidencyStatsReport:
    """The writer's part that writes one process's managers' snapshots. It remembers what it
    wrote, so it writes only changes (and what went missing: a heartbeat in another process
    or the sweep may have wiped the rows), and removes only its own ResidentAdapter rows
    (holder `serving`; the one-at-a-time runtime's rows come from its reporter's changes)."""

    def __init__(self, worker_name: str, pid: int | None = None):
        self.worker_name = worker_name
        self.pid = pid or os.getpid()
        self._stats: dict[tuple[str, str], dict] = {}  # (base digest, tier) -> values written
        self._resident: dict[tuple[str, str], tuple] = {}  # (sha256, memory) -> (bytes, pinned, base)

    def flush(self, managers: Iterable[ResidencyManager]) -> int:
        """Write what changed; the number of rows written or removed."""
        return self.write([manager.snapshot() for manager in managers])

    def write(self, snapshots: Iterable[dict]) -> int:
        """`flush`, from the managers' snapshots taken already."""
        worker = Worker.objects.filter(name=self.worker_name, stopped_at=None).only("id").first()
        if worker is None:
            return 0  # stopping, or not registered yet: nothing to hang rows on
        now, written, bases = timezone.now(), 0, {}

        def base(digest: str) -> BaseModel | None:  # looked up only for a row being written
            if digest not in bases:
                bases[digest] = BaseModel.objects.filter(digest=digest).first()
            return bases[digest]

        present = set(
            ResidencyStats.objects.filter(worker=worker, pid=self.pid).values_list("base_digest", "tier")
        )
        resident: dict[tuple[str, str], tuple] = {}
        for snapshot in snapshots:
            digest = snapshot["base_digest"]
            for tier in snapshot["tiers"]:
                key, values = (digest, tier["tier"]), stats_values(tier, snapshot["cold_loads"])
                if self._stats.get(key) != values or key not in present:
                    ResidencyStats.objects.update_or_create(
                        worker=worker,
                        pid=self.pid,
                        base_digest=digest,
                        tier=tier["tier"],
                        defaults={**values, "base": base(digest), "updated_at": now},
                    )
                    self._stats[key] = values
                    written += 1
                for entry in tier.get("resident", ()):
                    resident[(entry["sha256"], tier["memory"])] = (
                        entry["bytes"],
                        entry["pinned"] or "",
                        digest,
                    )
        # Compared with the rows as they are, not as last written: a holder's eviction
        # deletes the row of a device eviction that the manager turns into a cpu-tier entry,
        # and a heartbeat (this process's or, under prefork, the main one's) wipes a worker's
        # rows when it starts afresh.
        ours = ResidentAdapter.objects.filter(
            worker=worker, pid=self.pid, holder=ResidentAdapter.SERVING, kind=ResidentAdapter.ADAPTER
        )
        rows = {
            (sha256, tier): (nbytes, pinned)
            for sha256, tier, nbytes, pinned in ours.values_list("sha256", "tier", "bytes", "pinned")
        }
        for (sha256, memory), (nbytes, pinned, digest) in resident.items():
            if rows.get((sha256, memory)) != (nbytes, pinned):
                ResidentAdapter.objects.update_or_create(
                    worker=worker,
                    pid=self.pid,
                    holder=ResidentAdapter.SERVING,
                    sha256=sha256,
                    tier=memory,
                    defaults={"bytes": nbytes, "pinned": pinned},
                    create_defaults={
                        "kind": ResidentAdapter.ADAPTER,
                        "revision": Revision.objects.filter(sha256=sha256).order_by("pk").first(),
                        "base": base(digest),
                        "bytes": nbytes,
                        "pinned": pinned,
                        "loaded_at": now,
                    },
                )
                written += 1
        for sha256, memory in (set(self._resident) - set(resident)) & set(rows):
            ours.filter(sha256=sha256, tier=memory).delete()
            written += 1
        self._resident = resident
        return written


# --- the writer ----------------------------------------------------------------------------
class ResidencyWriter:
    """The one writer of a worker process's residency rows: see the module's docstring."""

    def __init__(
        self, worker_name: str, pid: int | None = None, use_write_seconds: float = USE_WRITE_SECONDS
    ):
        self.worker_name = worker_name
        self.pid = pid or os.getpid()
        self.use_write_seconds = use_write_seconds
        self.report = ResidencyStatsReport(worker_name, self.pid)
        self._waiting: deque[ResidencyChange] = deque()
        self._waiting_lock = threading.Lock()  # held only to add or take, never across a write
        self._writing = threading.RLock()  # one thread writes at a time, in the line's order
        # (holder, worker name, sha256) -> (uses not written yet, time of the newest one)
        self._uses: dict[tuple[str, str, str], tuple[int, datetime]] = {}
        self._uses_written: dict[tuple[str, str, str], float] = {}  # -> monotonic time of the last write
        self._dropped = 0
        self._starting = threading.Lock()
        self._thread: threading.Thread | None = None
        self._forgetter = None
        self._wake = threading.Event()
        self._stopped = threading.Event()

    # --- handing changes over ---------------------------------------------------------
    def submit(self, change: ResidencyChange, *, now: bool = False) -> bool:
        """Put `change` in line after every change handed over before it. With `now`, write
        the line on this thread at once (True when it all went); otherwise the writer's
        thread writes it at its next round."""
        with self._waiting_lock:
            if len(self._waiting) >= MAX_WAITING:
                self._waiting.popleft()
                self._dropped += 1
                if self._dropped == 1:
                    log.warning("%d residency changes wait on the database: dropping the oldest", MAX_WAITING)
            self._waiting.append(change)
        if now:
            return self.write_pending()
        self.wake()
        return False

    def write_pending(self) -> bool:
        """Write the changes waiting, in order. False when the database could not take them:
        they stay in line for the next try."""
        try:
            self._write_waiting()
        except CONNECTION_ERRORS as exc:
            log.warning(
                "could not write residency changes (%s); %d wait for the next try", exc, self.waiting()
            )
            return False
        return True

    def waiting(self) -> int:
        with self._waiting_lock:
            return len(self._waiting)

    def write_round(self, managers: Iterable[ResidencyManager]) -> int:
        """The changes waiting, the uses held back, then the managers' snapshots; the number
        of snapshot rows written or removed. Raises what the database raised."""
        # Taken before the writing starts: a manager busy with a cold load keeps this thread
        # waiting, not the task threads that hand changes over meanwhile.
        snapshots = [manager.snapshot() for manager in managers]
        with self._writing:
            self._write_waiting()
            self._write_held_uses()
            return self.report.write(snapshots)

    # --- the writer's thread ------------------------------------------------------------
    def start(self) -> None:
        """Start the writer's thread, if it has not started: its rounds also drop erased
        revisions (workers/forgetting.py) and write held-back uses and the snapshots."""
        with self._starting:
            if self._thread is not None or self._stopped.is_set():
                return
            from workers.forgetting import Forgetter

            self._forgetter = Forgetter(self.worker_name)
            self._thread = threading.Thread(target=self._loop, name="residency-writer", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10) -> None:
        """End the loop after the round in progress (if any), and wait for it."""
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        last = 0.0
        try:
            while not self._stopped.is_set():
                self._wake.wait(STATS_SECONDS)
                # A burst of changes (one cold load evicts several) is one round.
                if self._stopped.wait(max(0.0, STATS_SECONDS - (time.monotonic() - last))):
                    return
                self._wake.clear()
                last = time.monotonic()
                try:
                    self._forgetter.tick()  # first, so the snapshots that follow no longer show them
                except Exception:
                    log.exception("could not drop erased revisions; trying again in %ss", STATS_SECONDS)
                    connection.close()
                try:
                    self.write_round(managers_here())
                except Exception:
                    log.exception("could not write residency; trying again in %ss", STATS_SECONDS)
                    connection.close()  # a broken connection is reopened on the next write
        finally:
            connection.close()  # this thread's own

    # --- applying changes ---------------------------------------------------------------
    def _write_waiting(self) -> None:
        with self._writing:
            while True:
                with self._waiting_lock:
                    if not self._waiting:
                        return
                    change = self._waiting[0]
                try:
                    self._apply(change)
                except CONNECTION_ERRORS:
                    raise  # it stays first in line
                except Exception:
                    log.exception("dropped a residency change the database refused: %s", change)
                with self._waiting_lock:
                    if self._waiting and self._waiting[0] is change:
                        self._waiting.popleft()

    def _apply(self, change: ResidencyChange) -> None:
        match change:
            case Loaded():
                self._loaded(change)
            case Used():
                self._used(change)
            case Evicted():
                self._uses_forget(change.holder, change.worker, change.sha256)
                self._rows(change.worker).filter(
                    holder=change.holder, sha256=change.sha256, tier=change.tier
                ).delete()
            case Forgotten():
                for holder, _ in ResidentAdapter.HOLDERS:
                    for sha256 in change.sha256s:
                        self._uses_forget(holder, change.worker, sha256)
                self._rows(change.worker).filter(
                    kind=ResidentAdapter.ADAPTER, sha256__in=change.sha256s
                ).delete()
            case PoolChanged():
                ResidentAdapter.objects.filter(worker__name=change.worker).exclude(
                    pid__in=change.pids
                ).delete()
                ResidencyStats.objects.filter(worker__name=change.worker).exclude(
                    pid__in=change.pids
                ).delete()
            case WorkerReset():
                Worker.objects.filter(name=change.worker).forget_residency()
            case _:
                raise TypeError(f"not a residency change: {change!r}")

    def _rows(self, worker_name: str):
        """This process's ResidentAdapter rows for the worker."""
        return ResidentAdapter.objects.filter(worker__name=worker_name, pid=self.pid)

    def _loaded(self, change: Loaded) -> None:
        worker = Worker.objects.filter(name=change.worker, stopped_at=None).first()
        if worker is None:
            return  # stopping, or its heartbeat never wrote the row: nothing to hang it on
        revision = None
        if change.kind == ResidentAdapter.ADAPTER:
            revision = Revision.objects.filter(sha256=change.sha256).order_by("pk").first()
        ResidentAdapter.objects.update_or_create(
            worker=worker,
            pid=self.pid,
            holder=change.holder,
            sha256=change.sha256,
            tier=change.tier,
            defaults={
                "kind": change.kind,
                "revision": revision,
                "base": BaseModel.objects.filter(digest=change.base_digest).first(),
                "bytes": change.bytes,
                "loaded_at": change.at,
                "last_used_at": None,
                "uses": 0,
            },
        )
        self._uses_forget(change.holder, change.worker, change.sha256)

    def _used(self, change: Used) -> None:
        key = (change.holder, change.worker, change.sha256)
        uses = self._uses.get(key, (0, None))[0] + 1
        last = self._uses_written.get(key)
        if last is not None and time.monotonic() - last < self.use_write_seconds:
            self._uses[key] = (uses, change.at)
            self.start()  # its next round writes them, so the last uses before a quiet spell show too
            return
        self._write_uses(key, uses, change.at)  # if this raises, nothing was counted yet

    def _write_held_uses(self) -> None:
        for key, (uses, at) in list(self._uses.items()):
            self._write_uses(key, uses, at)

    def _write_uses(self, key: tuple[str, str, str], uses: int, at: datetime) -> None:
        holder, worker_name, sha256 = key
        self._rows(worker_name).filter(
            holder=holder, sha256=sha256, tier__in=ResidentAdapter.MEMORY_TIERS
        ).update(uses=F("uses") + uses, last_used_at=at)
        self._uses.pop(key, None)
        self._uses_written[key] = time.monotonic()

    def _uses_forget(self, holder: str, worker_name: str, sha256: str) -> None:
        self._uses.pop((holder, worker_name, sha256), None)
        self._uses_written.pop((holder, worker_name, sha256), None)


_lock = threading.Lock()
_writer: ResidencyWriter | None = None


def process_writer(worker_name: str) -> ResidencyWriter:
    """This process's writer, made on first use. (A test process plays several workers in
    turn: a new name gets a new writer.)"""
    global _writer
    with _lock:
        previous = _writer
        if previous is None or previous.pid != os.getpid() or previous.worker_name != worker_name:
            _writer = ResidencyWriter(worker_name)
        writer = _writer
    if previous is not None and previous is not writer and previous.pid == os.getpid():
        previous.stop()
    return writer


def _forget_the_parents_writer() -> None:
    """A forked child's writer is its own: the parent's line and memory are not its, and a
    lock the parent held at the fork would never be let go here."""
    global _lock, _writer
    _lock, _writer = threading.Lock(), None


os.register_at_fork(after_in_child=_forget_the_parents_writer)


def ensure_reporting(worker_name: str) -> ResidencyWriter:
    """This process's writer, its thread started."""
    writer = process_writer(worker_name)
    writer.start()
    return writer


def stop_reporting() -> None:
    """Stop this process's writer's thread, if it has one: before the database it writes to
    goes away (a test session's end), rather than logging failed writes until exit."""
    global _writer
    with _lock:
        writer, _writer = _writer, None
    if writer is not None and writer.pid == os.getpid():
        writer.stop()


class TierChangeReporter:
    """A manager's observer (`ResidencyManager(observer=TierChangeReporter())`): inside a
    worker's task, a change wakes the writer's thread; elsewhere it does nothing."""

    def __call__(self, change: TierChange) -> None:
        name = worker_name()
        if name is not None:
            ensure_reporting(name).wake()


def report_from_heartbeat(worker_name: str) -> None:
    """The heartbeat's part: where this process serves (a solo pool), keep writing rounds."""
    if managers_here():
        ensure_reporting(worker_name)
