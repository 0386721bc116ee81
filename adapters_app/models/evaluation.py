from django.db import models

from adapters_app.models.append_only import AppendOnlyModel


class Evaluation(AppendOnlyModel):
    """Scores of one revision (or the bare base when `revision` is empty) on one dataset."""

    base = models.ForeignKey("adapters_app.BaseModel", on_delete=models.PROTECT, related_name="+")
    revision = models.ForeignKey(
        "adapters_app.Revision", null=True, blank=True, on_delete=models.CASCADE, related_name="evaluations"
    )
    dataset = models.ForeignKey(
        "adapters_app.Dataset", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    dataset_sha256 = models.CharField(max_length=64)
    suite = models.CharField(max_length=40, default="heldout")
    metrics = models.JSONField()
    job = models.ForeignKey(
        "adapters_app.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
