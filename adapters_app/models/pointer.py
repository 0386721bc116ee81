from django.db import models

from adapters_app.models.append_only import AppendOnlyModel


class PointerEvent(AppendOnlyModel):
    """One move of an adapter's live pointer. Append-only: the history is the truth."""

    PROMOTE = "promote"
    ROLLBACK = "rollback"
    ACTIONS = [(PROMOTE, "promote"), (ROLLBACK, "rollback")]

    adapter = models.ForeignKey(
        "adapters_app.Adapter", on_delete=models.CASCADE, related_name="pointer_events"
    )
    action = models.CharField(max_length=20, choices=ACTIONS)
    from_revision = models.ForeignKey(
        "adapters_app.Revision", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    to_revision = models.ForeignKey("adapters_app.Revision", on_delete=models.PROTECT, related_name="+")
    actor = models.CharField(max_length=150)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        # The overview's recent moves, newest first across the fleet.
        indexes = [models.Index(fields=["created_at", "id"], name="pointer_event_created")]

    def __str__(self) -> str:
        frm = self.from_revision.label if self.from_revision else "-"
        return f"{self.action} {frm} → {self.to_revision.label}"
