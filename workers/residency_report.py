"""What a worker process's residency managers hold and count, kept in the database.

Each worker process serves through one `ResidencyManager` per base
(`workers.serving.residency_managers()`). A daemon thread of the process writes their
`snapshot()` every `STATS_SECONDS`: one `ResidencyStats` row per manager and tier
(budget, bytes used, entries, hits, misses, evictions, cold-load p50/p95), and one
`ResidentAdapter` row per adapter and tier it holds (holder `serving`; the disk tier is
inclusive, so an adapter in memory and on disk is two rows), which is what the router
reads. Only what changed since the last write is written, so an idle worker costs nothing.

Nothing here runs in the request path: a manager's observer (`TierChangeReporter`)
only wakes the thread, so a cold load shows within moments without waiting on the
database. The thread starts on the first sign of a manager in a worker process (a
tier change inside a task, a console action, the one-at-a-time runtime loading an
adapter, or the heartbeat in a solo pool), and a forked child starts its own. Each round
it also drops what this process holds of erased revisions (workers/forgetting.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable

from django.db import connection
from django.utils import timezone

from adapters_app.models import BaseModel, ResidencyStats, ResidentAdapter, Revision, Worker
from workers.engine.residency import STORE, ResidencyManager, TierChange
from workers.residency import worker_name

log = logging.getLogger(__name__)

STATS_SECONDS = 2.0  # at most one write of a manager's figures this often
# The cold loads served from a tier (a source in the snapshot's `cold_loads`).
COLD_LOAD_SOURCE = {"cpu": "cpu", "disk": "disk", "store": STORE}


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
    """Writes one process's managers' snapshots; remembers what it wrote, so it writes
    only changes and removes only its own ResidentAdapter rows (holder `serving`; the
    one-at-a-time runtime's reporter keeps rows of its own in the same table)."""

    def __init__(self, worker_name: str, pid: int | None = None):
        self.worker_name = worker_name
        self.pid = pid or os.getpid()
        self._stats: dict[tuple[str, str], dict] = {}  # (base digest, tier) -> values written
        self._resident: dict[tuple[str, str], tuple] = {}  # (sha256, memory) -> (bytes, pinned)

    def flush(self, managers: Iterable[ResidencyManager]) -> int:
        """Write what changed; the number of rows written or removed."""
        worker = Worker.objects.filter(name=self.worker_name, stopped_at=None).only("id").first()
        if worker is None:
            return 0  # stopping, or not registered yet: nothing to hang rows on
        now, written, bases = timezone.now(), 0, {}
        resident: dict[tuple[str, str], tuple] = {}
        for manager in managers:
            snapshot = manager.snapshot()
            digest = snapshot["base_digest"]
            if digest not in bases:
                bases[digest] = BaseModel.objects.filter(digest=digest).first()
            for tier in snapshot["tiers"]:
                values = stats_values(tier, snapshot["cold_loads"])
                if self._stats.get((digest, tier["tier"])) != values:
                    ResidencyStats.objects.update_or_create(
                        worker=worker,
                        pid=self.pid,
                        base_digest=digest,
                        tier=tier["tier"],
                        defaults={**values, "base": bases[digest], "updated_at": now},
                    )
                    self._stats[(digest, tier["tier"])] = values
                    written += 1
                for entry in tier.get("resident", ()):
                    resident[(entry["sha256"], tier["memory"])] = (
                        entry["bytes"],
                        entry["pinned"] or "",
                        digest,
                    )
        # Compared with the rows as they are, not as last written: the bank's own reporter
        # (workers/residency.py) deletes a row on a device eviction that the manager turns
        # into a cpu-tier entry, and the heartbeat wipes a worker's rows when it starts.
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
                        "base": bases.get(digest),
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


class _ReportingThread:
    def __init__(self, worker_name: str):
        from workers.forgetting import Forgetter

        self.report = ResidencyStatsReport(worker_name)
        self.forgetter = Forgetter(worker_name)
        self.pid = os.getpid()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="residency-report", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10) -> None:
        """End the loop after the round in progress (if any), and wait for it."""
        self._stopped.set()
        self._wake.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        last = 0.0
        while not self._stopped.is_set():
            self._wake.wait(STATS_SECONDS)
            if self._stopped.is_set():
                return
            # A burst of tier changes (one cold load evicts several) is one write.
            time.sleep(max(0.0, STATS_SECONDS - (time.monotonic() - last)))
            self._wake.clear()
            last = time.monotonic()
            try:
                self.forgetter.tick()  # first, so the report that follows no longer shows them
            except Exception:
                log.exception("could not drop erased revisions; trying again in %ss", STATS_SECONDS)
                connection.close()
            try:
                self.report.flush(managers_here())
            except Exception:
                log.exception("could not report residency; trying again in %ss", STATS_SECONDS)
                connection.close()  # a broken connection is reopened on the next write


_lock = threading.Lock()
_reporting: _ReportingThread | None = None


def ensure_reporting(worker_name: str) -> _ReportingThread:
    """This process's reporting thread, started on first use (again in a forked child)."""
    global _reporting
    with _lock:
        if _reporting is None or _reporting.pid != os.getpid():
            _reporting = _ReportingThread(worker_name)
        return _reporting


def stop_reporting() -> None:
    """Stop this process's reporting thread, if it has one: before the database it writes to
    goes away (a test session's end), rather than logging failed writes until exit."""
    global _reporting
    with _lock:
        thread, _reporting = _reporting, None
    if thread is not None and thread.pid == os.getpid():
        thread.stop()


class TierChangeReporter:
    """A manager's observer (`ResidencyManager(observer=TierChangeReporter())`): inside a
    worker's task, a change wakes the reporting thread; elsewhere it does nothing."""

    def __call__(self, change: TierChange) -> None:
        name = worker_name()
        if name is not None:
            ensure_reporting(name).wake()


def report_from_heartbeat(worker_name: str) -> None:
    """The heartbeat's part: where this process serves (a solo pool), keep reporting."""
    if managers_here():
        ensure_reporting(worker_name)
