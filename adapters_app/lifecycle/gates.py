"""Promotion gates: per-adapter thresholds on evaluation suites.

A gate applies when the adapter has an evaluation dataset. A revision passes
when its latest evaluation on that dataset meets every threshold for the
suites the dataset contains; `retention_drop` compares the revision's
retention score with the bare base's on the same items. A revision that was
never evaluated there fails (there is nothing to show it is safe).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction

from adapters_app.lifecycle import audit
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.errors import Conflict, Invalid
from adapters_app.lifecycle.roles import authorize
from adapters_app.models import Adapter, Evaluation, Revision
from workers.engine.suites import SUITE_FORMAT

# Sensible defaults: the person's facts and habits must be learned, nobody else's
# may leak, and the shared base's competence must survive.
DEFAULT_GATE: dict[str, dict[str, float]] = {
    "recall": {"min": 0.8},
    "tool": {"min": 0.8},
    "preference": {"min": 0.7},
    "leakage": {"min": 0.9},
    # A fact the person changed in use: the new value said, the old one no longer
    # (the update suite, which a retrain from updates adds to the adapter's set).
    "update": {"min": 0.8},
    "retention_drop": {"max": 0.02},
}
GATE_SUITES = ("recall", "tool", "preference", "leakage", "retention", "update")


class GateFailed(Conflict):
    code = "gate_failed"


@dataclass(frozen=True, slots=True)
class GateCheck:
    name: str
    op: str  # ">=" or "<="
    threshold: float
    value: float | None
    passed: bool

    def __str__(self) -> str:
        shown = "not evaluated" if self.value is None else f"{self.value:.3f}"
        return f"{self.name} {shown} (needs {self.op} {self.threshold:g})"


@dataclass(frozen=True, slots=True)
class GateVerdict:
    configured: bool
    checks: list[GateCheck] = field(default_factory=list)
    evaluated: bool = True

    @property
    def passed(self) -> bool:
        return not self.configured or (self.evaluated and all(c.passed for c in self.checks))

    @property
    def failures(self) -> list[str]:
        if self.configured and not self.evaluated:
            return ["not evaluated on the adapter's evaluation dataset"]
        return [str(c) for c in self.checks if not c.passed]

    def as_dict(self) -> dict:
        return {
            "configured": self.configured,
            "passed": self.passed,
            "failures": self.failures,
            "checks": [
                {"name": c.name, "op": c.op, "threshold": c.threshold, "value": c.value, "passed": c.passed}
                for c in self.checks
            ],
        }


def gate_of(adapter: Adapter) -> dict[str, dict[str, float]]:
    return {**DEFAULT_GATE, **(adapter.gate or {})}


def suite_scores(*, base_id: int, revision: Revision | None, dataset_sha256: str) -> dict[str, float]:
    """The latest score per suite of a revision (or the bare base when None) on a dataset."""
    scores: dict[str, float] = {}
    rows = Evaluation.objects.filter(
        base_id=base_id, revision=revision, dataset_sha256=dataset_sha256, suite__in=GATE_SUITES
    ).order_by("-created_at", "-id")
    for evaluation in rows:
        scores.setdefault(evaluation.suite, evaluation.metrics["score"])
    return scores


def verdict(revision: Revision) -> GateVerdict:
    adapter = revision.adapter
    dataset = adapter.eval_dataset
    if dataset is None:
        return GateVerdict(configured=False)
    scores = suite_scores(base_id=adapter.base_id, revision=revision, dataset_sha256=dataset.sha256)
    if not scores:
        return GateVerdict(configured=True, evaluated=False)
    base_scores = suite_scores(base_id=adapter.base_id, revision=None, dataset_sha256=dataset.sha256)
    return GateVerdict(configured=True, checks=judge(scores, base_scores, gate_of(adapter)))


def judge(
    scores: dict[str, float], base_scores: dict[str, float], gate: dict[str, dict[str, float]]
) -> list[GateCheck]:
    """The gate's checks over suite scores (and the bare base's, for retention_drop): the
    one rule promotions and footprint studies both apply. Suites not scored are skipped."""
    checks = []
    for name, rule in gate.items():
        if name == "retention_drop":
            if "retention" not in scores:
                continue
            base, own = base_scores.get("retention"), scores["retention"]
            value = None if base is None else base - own
            checks.append(
                GateCheck(name, "<=", rule["max"], value, value is not None and value <= rule["max"])
            )
        elif name in scores:
            checks.append(GateCheck(name, ">=", rule["min"], scores[name], scores[name] >= rule["min"]))
    return checks


def validate_gate(raw: dict) -> dict[str, dict[str, float]]:
    """Check an operator's thresholds: suite names known, values in [0, 1]."""
    if not isinstance(raw, dict):
        raise Invalid("gate must be an object of thresholds")
    errors, clean = {}, {}
    for name, rule in raw.items():
        key = "max" if name == "retention_drop" else "min"
        if name not in DEFAULT_GATE:
            errors[name] = f"unknown threshold; use one of {', '.join(DEFAULT_GATE)}"
        elif not isinstance(rule, dict) or set(rule) != {key}:
            errors[name] = f'must be {{"{key}": <number>}}'
        elif not isinstance(rule[key], int | float) or isinstance(rule[key], bool) or not 0 <= rule[key] <= 1:
            errors[name] = f"{key} must be a number between 0 and 1"
        else:
            clean[name] = {key: float(rule[key])}
    if errors:
        raise Invalid("invalid gate: " + "; ".join(f"{k}: {v}" for k, v in errors.items()), details=errors)
    return clean


def configure_gate(
    adapter: Adapter,
    *,
    actor: Actor,
    eval_dataset=None,
    thresholds: dict | None = None,
    auto_promote: bool | None = None,
) -> Adapter:
    """Set the adapter's evaluation dataset, thresholds and auto-promotion (audited)."""
    authorize(actor, "gate.configure")
    changes: dict = {}
    if eval_dataset is not None:
        if eval_dataset.person_id != adapter.person_id:
            raise Invalid("the evaluation dataset belongs to another person")
        if eval_dataset.format != SUITE_FORMAT:
            raise Invalid(
                f"{eval_dataset.name} is {eval_dataset.format} data; a gate needs an evaluation set "
                "(items with checks, uploaded with purpose eval)"
            )
        changes["eval_dataset"] = eval_dataset
    if thresholds is not None:
        changes["gate"] = validate_gate(thresholds)
    if auto_promote is not None:
        changes["auto_promote"] = bool(auto_promote)
        if auto_promote and eval_dataset is None and adapter.eval_dataset_id is None:
            raise Invalid("auto-promotion needs an evaluation dataset")
    before = {
        "eval_dataset": adapter.eval_dataset_id,
        "gate": adapter.gate,
        "auto_promote": adapter.auto_promote,
    }
    with transaction.atomic():
        Adapter.objects.filter(pk=adapter.pk).update(**changes)
        for name, value in changes.items():
            setattr(adapter, name, value)
        after = {
            "eval_dataset": adapter.eval_dataset_id,
            "gate": adapter.gate,
            "auto_promote": adapter.auto_promote,
        }
        audit.record(
            actor,
            "adapter.configure_gate",
            adapter,
            person_handle=adapter.person.handle,
            before=before,
            after=after,
        )
        refresh_gate_status(adapter)
    return adapter


def gate_status(adapter: Adapter) -> str:
    """The gate verdict of the adapter's newest revision, as one of Adapter.GATE_STATUSES."""
    newest = adapter.revisions.order_by("-number").first()
    if newest is None:
        return Adapter.UNTRAINED
    newest.adapter = adapter
    judged = verdict(newest)
    if not judged.configured:
        return Adapter.UNGATED
    if not judged.evaluated:
        return Adapter.UNEVALUATED
    return Adapter.PASSED if judged.passed else Adapter.FAILED


def refresh_gate_status(adapter: Adapter) -> str:
    """Store `gate_status` (and when the adapter was last trained) on the adapter row, for
    the lists to filter on. Called wherever a verdict can change: a new revision, a suite
    evaluation, a gate change."""
    status = gate_status(adapter)
    newest = adapter.revisions.order_by("-created_at").values_list("created_at", flat=True).first()
    Adapter.objects.filter(pk=adapter.pk).update(gate_status=status, last_trained_at=newest)
    adapter.gate_status, adapter.last_trained_at = status, newest
    return status
