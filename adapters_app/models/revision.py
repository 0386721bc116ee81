from django.db import models
from django.urls import reverse

from adapters_app.models.append_only import AppendOnlyModel


class Revision(AppendOnlyModel):
    """One immutable adapter payload and the provenance that made it.

    Write-once: the payload lives in the content-addressed store under `sha256`,
    and no code path may change this row after it is created.
    """

    adapter = models.ForeignKey("adapters_app.Adapter", on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64, db_index=True)
    size_bytes = models.BigIntegerField()
    rank = models.PositiveIntegerField()
    parameters = models.BigIntegerField(help_text="Trainable adapter parameters")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="children"
    )

    # Provenance
    dataset = models.ForeignKey(
        "adapters_app.Dataset", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    dataset_sha256 = models.CharField(max_length=64)
    dataset_rows = models.PositiveIntegerField()
    training_config = models.JSONField()
    seed = models.BigIntegerField()
    init_method = models.CharField(max_length=40)
    base_digest = models.CharField(max_length=64)
    code_version = models.CharField(max_length=80)
    job = models.ForeignKey(
        "adapters_app.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    final_loss = models.FloatField(null=True, blank=True)
    # A retrain from a person's updates (lifecycle/updates.py): the digest of what they
    # taught, how many, the objective, the revision it continued from, the rows it dropped.
    updates = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["adapter", "number"], name="revision_number_unique")]
        ordering = ["adapter", "-number"]
        # The revisions list reads newest first across the fleet (keyset pages).
        indexes = [models.Index(fields=["created_at", "id"], name="revision_created")]

    def __str__(self) -> str:
        return f"{self.adapter.handle}@{self.label}"

    @property
    def label(self) -> str:
        return f"r{self.number}"

    def get_absolute_url(self) -> str:
        adapter = self.adapter
        return reverse("console:revision", args=[adapter.person.handle, adapter.name, self.label])
