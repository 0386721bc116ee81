import re

from django.core.exceptions import ValidationError
from django.db import models
from django.urls import reverse

# Matched whole (fullmatch): with `^…$` and match(), "alice\n" passed, as `$` also matches
# before a final newline.
HANDLE_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def is_handle(value: object) -> bool:
    """Whether `value` is a name people, adapters and base models may have."""
    return isinstance(value, str) and HANDLE_RE.fullmatch(value) is not None


def validate_handle(value: str) -> None:
    if not is_handle(value):
        raise ValidationError(
            f"{value!r} is not a valid name: use 1-63 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )


class Person(models.Model):
    """The human whose personal state adapters hold (not a console login)."""

    handle = models.CharField(max_length=63, unique=True, validators=[validate_handle])
    display_name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["handle"]
        # The people list's "newest first" sort walks this index (keyset pages).
        indexes = [models.Index(fields=["created_at", "id"], name="person_created")]

    def __str__(self) -> str:
        return self.handle

    def get_absolute_url(self) -> str:
        return reverse("console:person", args=[self.handle])


class Adapter(models.Model):
    """A stable identity `<person>/<name>`, bound to one base model digest."""

    person = models.ForeignKey(Person, on_delete=models.CASCADE, related_name="adapters")
    name = models.CharField(max_length=63, validators=[validate_handle])
    base = models.ForeignKey("adapters_app.BaseModel", on_delete=models.PROTECT)
    base_digest = models.CharField(max_length=64, editable=False)
    live_revision = models.ForeignKey(
        "adapters_app.Revision", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    description = models.TextField(blank=True)
    # The promotion gate: suite thresholds checked against `eval_dataset`
    # (see adapters_app.lifecycle.gates). No eval dataset, no gate.
    eval_dataset = models.ForeignKey(
        "adapters_app.Dataset", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    gate = models.JSONField(default=dict, blank=True)
    auto_promote = models.BooleanField(
        default=False, help_text="After training, evaluate on the eval dataset and promote if the gate passes"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    # Kept by the lifecycle services so the adapters list can filter and sort a
    # million rows on an index instead of joining revisions and evaluations per page.
    last_trained_at = models.DateTimeField(null=True, blank=True, editable=False)
    UNTRAINED, UNGATED, UNEVALUATED = "untrained", "ungated", "unevaluated"
    PASSED, FAILED = "passed", "failed"
    GATE_STATUSES = [
        (UNTRAINED, "no revisions"),
        (UNGATED, "no gate"),
        (UNEVALUATED, "not evaluated"),
        (PASSED, "passed"),
        (FAILED, "failed"),
    ]
    gate_status = models.CharField(
        max_length=12,
        choices=GATE_STATUSES,
        default=UNTRAINED,
        editable=False,
        help_text="The gate verdict of the newest revision (lifecycle.gates.refresh_gate_status)",
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["person", "name"], name="adapter_unique_per_person")]
        ordering = ["person__handle", "name"]
        indexes = [
            models.Index(fields=["last_trained_at", "id"], name="adapter_last_trained"),
            models.Index(fields=["created_at", "id"], name="adapter_created"),
            models.Index(fields=["gate_status", "last_trained_at", "id"], name="adapter_gate_trained"),
        ]

    def __str__(self) -> str:
        return self.handle

    def get_absolute_url(self) -> str:
        return reverse("console:adapter", args=[self.person.handle, self.name])

    @property
    def handle(self) -> str:
        return f"{self.person.handle}/{self.name}"
