from django.db import models
from django.urls import reverse

from adapters_app.models.append_only import AppendOnlyModel


class Study(models.Model):
    """A footprint study: a grid of adapter settings, each trained and evaluated for a
    cohort (generated people, or people of the fleet) and several seeds, to find how small an adapter can be
    and still behave reliably (see docs/studies.md).

    The grid and recipe never change after creation; the cells carry the progress."""

    name = models.CharField(max_length=100)
    # {"bases": [names], "ranks": [...], "targets": [...], "inits": [...], "seeds": [...]}
    grid = models.JSONField()
    # {"world_seed": int, "people": int}: generated people from workers/engine/persona_world.py;
    # or {"adapters": [{"handle", "train": {"id", "sha256", "name"}, "eval": {…}}], "people": int}:
    # people of the fleet, with the datasets they train and are graded on pinned at creation.
    cohort = models.JSONField()
    # TrainingConfig settings every cell shares (rank, targets, init, seed and alpha are per cell/run)
    training = models.JSONField(default=dict)
    # {base name: {setting: value}}: what differs for one base (a learning rate chosen for it
    # by a sweep, say); a base not named trains with `training` as it is.
    training_per_base = models.JSONField(default=dict, blank=True)
    reliability_target = models.FloatField(default=0.95, help_text="share of runs that must pass the gate")
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return f"study {self.pk} ({self.name})"

    def get_absolute_url(self) -> str:
        return reverse("console:study", args=[self.pk])

    @property
    def people(self) -> int:
        return int(self.cohort["people"])

    @property
    def is_fleet(self) -> bool:
        """Whether the cohort is people of the fleet (even once erasure has emptied it)."""
        return "adapters" in self.cohort

    @property
    def fleet_handles(self) -> list[str]:
        """The fleet adapters the cohort is made of; empty for generated people."""
        return [member["handle"] for member in self.cohort.get("adapters", [])]

    @property
    def seeds(self) -> list[int]:
        return list(self.grid["seeds"])


class StudyCell(models.Model):
    """One point of a study's grid: a base, a rank, target modules and an init. Its runs
    (person x seed) are trained and graded by a job of kind `study`; a cell resumed after
    a cancel or a failure gets a new job that skips the runs already recorded."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="cells")
    base = models.ForeignKey("adapters_app.BaseModel", on_delete=models.PROTECT, related_name="+")
    rank = models.PositiveIntegerField()
    targets = models.CharField(max_length=20)
    init = models.CharField(max_length=20)
    job = models.ForeignKey(
        "adapters_app.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    runs_total = models.PositiveIntegerField()
    # The same for every run of the cell: what one adapter of these settings costs.
    trainable_parameters = models.PositiveBigIntegerField(null=True, blank=True)
    stored_parameters = models.PositiveBigIntegerField(null=True, blank=True)
    payload_bytes = models.PositiveBigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["study", "base__name", "targets", "init", "rank"]
        constraints = [
            models.UniqueConstraint(
                fields=["study", "base", "rank", "targets", "init"], name="one_cell_per_setting"
            )
        ]

    def __str__(self) -> str:
        return f"{self.base.name} r{self.rank} {self.targets} {self.init}"

    @property
    def label(self) -> str:
        return str(self)


class StudyRun(AppendOnlyModel):
    """One person's adapter for one seed in one cell: its suite scores beside the bare
    base's on the same items, the gate verdict and whether it collapsed. Written once."""

    cell = models.ForeignKey(StudyCell, on_delete=models.CASCADE, related_name="runs")
    person = models.CharField(max_length=100)
    seed = models.IntegerField()
    scores = models.JSONField()  # suite -> pass rate of this adapter
    bare_scores = models.JSONField()  # suite -> pass rate of the bare base on the same items
    passed = models.BooleanField()
    gate_failures = models.JSONField(default=list)
    collapsed = models.BooleanField()
    collapse_reasons = models.JSONField(default=list)
    first_loss = models.FloatField()
    final_loss = models.FloatField()
    losses = models.JSONField(default=list)  # a thinned training curve
    train_seconds = models.FloatField(help_text="this run's share of its training pass")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["cell", "person", "seed"]
        constraints = [
            models.UniqueConstraint(fields=["cell", "person", "seed"], name="one_run_per_person_seed")
        ]

    def __str__(self) -> str:
        return f"{self.cell} {self.person} seed {self.seed}"
