"""Erased revisions leave every worker process that holds a copy.

`erase_person` (adapters_app/lifecycle/people.py) deletes the person's revision rows and
store blobs, but what worker processes hold of them is out of its reach: the batched
server's bank slots and parked payloads, its local disk cache, and adapters attached to
the one-at-a-time runtime. Each process drops its own copies. The residency reporting
thread (workers/residency_report.py), which runs in every worker process that has held
an adapter, calls `Forgetter.tick()` each round. When the erasure mark in the shared cache
has changed since its last look, it asks the database which of the sha256s the process
holds no revision names any more, drops those from every tier and the runtime, and
hands them to the process's residency writer, which deletes their rows after whatever it
was handed before (a load reported just before the sweep cannot bring a row back). It
also does so once when it starts (a restarted worker adopts its old disk cache), and every
FULL_SWEEP_SECONDS in case a mark was lost with the cache. As a worker starts,
`prune_local_caches` also clears the local cache folders of bases no process has served
yet, which no sweep would see.

A revision a running request still uses is dropped on a later round: the request started
before the erasure, and cutting its adapter out mid-generation would answer with someone
else's slot. Keys are content hashes, so bytes that a kept revision shares stay, because
a revision row still names them.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from adapters_app.lifecycle.people import erasure_mark
from adapters_app.models import Revision
from workers.residency_report import Forgotten, process_writer

log = logging.getLogger(__name__)

FULL_SWEEP_SECONDS = 600.0
QUERY_CHUNK = 500  # sha256s per `IN (…)` query: a disk tier may hold thousands
# workers/serving.py names a base's local cache folder by its digest's first 16 hex digits.
CACHE_FOLDER_RE = re.compile(r"^[0-9a-f]{16}$")
_NEVER = object()


def unnamed(sha256s: Iterable[str]) -> set[str]:
    """Those of `sha256s` that no revision names (any more)."""
    wanted = sorted(set(sha256s))
    named: set[str] = set()
    for start in range(0, len(wanted), QUERY_CHUNK):
        chunk = wanted[start : start + QUERY_CHUNK]
        named.update(Revision.objects.filter(sha256__in=chunk).values_list("sha256", flat=True))
    return set(wanted) - named


def forget_erased(worker_name: str) -> tuple[set[str], set[str]]:
    """Drop from this process every revision it holds that no revision row names.

    Returns (forgotten, still in use): the second are left for a later sweep."""
    from workers import serving
    from workers.runs import runtime

    gone = unnamed(serving.held_revisions() | runtime().held())
    if not gone:
        return set(), set()
    still_in_use = serving.forget_revisions(gone)
    forgotten = gone - still_in_use
    for sha256 in forgotten:
        runtime().forget(sha256)
    if forgotten:
        # The holders' reporters hand over changes only from a task's thread, and this runs
        # on the writer's own: what the runtime just told its reporter went nowhere.
        process_writer(worker_name).submit(Forgotten(worker_name, frozenset(forgotten)), now=True)
        log.info("dropped %d erased revision(s) from this process's caches", len(forgotten))
    return forgotten, still_in_use


def prune_local_caches(root: Path) -> int:
    """Delete every file in the workers' local adapter caches under `root` (one folder per
    base) that no revision names; the number deleted. Run once as a worker starts: a
    process adopts a base's folder only when it first serves that base, and until then
    its sweeps cannot see the files of revisions erased while it was down."""
    from workers.engine.store import AdapterStore

    deleted = 0
    # Only folders named as the servers name them (a base digest's first 16 hex digits):
    # whatever else lives under `root` is not ours to judge.
    folders = sorted(
        path for path in Path(root).glob("*") if path.is_dir() and CACHE_FOLDER_RE.match(path.name)
    )
    for folder in folders:
        cache = AdapterStore(folder)
        for sha256 in unnamed(cache.all_keys()):
            deleted += cache.delete(sha256)
    if deleted:
        log.info("deleted %d erased revision file(s) from the local adapter caches", deleted)
    return deleted


class Forgetter:
    """Decides when this process sweeps: see the module's docstring."""

    def __init__(
        self,
        worker_name: str,
        clock: Callable[[], float] = time.monotonic,
        sweep: Callable[[str], tuple[set[str], set[str]]] = forget_erased,
    ):
        self.worker_name = worker_name
        self.clock = clock
        self.sweep = sweep
        self._mark_seen: object = _NEVER
        self._swept_at = -math.inf
        self._retry = False
        self._cache_down = False

    def tick(self) -> set[str]:
        """Sweep if something may have been erased since the last sweep; what was dropped."""
        now = self.clock()
        try:
            mark = erasure_mark()
        except Exception:  # the shared cache is down: the periodic sweep still comes
            if not self._cache_down:
                log.warning(
                    "cannot read the erasure mark; sweeping every %ss until it is back", FULL_SWEEP_SECONDS
                )
            self._cache_down, mark = True, self._mark_seen
        else:
            self._cache_down = False
        due = self._retry or mark != self._mark_seen or now - self._swept_at >= FULL_SWEEP_SECONDS
        if not due:
            return set()
        forgotten, still_in_use = self.sweep(self.worker_name)
        self._mark_seen, self._swept_at, self._retry = mark, now, bool(still_in_use)
        return forgotten
