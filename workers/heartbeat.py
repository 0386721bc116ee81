"""A worker's heartbeat: its `Worker` row, refreshed every MINT_WORKER_HEARTBEAT_SECONDS.

`mintweb.celery` imports this module, so the handlers below are connected in every
`celery worker` main process. On `worker_ready` the row is written as a fresh start and
a daemon thread keeps it fresh; on `worker_shutdown` (a warm shutdown: SIGTERM, Ctrl-C)
the worker is marked stopped and what its processes held is removed, since their memory
is gone with them. Those removals (and of what a process gone from the pool held) are
handed to the process's residency writer (`workers/residency_report.py`), the one writer
of those rows, which applies them after whatever it was handed before. A worker killed
outright stops beating and turns stale, and after MINT_SILENT_WORKER_SECONDS the sweep
marks it stopped too (adapters_app/lifecycle/fleet.py).

Only Celery is imported at module level: Django may not be set up yet when this loads.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import signals

log = logging.getLogger(__name__)

_heartbeat: WorkerHeartbeat | None = None


class WorkerHeartbeat:
    def __init__(self, consumer, interval: float):
        self.consumer, self.interval = consumer, interval
        self.name: str = consumer.hostname
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="worker-heartbeat", daemon=True)

    def start(self) -> None:
        # Written before the first task can run, so a model loaded by it has a row to hang on.
        try:
            self.announce()
        except Exception:
            log.exception("could not register worker %s; the heartbeat will retry", self.name)
        try:
            from django.conf import settings

            from workers.forgetting import prune_local_caches

            prune_local_caches(settings.MINT_RESIDENCY_CACHE_DIR)
        except Exception:
            log.exception("could not prune the local adapter caches; the processes' sweeps will")
        self._thread.start()
        threading.Thread(target=self._hold_lease, name="worker-lease", daemon=True).start()

    def stop(self) -> None:
        from django.utils import timezone

        from adapters_app.models import Worker
        from workers.residency_report import WorkerReset, process_writer

        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        now = timezone.now()
        # Stopped first: a process still writing then finds nothing to hang rows on.
        Worker.objects.filter(name=self.name).update(stopped_at=now, last_seen_at=now)
        process_writer(self.name).submit(WorkerReset(self.name), now=True)

    def announce(self) -> None:
        """Write the row as a fresh start: whatever a previous run under this name held is gone."""
        from django.utils import timezone

        from adapters_app.models import Worker
        from mintweb.version import code_version
        from workers.engine.base_models import pick_device
        from workers.residency_report import WorkerReset, process_writer

        now = timezone.now()
        Worker.objects.update_or_create(
            name=self.name,
            defaults={
                **self.facts(),
                "device": pick_device(),
                "code_version": code_version(),
                "started_at": now,
                "last_seen_at": now,
                "stopped_at": None,
            },
        )
        process_writer(self.name).submit(WorkerReset(self.name), now=True)

    def beat(self) -> None:
        """Refresh the row, drop what processes no longer in the pool were holding, and
        keep this process's residency managers reported (a solo pool serves here)."""
        from django.utils import timezone

        from adapters_app.models import Worker
        from workers.residency_report import PoolChanged, process_writer, report_from_heartbeat

        updated = Worker.objects.filter(name=self.name, stopped_at=None).update(
            last_seen_at=timezone.now(), **self.facts()
        )
        if not updated:
            # The row was deleted (by hand, in the admin), or the sweep presumed this
            # worker dead after a long silence (a wedged process that came back): start
            # afresh. What the pool's processes hold reappears as they next report.
            self.announce()
        pids = self.pool_pids()
        if pids:
            process_writer(self.name).submit(PoolChanged(self.name, frozenset(pids)), now=True)
        report_from_heartbeat(self.name)

    def facts(self) -> dict:
        return {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "queues": self.queues(),
            "concurrency": self.concurrency(),
        }

    def queues(self) -> list[str]:
        task_consumer = getattr(self.consumer, "task_consumer", None)
        if task_consumer is not None:
            queues = task_consumer.queues
        else:
            queues = self.consumer.app.amqp.queues.consume_from.values()
        return sorted({queue.name for queue in queues})

    def concurrency(self) -> int:
        pool = getattr(self.consumer, "pool", None)
        return int(getattr(pool, "num_processes", None) or self.consumer.controller.concurrency or 1)

    def pool_pids(self) -> list[int]:
        """The processes that run tasks: prefork's children, or this process for solo.
        Empty when the pool does not say (threads), and then nothing is pruned."""
        try:
            return [int(pid) for pid in self.consumer.pool.info.get("processes", [])]
        except Exception:  # the pool is starting or stopping
            return []

    def _hold_lease(self) -> None:
        """Renew this worker's lease in Redis three times a lease (liveness.py says why)."""
        from django.conf import settings

        from adapters_app.lifecycle import liveness

        every = settings.MINT_WORKER_LEASE_SECONDS / 3
        while True:
            try:
                liveness.renew(self.name)
            except Exception:
                log.warning("could not renew worker %s's lease; trying again", self.name, exc_info=True)
            if self._stop.wait(every):
                liveness.release(self.name)
                return

    def _loop(self) -> None:
        from django.db import connection

        try:
            while not self._stop.wait(self.interval):
                try:
                    self.beat()
                except Exception:
                    log.exception("worker heartbeat failed; trying again in %ss", self.interval)
                    connection.close()  # a broken connection is reopened on the next beat
        finally:
            connection.close()


@signals.worker_ready.connect
def start_heartbeat(sender, **kwargs) -> None:
    global _heartbeat
    from django.conf import settings

    from adapters_app.lifecycle.routing import worker_queue

    # A queue of its own, beside the shared one: the router sends a request here when
    # this worker holds its adapter (or is the least loaded). Added before the row is
    # written, so the router never picks a worker that is not listening yet. A training
    # worker (MINT_WORKER_SERVES off) has none: the router only picks workers that do.
    if settings.MINT_WORKER_SERVES:
        sender.add_task_queue(worker_queue(sender.hostname))
    _heartbeat = WorkerHeartbeat(sender, settings.MINT_WORKER_HEARTBEAT_SECONDS)
    _heartbeat.start()


@signals.worker_shutdown.connect
def stop_heartbeat(sender, **kwargs) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
