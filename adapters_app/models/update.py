from django.db import models
from django.db.models import Q


class PersonalUpdate(models.Model):
    """Something a person said in use that should reach their adapter: feedback on an
    answer (a rating, perhaps a correction) or a stated memory (a fact, a preference).

    The content is written once; only `state` and the retrain that took it move, through
    `adapters_app.lifecycle.updates`. Pending updates wait for a retrain; a retrain takes
    them (`training`); its revision either goes live (`applied`) or fails its gate, and
    then they are `held` for the operator, who retries or dismisses them. Updates that teach
    nothing (a bare rating, a statement with no fact) are `recorded` and stay so."""

    FEEDBACK, MEMORY = "feedback", "memory"
    KINDS = [(FEEDBACK, "feedback"), (MEMORY, "memory")]
    PENDING, TRAINING, HELD, APPLIED, DISMISSED = "pending", "training", "held", "applied", "dismissed"
    # Nothing to train: a rating without a correction (the promotion watch counts it), or
    # a statement with no fact in it (kept for the operator to read).
    RECORDED = "recorded"
    STATES = [
        (RECORDED, "recorded: nothing to train"),
        (PENDING, "pending"),
        (TRAINING, "in a retrain"),
        (HELD, "held: its retrain failed the gate"),
        (APPLIED, "applied: live"),
        (DISMISSED, "dismissed"),
    ]
    # What a retrain may take: new updates, and held ones the operator sends again.
    WAITING = (PENDING, HELD)

    person = models.ForeignKey("adapters_app.Person", on_delete=models.CASCADE, related_name="updates")
    adapter = models.ForeignKey("adapters_app.Adapter", on_delete=models.CASCADE, related_name="updates")
    kind = models.CharField(max_length=10, choices=KINDS)
    # feedback: the answer it rates, as served
    completion_id = models.CharField(max_length=80, blank=True, db_index=True)
    revision = models.ForeignKey(
        "adapters_app.Revision",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The revision that gave the rated answer (none for a memory)",
    )
    rating = models.SmallIntegerField(null=True, blank=True, help_text="+1 good, -1 bad")
    prompt = models.JSONField(default=list, blank=True, help_text="The conversation the answer replied to")
    answer = models.TextField(blank=True)
    correction = models.TextField(blank=True)
    note = models.TextField(blank=True)
    # memory: the statement, and the fact read from it (or from a correction)
    text = models.TextField(blank=True)
    fact_key = models.CharField(max_length=80, blank=True)
    fact_value = models.CharField(max_length=200, blank=True)

    idempotency_key = models.CharField(max_length=200, blank=True)
    state = models.CharField(max_length=10, choices=STATES, default=PENDING)
    retrain_job = models.ForeignKey(
        "adapters_app.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="updates"
    )
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # A retried POST with the same key lands once.
            models.UniqueConstraint(
                fields=["person", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="update_idempotent_per_person",
            )
        ]
        indexes = [
            models.Index(fields=["adapter", "state", "created_at"], name="update_adapter_state"),
            models.Index(fields=["created_at", "id"], name="update_created"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} #{self.pk} for {self.person_id}"

    @property
    def summary(self) -> str:
        if self.kind == self.MEMORY:
            return self.text
        verdict = {1: "rated up", -1: "rated down"}.get(self.rating, "feedback")
        return f"{verdict}: {self.correction}" if self.correction else verdict


class RetrainPolicy(models.Model):
    """When an adapter retrains from its pending updates, and how its promotions are watched."""

    MANUAL, AFTER_UPDATES, SCHEDULE = "manual", "after_updates", "schedule"
    MODES = [
        (MANUAL, "manual: the operator starts it"),
        (AFTER_UPDATES, "after N pending updates"),
        (SCHEDULE, "on a schedule, when updates are pending"),
    ]

    adapter = models.OneToOneField(
        "adapters_app.Adapter", on_delete=models.CASCADE, related_name="retrain_policy"
    )
    mode = models.CharField(max_length=16, choices=MODES, default=MANUAL)
    after_updates = models.PositiveIntegerField(default=5)
    every_hours = models.FloatField(default=24.0)
    # Continue from the live revision (default) or train the updated set from scratch.
    fresh_start = models.BooleanField(default=False)
    # Automatic rollback: within `watch_hours` of an automatic promotion, once at least
    # `min_feedback` ratings of the new revision are in, roll back when its share of
    # negative ratings exceeds the previous revision's by more than `rollback_margin`.
    watch_hours = models.FloatField(default=24.0)
    min_feedback = models.PositiveIntegerField(default=5)
    rollback_margin = models.FloatField(default=0.2)
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["mode", "next_run_at"], name="retrain_policy_due")]

    def __str__(self) -> str:
        return f"{self.mode} policy of adapter {self.adapter_id}"
