"""The fleet's upkeep: a worker that went silent for good is marked stopped.

A worker killed outright (SIGKILL, a lost machine) never writes its `stopped_at`: its
row turns stale after three missed heartbeats, and routing already skips it then. But
the console would go on listing it as stale and showing what it held, for ever. Past
MINT_SILENT_WORKER_SECONDS of silence the sweep presumes it dead: the row is marked
stopped (at the last time it was seen) and the residency it reported is removed, as a
warm shutdown would have done. Should the worker come back after all, its next
heartbeat finds its row stopped and announces it afresh (`workers/heartbeat.py`).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from adapters_app.lifecycle import audit
from adapters_app.lifecycle.actors import Actor
from adapters_app.models import Worker


def sweep_silent_workers(*, silent_for: float | None = None) -> list[str]:
    """Mark stopped every running worker unseen for `silent_for` seconds; their names."""
    seconds = settings.MINT_SILENT_WORKER_SECONDS if silent_for is None else silent_for
    cutoff = timezone.now() - timedelta(seconds=seconds)
    silent = Worker.objects.filter(stopped_at__isnull=True, last_seen_at__lt=cutoff)
    swept = []
    for worker in silent:
        with transaction.atomic():
            # Conditional on the silence still holding: a heartbeat that landed since the
            # query keeps the worker running.
            if not silent.filter(pk=worker.pk).update(stopped_at=worker.last_seen_at):
                continue
            held = Worker.objects.filter(pk=worker.pk).forget_residency()
            audit.record(
                Actor.system("sweeper"),
                "worker.presume_dead",
                worker,
                after={
                    "last_seen_at": worker.last_seen_at.isoformat(),
                    "silent_seconds": seconds,
                    "resident_rows_removed": held,
                },
            )
        swept.append(worker.name)
    return swept
