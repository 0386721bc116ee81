from django.db import models
from django.urls import reverse


class BaseModel(models.Model):
    """A registered foundation model in a local HF folder, identified by its weights' digest."""

    name = models.SlugField(max_length=100, unique=True)
    path = models.CharField(max_length=500, help_text="Local HF-format folder")
    digest = models.CharField(max_length=64, unique=True, help_text="sha256 of the weight files")
    parameters = models.BigIntegerField()
    architecture = models.CharField(max_length=100, blank=True)
    context_length = models.PositiveIntegerField(
        null=True, blank=True, help_text="Longest sequence its positions cover (max_position_embeddings)"
    )
    license = models.CharField(
        max_length=200, blank=True, help_text="As the source states it; empty if it did not say"
    )
    source = models.CharField(
        max_length=500,
        blank=True,
        help_text="What it was imported from: a path, or a pip package and version",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("console:base", args=[self.name])
