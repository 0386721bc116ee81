from django.db import models


class BaseModel(models.Model):
    """A registered foundation model in a local HF folder, identified by its weights' digest."""

    name = models.SlugField(max_length=100, unique=True)
    path = models.CharField(max_length=500, help_text="Local HF-format folder")
    digest = models.CharField(max_length=64, unique=True, help_text="sha256 of the weight files")
    parameters = models.BigIntegerField()
    architecture = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
