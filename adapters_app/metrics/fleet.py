"""What the fleet's tables and Redis say, read at each scrape: jobs by state, Celery queue
depths, workers by health, and each live worker process's residency (bytes, hits, misses,
evictions, cold loads and their latency) as its manager last reported it (ResidencyStats).

These are gauges of the present, computed by small aggregate queries when Prometheus asks,
so every web process answers the same and none has to keep them.
"""

from __future__ import annotations

import logging

import redis
from django.conf import settings
from django.db.models import Count
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from adapters_app.lifecycle.inference import redis_client
from adapters_app.lifecycle.routing import serving_queue
from adapters_app.models import Job, ResidencyStats, Worker

log = logging.getLogger(__name__)

# kombu's Redis transport keeps a queue's messages of each priority step in a list of its
# own: the queue's name, then the name + "\x06\x16" + the step.
PRIORITY_SUFFIXES = ("", *(f"\x06\x16{step}" for step in (1, 2, 3, 4, 5, 6, 7, 8, 9)))


class FleetCollector:
    """A prometheus-client collector over the database and Redis."""

    def describe(self):
        return []  # computed at scrape time; nothing to check at registration

    def collect(self):
        yield self._jobs()
        yield self._workers()
        yield from self._residency()
        queues = self._queues()
        if queues is not None:
            yield queues

    def _jobs(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily("mint_jobs", "Jobs by kind and state", labels=["kind", "state"])
        counted = {
            (row["kind"], row["state"]): row["n"]
            for row in Job.objects.values("kind", "state").annotate(n=Count("id")).order_by()
        }
        for kind, _ in Job.KINDS:
            for state, _ in Job.STATES:
                family.add_metric([kind, state], counted.get((kind, state), 0))
        return family

    def _workers(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily("mint_workers", "Worker processes by health", labels=["health"])
        for health in Worker.HEALTHS:
            family.add_metric([health], Worker.objects.with_health(health).count())
        return family

    def _residency(self):
        labels = ["worker", "pid", "base", "tier"]
        gauges = {
            "used_bytes": GaugeMetricFamily("mint_residency_bytes", "Bytes held in the tier", labels=labels),
            "budget_bytes": GaugeMetricFamily(
                "mint_residency_budget_bytes", "The tier's budget in bytes", labels=labels
            ),
            "entries": GaugeMetricFamily(
                "mint_residency_entries", "Adapters held in the tier", labels=labels
            ),
        }
        counters = {
            "hits": CounterMetricFamily("mint_residency_hits", "Requests the tier served", labels=labels),
            "misses": CounterMetricFamily("mint_residency_misses", "Requests the tier missed", labels=labels),
            "evictions": CounterMetricFamily("mint_residency_evictions", "Adapters evicted", labels=labels),
            "cold_loads": CounterMetricFamily(
                "mint_residency_cold_loads", "Loads served from the tier", labels=labels
            ),
        }
        latency = GaugeMetricFamily(
            "mint_residency_cold_load_seconds",
            "Cold-load latency from the tier, as the worker's quantiles (p50, p95)",
            labels=[*labels, "quantile"],
        )
        live = ResidencyStats.objects.filter(worker__in=Worker.objects.with_health(Worker.HEALTHY))
        for stats in live.select_related("worker").order_by("worker__name", "pid", "tier"):
            values = [stats.worker.name, str(stats.pid), stats.base_digest[:12], stats.tier]
            for field, family in {**gauges, **counters}.items():
                value = getattr(stats, field)
                if value is not None:
                    family.add_metric(values, value)
            for quantile, ms in (("0.5", stats.cold_load_p50_ms), ("0.95", stats.cold_load_p95_ms)):
                if ms is not None:
                    latency.add_metric([*values, quantile], ms / 1000)
        yield from gauges.values()
        yield from counters.values()
        yield latency

    def _queues(self) -> GaugeMetricFamily | None:
        family = GaugeMetricFamily("mint_queue_depth", "Tasks waiting in each Celery queue", labels=["queue"])
        names = {settings.CELERY_TASK_DEFAULT_QUEUE, serving_queue()}
        for queues in Worker.objects.filter(stopped_at__isnull=True).values_list("queues", flat=True):
            names.update(queues or [])
        try:
            pipe = redis_client().pipeline(transaction=False)
            for name in sorted(names):
                for suffix in PRIORITY_SUFFIXES:
                    pipe.llen(name + suffix)
            lengths = iter(pipe.execute())
        except redis.RedisError:
            log.warning("queue depths unavailable: Redis unreachable", exc_info=True)
            return None
        for name in sorted(names):
            family.add_metric([name], sum(next(lengths) for _ in PRIORITY_SUFFIXES))
        return family
