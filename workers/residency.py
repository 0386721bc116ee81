"""What a worker process's AdapterRuntime and batched server hold, kept in ResidentAdapter rows.

The runtime (`workers/engine`, no Django) calls a `ResidencyReporter` whenever it loads,
uses or evicts a model. The reporter writes only while a Celery worker runs a task, so
the engine used in a test process or a management command reports nothing. Uses are
counted in memory and written at most once a second per model: inference must not wait
on the database for a counter.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from celery import current_task
from django.db import connection
from django.db.models import F
from django.utils import timezone

from adapters_app.models import BaseModel, ResidentAdapter, Revision, Worker
from workers.engine.runtime import ResidencyEvent

log = logging.getLogger(__name__)

USE_WRITE_SECONDS = 1.0


def worker_name() -> str | None:
    """The Celery node running the current task; None outside a worker's task."""
    request = getattr(current_task, "request", None)
    return getattr(request, "hostname", None) or None


def tier_of(device: str) -> str:
    return ResidentAdapter.GPU if device.startswith("cuda") else ResidentAdapter.CPU


class ResidencyReporter:
    """The observer of one holder in a worker process: the one-at-a-time runtime's
    (`AdapterRuntime(observer=…)`, holder `runtime`) or the batched server's bank
    (`serving.observe`, holder `serving`). Each writes and removes only its holder's rows,
    so an evaluation loading a revision never looks to the router like a server holding it."""

    def __init__(self, holder: str, use_write_seconds: float = USE_WRITE_SECONDS):
        if holder not in dict(ResidentAdapter.HOLDERS):
            raise ValueError(f"unknown holder {holder!r}")
        self.holder = holder
        self.use_write_seconds = use_write_seconds
        self._lock = threading.Lock()
        # (worker name, sha256) -> [uses not written yet, time of the newest one]
        self._pending: dict[tuple[str, str], list] = {}
        self._written: dict[tuple[str, str], float] = {}  # -> monotonic time of the last write
        self._flusher: threading.Timer | None = None

    def __call__(self, event: ResidencyEvent) -> None:
        worker = worker_name()
        if worker is None:
            return
        if event.action == "loaded":
            self.loaded(worker, event)
        elif event.action == "used":
            self.used(worker, event.sha256)
        elif event.action == "evicted":
            self.evicted(worker, event.sha256, tier_of(event.device))

    def loaded(self, worker_name: str, event: ResidencyEvent) -> None:
        worker = Worker.objects.filter(name=worker_name, stopped_at=None).first()
        if worker is None:
            return  # stopping, or its heartbeat never wrote the row: nothing to hang it on
        revision = None
        if event.kind == ResidentAdapter.ADAPTER:
            revision = Revision.objects.filter(sha256=event.sha256).order_by("pk").first()
        ResidentAdapter.objects.update_or_create(
            worker=worker,
            pid=os.getpid(),
            holder=self.holder,
            sha256=event.sha256,
            tier=tier_of(event.device),
            defaults={
                "kind": event.kind,
                "revision": revision,
                "base": BaseModel.objects.filter(digest=event.base_digest).first(),
                "bytes": event.bytes,
                "loaded_at": timezone.now(),
                "last_used_at": None,
                "uses": 0,
            },
        )
        self._forget(worker_name, event.sha256)
        if event.kind == ResidentAdapter.ADAPTER:
            from workers.residency_report import ensure_reporting

            ensure_reporting(worker_name)  # its rounds also drop erased revisions' copies

    def used(self, worker_name: str, sha256: str) -> None:
        key, now = (worker_name, sha256), time.monotonic()
        with self._lock:
            pending = self._pending.setdefault(key, [0, None])
            pending[0] += 1
            pending[1] = timezone.now()
            last = self._written.get(key)
            if last is not None and now - last < self.use_write_seconds:
                self._arm_flusher()
                return
            uses, at = self._pending.pop(key)
            self._written[key] = now
        self._write_uses(key, uses, at)

    def evicted(self, worker_name: str, sha256: str, tier: str) -> None:
        self._forget(worker_name, sha256)
        ResidentAdapter.objects.filter(
            worker__name=worker_name, pid=os.getpid(), holder=self.holder, sha256=sha256, tier=tier
        ).delete()

    def _forget(self, worker_name: str, sha256: str) -> None:
        with self._lock:
            self._pending.pop((worker_name, sha256), None)
            self._written.pop((worker_name, sha256), None)

    def _write_uses(self, key: tuple[str, str], uses: int, at) -> None:
        worker_name, sha256 = key
        ResidentAdapter.objects.filter(
            worker__name=worker_name,
            pid=os.getpid(),
            holder=self.holder,
            sha256=sha256,
            tier__in=ResidentAdapter.MEMORY_TIERS,
        ).update(uses=F("uses") + uses, last_used_at=at)

    def _arm_flusher(self) -> None:
        """Write throttled uses a moment later, so the last ones before a quiet spell show too."""
        if self._flusher is None:
            self._flusher = threading.Timer(self.use_write_seconds, self._flush)
            self._flusher.daemon = True
            self._flusher.start()

    def _flush(self) -> None:
        with self._lock:
            self._flusher = None
            due, self._pending = self._pending, {}
            now = time.monotonic()
            for key in due:
                self._written[key] = now
        try:
            for key, (uses, at) in due.items():
                self._write_uses(key, uses, at)
        except Exception:
            log.exception("could not write adapter uses")
        finally:
            connection.close()  # this timer thread's own connection
