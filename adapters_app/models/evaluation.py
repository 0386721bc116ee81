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


class EvaluationItem(AppendOnlyModel):
    """One graded item of a suite evaluation: what was asked, expected, answered, and whether it passed."""

    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="items")
    item_id = models.CharField(max_length=200)
    prompt = models.TextField()
    expected = models.TextField()
    got = models.TextField()
    passed = models.BooleanField()
    detail = models.TextField(blank=True)

    class Meta:
        ordering = ["evaluation", "id"]

    def __str__(self) -> str:
        return f"{self.item_id}: {'pass' if self.passed else 'fail'}"
