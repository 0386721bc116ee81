"""Celery worker processes, and what each of them holds in memory, as they last reported it.

Workers write these rows: a worker's heartbeat (`workers/heartbeat.py`) its `Worker` row,
and one writer per worker process (`workers/residency_report.py:ResidencyWriter`) the
residency rows, from what its holders, heartbeat and erasure sweep hand over; the sweep of
silent workers (`lifecycle/fleet.py`) deletes a dead one's. The console only reads them.
Both tables stay small (one row per worker name, one per model a worker process holds),
so the overview can aggregate them on every view.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

# A worker that missed this many heartbeats in a row is presumed dead or wedged.
MISSED_BEATS = 3


class WorkerQuerySet(models.QuerySet):
    def with_health(self, health: str, now: datetime | None = None) -> "WorkerQuerySet":
        return self.filter(Worker.health_filter(health, now))

    def forget_residency(self) -> int:
        """Remove what these workers' processes reported holding (their ResidentAdapter and
        ResidencyStats rows): after a stop, a fresh start or a presumed death that memory
        is gone. Returns how many ResidentAdapter rows went."""
        ResidencyStats.objects.filter(worker__in=self).delete()
        return ResidentAdapter.objects.filter(worker__in=self).delete()[0]


class Worker(models.Model):
    """One Celery worker (`celery worker` main process), upserted by its heartbeat thread."""

    HEALTHY, STALE, STOPPED = "healthy", "stale", "stopped"
    HEALTHS = (HEALTHY, STALE, STOPPED)

    name = models.CharField(
        max_length=200, unique=True, help_text="Celery node name (demo@host); Job.worker holds the same"
    )
    hostname = models.CharField(max_length=200)
    pid = models.PositiveIntegerField(help_text="The main process (children serve tasks under prefork)")
    queues = models.JSONField(default=list, blank=True)
    concurrency = models.PositiveIntegerField(default=1)
    device = models.CharField(max_length=20, help_text="Where its runtime puts models: cpu or cuda")
    code_version = models.CharField(max_length=80)
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)

    objects = WorkerQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("console:worker", args=[self.name])

    # --- health: the one rule, in SQL (filters, counts) and in Python (one row) ---------
    @staticmethod
    def stale_after() -> timedelta:
        return timedelta(seconds=MISSED_BEATS * settings.MINT_WORKER_HEARTBEAT_SECONDS)

    @classmethod
    def health_filter(cls, health: str, now: datetime | None = None) -> Q:
        cutoff = (now or timezone.now()) - cls.stale_after()
        if health == cls.HEALTHY:
            return Q(stopped_at__isnull=True, last_seen_at__gte=cutoff)
        if health == cls.STALE:
            return Q(stopped_at__isnull=True, last_seen_at__lt=cutoff)
        if health == cls.STOPPED:
            return Q(stopped_at__isnull=False)
        raise ValueError(f"unknown worker health {health!r}; use one of {', '.join(cls.HEALTHS)}")

    @property
    def health(self) -> str:
        if self.stopped_at is not None:
            return self.STOPPED
        if self.last_seen_at < timezone.now() - self.stale_after():
            return self.STALE
        return self.HEALTHY


class ResidentAdapter(models.Model):
    """A model one worker process holds now: an attached adapter revision, or a base.

    Bases are rows too (`kind=base`, `sha256` = the base's weight digest, `revision`
    empty), since they take most of the memory; `base` is set on both kinds. Rows go
    when the runtime evicts the adapter, when the process is gone, and when the worker
    stops, so a stopped worker never looks as if it still held anything.
    """

    ADAPTER, BASE = "adapter", "base"
    KINDS = [(ADAPTER, "adapter"), (BASE, "base model")]
    # Where the weights sit: the runtime's cpu or gpu, and the residency manager's
    # tiers by the memory they live in (its device tier is gpu, or cpu on a CPU worker;
    # its local cache is disk). The disk tier is inclusive, so one process may hold an
    # adapter in memory and on disk at once: two rows.
    GPU, CPU, DISK = "gpu", "cpu", "disk"
    TIERS = [(GPU, "GPU memory"), (CPU, "CPU memory"), (DISK, "local disk")]
    MEMORY_TIERS = (GPU, CPU)
    # Which part of the process holds it. A worker process may hold one revision twice:
    # in its batched server (workers/serving.py), which answers /v1 requests and is what
    # routing follows, and in its one-at-a-time runtime (workers/runs.py's
    # AdapterRuntime), which evaluations, the playground and adapters the batched bank
    # cannot serve (DoRA, ...) use.
    SERVING, RUNTIME = "serving", "runtime"
    HOLDERS = [(SERVING, "batched server"), (RUNTIME, "one-at-a-time runtime")]

    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="resident")
    pid = models.PositiveIntegerField(help_text="The worker process holding it")
    kind = models.CharField(max_length=10, choices=KINDS, default=ADAPTER)
    tier = models.CharField(max_length=10, choices=TIERS)
    holder = models.CharField(max_length=10, choices=HOLDERS, default=SERVING)
    sha256 = models.CharField(max_length=64, help_text="The revision's sha256, or the base's weight digest")
    revision = models.ForeignKey(
        "adapters_app.Revision", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    base = models.ForeignKey(
        "adapters_app.BaseModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    bytes = models.BigIntegerField(help_text="Memory its tensors take in this process")
    loaded_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    uses = models.PositiveBigIntegerField(default=0)
    pinned = models.CharField(
        max_length=10, blank=True, help_text="The residency manager's tier a pin keeps it in, if pinned"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["worker", "pid", "holder", "sha256", "tier"], name="resident_unique_per_holder_tier"
            )
        ]
        # Most recently used first, never-used last on every database (PostgreSQL would put
        # NULLs first in a descending order, SQLite last).
        ordering = ["kind", models.F("last_used_at").desc(nulls_last=True), "id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.sha256[:12]} on {self.worker_id}/{self.pid} ({self.holder}, {self.tier})"


class ResidencyStats(models.Model):
    """What one residency manager (one per base in a worker process) reports of one tier.

    Tiers are the manager's own: `device` (GPU memory, or host memory on a CPU worker:
    `memory` says which, matching ResidentAdapter's gpu/cpu), `cpu`, `disk` (the local
    cache) and `store` (the shared store: no budget, never evicted). Counters are the
    manager's totals since its process started. The cold-load figures on a tier's row
    are for loads served *from* that tier (cpu: host to device; disk: a local file;
    store: the shared store), so the device row has none: a device hit is no load.
    Written every second or two by `workers/residency_report.py`; rows go with their
    process, like ResidentAdapter's.
    """

    DEVICE, CPU, DISK, STORE = "device", "cpu", "disk", "store"
    TIERS = [(DEVICE, "device"), (CPU, "cpu (parked)"), (DISK, "local disk"), (STORE, "shared store")]
    MEMORY = {"gpu": "GPU memory", "cpu": "host memory", "disk": "local disk", "store": "shared store"}

    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="residency_stats")
    pid = models.PositiveIntegerField(help_text="The worker process whose manager reports it")
    base_digest = models.CharField(max_length=64, blank=True, help_text="The manager's base (one per base)")
    base = models.ForeignKey(
        "adapters_app.BaseModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    tier = models.CharField(max_length=10, choices=TIERS)
    memory = models.CharField(max_length=10, help_text="Where the tier lives: gpu, cpu, disk or store")
    budget_bytes = models.BigIntegerField(null=True, blank=True, help_text="None for the store")
    max_entries = models.PositiveIntegerField(null=True, blank=True, help_text="The device tier's slots")
    used_bytes = models.BigIntegerField(default=0)
    entries = models.PositiveIntegerField(default=0)
    hits = models.PositiveBigIntegerField(default=0)
    misses = models.PositiveBigIntegerField(default=0)
    evictions = models.PositiveBigIntegerField(default=0)
    cold_loads = models.PositiveBigIntegerField(default=0, help_text="Loads served from this tier")
    cold_load_p50_ms = models.FloatField(null=True, blank=True)
    cold_load_p95_ms = models.FloatField(null=True, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["worker", "pid", "base_digest", "tier"], name="residency_stats_unique_per_tier"
            )
        ]
        ordering = ["pid", "base_digest", "id"]

    def __str__(self) -> str:
        return f"{self.tier} of {self.worker_id}/{self.pid}"

    @property
    def requests(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.requests if self.requests else None

    @property
    def used_fraction(self) -> float | None:
        return min(1.0, self.used_bytes / self.budget_bytes) if self.budget_bytes else None

    @property
    def label(self) -> str:
        if self.tier == self.DEVICE:
            return f"device ({self.MEMORY.get(self.memory, self.memory)})"
        return self.get_tier_display()
