from datetime import timedelta

from django.db import models
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.urls import reverse
from django.utils import timezone


class Job(models.Model):
    """Train / evaluate / infer work: a small state machine with progress and a heartbeat.

    Transitions are claims without locks: `filter(pk=…, state=FROM).update(state=TO)`
    changes one row or none, and none means another process got there first.
    """

    TRAIN, EVALUATE, INFER, STUDY = "train", "evaluate", "infer", "study"
    # A study job trains and grades one cell of a footprint study (params["cell"]); it has no adapter.
    KINDS = [(TRAIN, "train"), (EVALUATE, "evaluate"), (INFER, "infer"), (STUDY, "study cell")]

    QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = ("queued", "running", "succeeded", "failed", "cancelled")
    STATES = [(s, s) for s in (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)]
    ACTIVE_STATES = (QUEUED, RUNNING)
    FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)

    kind = models.CharField(max_length=20, choices=KINDS)
    state = models.CharField(max_length=20, choices=STATES, default=QUEUED, db_index=True)
    adapter = models.ForeignKey(
        "adapters_app.Adapter", null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    revision = models.ForeignKey(
        "adapters_app.Revision",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        help_text="Revision evaluated or served",
    )
    dataset = models.ForeignKey(
        "adapters_app.Dataset", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    result_revision = models.ForeignKey(
        "adapters_app.Revision", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    params = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)

    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    loss_points = models.JSONField(default=list, blank=True)  # [[step, loss], ...]
    log = models.TextField(blank=True)

    queue = models.CharField(max_length=100, blank=True)
    celery_task_id = models.CharField(max_length=64, blank=True)
    worker = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    error = models.TextField(blank=True)

    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        target = self.adapter.handle if self.adapter_id else self.params.get("cell_label", "-")
        return f"{self.kind} job {self.pk} ({target})"

    def get_absolute_url(self) -> str:
        return reverse("console:job", args=[self.pk])

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES

    @property
    def progress_percent(self) -> int:
        if self.state == self.SUCCEEDED:
            return 100
        if not self.total_steps:
            return 0
        return min(100, int(100 * self.step / self.total_steps))

    @property
    def eta_seconds(self) -> float | None:
        """Remaining time at the mean step rate so far."""
        if self.state != self.RUNNING or not self.started_at or not self.step or not self.total_steps:
            return None
        elapsed = (timezone.now() - self.started_at).total_seconds()
        return max(0.0, elapsed / self.step * (self.total_steps - self.step))

    # --- transitions (each a single conditional UPDATE) ----------------------
    def _move(self, from_states, **changes) -> bool:
        updated = Job.objects.filter(pk=self.pk, state__in=from_states).update(**changes)
        if updated:
            for field, value in changes.items():
                setattr(self, field, value)
        return bool(updated)

    def claim(self, worker: str) -> bool:
        now = timezone.now()
        return self._move([self.QUEUED], state=self.RUNNING, worker=worker, started_at=now, heartbeat_at=now)

    # The log is for reading on the job page, not an archive: past this many characters
    # further lines are dropped (the worker says so once).
    LOG_LIMIT = 64_000
    LOG_FULL = "(log full: later lines dropped)\n"

    def append_log(self, message: str) -> None:
        """Add one timestamped line, in one UPDATE (the row's other fields untouched)."""
        line = f"{timezone.now():%H:%M:%S} {message}\n"
        if len(self.log) + len(line) > self.LOG_LIMIT:
            if self.log.endswith(self.LOG_FULL):
                return
            line = self.LOG_FULL
        appended = Concat(F("log"), Value(line), output_field=models.TextField())
        Job.objects.filter(pk=self.pk).update(log=appended)
        self.log += line

    def beat(self) -> None:
        Job.objects.filter(pk=self.pk, state=self.RUNNING).update(heartbeat_at=timezone.now())

    def report_progress(self, step: int, total: int, loss_points: list) -> bool:
        """Write progress; returns False if the job was cancelled meanwhile, or deleted (its
        person was erased): the work must stop, not run on with data that is gone."""
        self._move(
            [self.RUNNING],
            step=step,
            total_steps=total,
            loss_points=loss_points,
            heartbeat_at=timezone.now(),
        )
        return Job.objects.filter(pk=self.pk, cancel_requested=False).exists()

    def succeed(self, **changes) -> bool:
        return self._move([self.RUNNING], state=self.SUCCEEDED, finished_at=timezone.now(), **changes)

    def fail(self, error: str) -> bool:
        return self._move(self.ACTIVE_STATES, state=self.FAILED, error=error, finished_at=timezone.now())

    def mark_cancelled(self) -> bool:
        return self._move(self.ACTIVE_STATES, state=self.CANCELLED, finished_at=timezone.now())

    @classmethod
    def stale(cls, older_than: timedelta):
        return cls.objects.filter(state=cls.RUNNING, heartbeat_at__lt=timezone.now() - older_than)
