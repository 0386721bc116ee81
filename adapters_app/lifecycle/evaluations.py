"""Recording suite evaluations: one Evaluation per suite, with its graded items."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from django.db import transaction

from adapters_app.lifecycle.gates import refresh_gate_status
from adapters_app.models import Adapter, BaseModel, Dataset, Evaluation, EvaluationItem, Job, Revision


def record_suite_results(
    *,
    base: BaseModel,
    revision: Revision | None,
    dataset: Dataset,
    results: Iterable,
    job: Job | None,
) -> dict[str, float]:
    """Store graded items (objects with item_id, suite, prompt, expected, got, passed,
    detail) as one Evaluation per suite; returns suite -> score."""
    by_suite: dict[str, list] = defaultdict(list)
    for result in results:
        by_suite[result.suite].append(result)
    scores = {}
    with transaction.atomic():
        for suite, items in sorted(by_suite.items()):
            passed = sum(1 for r in items if r.passed)
            scores[suite] = passed / len(items)
            evaluation = Evaluation.objects.create(
                base=base,
                revision=revision,
                dataset=dataset,
                dataset_sha256=dataset.sha256,
                suite=suite,
                metrics={"score": scores[suite], "items": len(items), "passed": passed},
                job=job,
            )
            EvaluationItem.objects.bulk_create(
                EvaluationItem(
                    evaluation=evaluation,
                    item_id=r.item_id,
                    prompt=r.prompt,
                    expected=r.expected,
                    got=r.got,
                    passed=r.passed,
                    detail=r.detail,
                )
                for r in items
            )
        # A revision's scores judge it; the bare base's scores move the retention
        # drop of every adapter gated on this set.
        # (Read afresh: the caller's adapter object may predate a gate change.)
        if revision is not None:
            judged = Adapter.objects.filter(pk=revision.adapter_id)
        else:
            judged = Adapter.objects.filter(base=base, eval_dataset__sha256=dataset.sha256)
        for adapter in judged:
            refresh_gate_status(adapter)
    return scores
