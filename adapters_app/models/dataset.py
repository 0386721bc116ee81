from django.db import models


class Dataset(models.Model):
    """A person's JSONL training or evaluation data, stored by content (sha256)."""

    TRAIN = "train"
    EVAL = "eval"
    PURPOSES = [(TRAIN, "training"), (EVAL, "evaluation")]

    person = models.ForeignKey("adapters_app.Person", on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=200)
    purpose = models.CharField(max_length=10, choices=PURPOSES, default=TRAIN)
    format = models.CharField(max_length=20)
    sha256 = models.CharField(max_length=64)
    rows = models.PositiveIntegerField()
    size_bytes = models.BigIntegerField()
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["person", "sha256"], name="dataset_content_unique_per_person")
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.rows} rows, {self.sha256[:10]})"
