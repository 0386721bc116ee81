"""Comparing two revisions of one adapter: what was set differently, how their suite
scores moved, and how far apart their weights are.

Revision `a` is the reference (usually the parent) and `b` the revision under
study, so every difference reads "b - a": what changed on the way from a to b.
The weights are compared by `workers.engine.weight_delta` on the payloads from the
store; when a payload cannot be read (missing or corrupted blob, not a LoRA
payload) the comparison still carries the settings and scores, and says why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from adapters_app.lifecycle.errors import Invalid
from adapters_app.lifecycle.gates import GATE_SUITES, suite_scores
from adapters_app.lifecycle.revisions import get_revision, load_payload
from adapters_app.models import Adapter, Dataset, Evaluation, Revision
from workers.engine.payload import AdapterPayload, PayloadError, unpack
from workers.engine.store import StoreError
from workers.engine.weight_delta import WeightComparison, WeightDeltaError, compare_weights

NOT_SET = "(not set)"
SHA_SHOWN = 12


class WeightsUnreadable(Exception):
    pass


@dataclass(frozen=True, slots=True)
class ConfigRow:
    group: str  # "training config" or "provenance"
    setting: str
    a: str
    b: str
    differs: bool


@dataclass(frozen=True, slots=True)
class SuiteDelta:
    suite: str
    a: float
    b: float
    base: float | None  # the bare base's score on the same set, when it was evaluated

    @property
    def delta(self) -> float:
        return self.b - self.a


@dataclass(frozen=True, slots=True)
class EvaluationSetDeltas:
    """The suites both revisions were scored on, on one evaluation set."""

    dataset_sha256: str
    name: str
    is_gate_set: bool
    suites: list[SuiteDelta]


@dataclass(slots=True)
class RevisionComparison:
    a: Revision
    b: Revision
    config: list[ConfigRow]
    suite_sets: list[EvaluationSetDeltas]
    weights: WeightComparison | None = None
    weights_error: str = ""  # why the weights could not be compared, when they could not
    notes: list[str] = field(default_factory=list)

    @property
    def differing(self) -> list[ConfigRow]:
        return [row for row in self.config if row.differs]

    @property
    def matching(self) -> list[ConfigRow]:
        return [row for row in self.config if not row.differs]


def compare_revisions(a: Revision, b: Revision) -> RevisionComparison:
    """Settings, suite scores and weights of `b` against the reference `a`."""
    if a.adapter_id != b.adapter_id:
        raise Invalid(f"{a} and {b} belong to different adapters; compare revisions of one adapter")
    comparison = RevisionComparison(a=a, b=b, config=config_rows(a, b), suite_sets=suite_deltas(a, b))
    try:
        comparison.weights = compare_weights(_payload(a), _payload(b))
    except (WeightsUnreadable, WeightDeltaError) as exc:
        comparison.weights_error = str(exc)
    return comparison


def counterpart(revision: Revision, ref: str | None) -> Revision | None:
    """The revision to compare `revision` with: `ref` (r<N> or a sha256 prefix) when
    given, else its parent, else the nearest older revision, else the nearest newer one;
    None when the adapter has no other revision. A bad `ref` raises NotFound or Invalid."""
    if ref:
        other = get_revision(revision.adapter, ref)
        if other.pk == revision.pk:
            raise Invalid(f"{ref!r} is {revision.label} itself; choose another revision to compare with")
        return other
    if revision.parent_id is not None and revision.parent.adapter_id == revision.adapter_id:
        return revision.parent
    siblings = Revision.objects.filter(adapter_id=revision.adapter_id).exclude(pk=revision.pk)
    return (
        siblings.filter(number__lt=revision.number).order_by("-number").first()
        or siblings.filter(number__gt=revision.number).order_by("number").first()
    )


def config_rows(a: Revision, b: Revision) -> list[ConfigRow]:
    """Every training-config key either revision has, then the provenance fields."""
    rows = []
    config_a, config_b = a.training_config or {}, b.training_config or {}
    for key in sorted(config_a.keys() | config_b.keys()):
        value_a, value_b = config_a.get(key, NOT_SET), config_b.get(key, NOT_SET)
        rows.append(ConfigRow("training config", key, _shown(value_a), _shown(value_b), value_a != value_b))
    provenance = [
        ("rank", a.rank, b.rank, str),
        ("init method", a.init_method, b.init_method, str),
        ("seed", a.seed, b.seed, str),
        ("dataset", _dataset_key(a), _dataset_key(b), _dataset_shown),
        ("dataset rows", a.dataset_rows, b.dataset_rows, str),
        ("base digest", a.base_digest, b.base_digest, lambda digest: digest[:SHA_SHOWN]),
        ("parent", _parent(a), _parent(b), str),
        ("code version", a.code_version, b.code_version, str),
        (
            "final training loss",
            a.final_loss,
            b.final_loss,
            lambda loss: "—" if loss is None else f"{loss:.5f}",
        ),
        ("size", a.size_bytes, b.size_bytes, lambda size: f"{size:,} bytes"),
        ("trainable parameters", a.parameters, b.parameters, lambda count: f"{count:,}"),
    ]
    for setting, value_a, value_b, shown in provenance:
        rows.append(ConfigRow("provenance", setting, shown(value_a), shown(value_b), value_a != value_b))
    return rows


def suite_deltas(a: Revision, b: Revision) -> list[EvaluationSetDeltas]:
    """Per evaluation set both revisions have suite scores on: score of a, of b, and of
    the bare base. The adapter's own evaluation set (the gate's) comes first."""
    adapter = a.adapter
    # Read afresh: the gate's set may have changed since these rows were loaded.
    gate_sha = Adapter.objects.filter(pk=adapter.pk).values_list("eval_dataset__sha256", flat=True).first()
    shared = _scored_sets(a) & _scored_sets(b)
    names = {sha: _set_name(adapter.person_id, sha) for sha in shared}
    results = []
    for sha in sorted(shared, key=lambda sha: (sha != gate_sha, names[sha], sha)):
        scores_a = suite_scores(base_id=adapter.base_id, revision=a, dataset_sha256=sha)
        scores_b = suite_scores(base_id=adapter.base_id, revision=b, dataset_sha256=sha)
        base = suite_scores(base_id=adapter.base_id, revision=None, dataset_sha256=sha)
        suites = [
            SuiteDelta(suite, scores_a[suite], scores_b[suite], base.get(suite))
            for suite in GATE_SUITES
            if suite in scores_a and suite in scores_b
        ]
        if suites:
            results.append(EvaluationSetDeltas(sha, names[sha], sha == gate_sha, suites))
    return results


def _scored_sets(revision: Revision) -> set[str]:
    rows = Evaluation.objects.filter(
        revision=revision, base_id=revision.adapter.base_id, suite__in=GATE_SUITES
    )
    return set(rows.order_by().values_list("dataset_sha256", flat=True).distinct())


def _set_name(person_id: int, sha256: str) -> str:
    name = Dataset.objects.filter(person_id=person_id, sha256=sha256).values_list("name", flat=True).first()
    return name or sha256[:SHA_SHOWN]


def _payload(revision: Revision) -> AdapterPayload:
    try:
        return unpack(load_payload(revision))
    except (StoreError, PayloadError) as exc:
        # Name the revision: the operator sees two and needs to know which one is unreadable.
        raise WeightsUnreadable(f"{revision.label}: {exc}") from exc


def _dataset_key(revision: Revision) -> tuple[str, str]:
    return (revision.dataset.name if revision.dataset_id else "(deleted)", revision.dataset_sha256)


def _dataset_shown(key: tuple[str, str]) -> str:
    name, sha256 = key
    return f"{name} · {sha256[:SHA_SHOWN]}"


def _parent(revision: Revision) -> str:
    return revision.parent.label if revision.parent_id else "none (bare base)"


def _shown(value: object) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "—"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)
