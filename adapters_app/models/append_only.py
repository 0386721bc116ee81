"""Rows that are written once: revisions, pointer events, audit events, evaluations."""

from django.db import models


class ImmutableRowError(RuntimeError):
    """Raised on any attempt to change a row that is write-once by design."""


class AppendOnlyQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise ImmutableRowError(f"{self.model.__name__} rows are write-once; refusing update()")

    def bulk_update(self, objs, fields, batch_size=None):
        raise ImmutableRowError(f"{self.model.__name__} rows are write-once; refusing bulk_update()")


class AppendOnlyModel(models.Model):
    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ImmutableRowError(
                f"{type(self).__name__} {self.pk} is write-once; create a new one instead"
            )
        super().save(*args, **kwargs)
