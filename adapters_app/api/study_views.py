"""Footprint study endpoints: launch, list, read, cancel, resume, export."""

from django.http import JsonResponse, StreamingHttpResponse

from adapters_app.api.auth import api_endpoint, json_body
from adapters_app.api.views import _after_id, _limit, _page
from adapters_app.lifecycle import studies
from adapters_app.lifecycle.errors import Invalid
from adapters_app.models import Study


def _study_dict(study: Study, progress: studies.StudyProgress | None) -> dict:
    return {
        "id": study.pk,
        "name": study.name,
        "state": progress.state if progress else "pending",
        "grid": study.grid,
        "cohort": study.cohort,
        "reliability_target": study.reliability_target,
        "runs_done": progress.runs_done if progress else 0,
        "runs_total": progress.runs_total if progress else 0,
        "created_by": study.created_by,
        "created_at": study.created_at.isoformat(),
    }


def _detail(study: Study) -> dict:
    report = studies.study_report(study)
    # The shape of the results export, without its runs.
    return {
        "study": studies.study_summary(report),
        "cells": [{**studies.cell_summary(c), "job": c.cell.job_id} for c in report.cells],
    }


@api_endpoint("GET", "POST")
def studies_collection(request):
    if request.method == "POST":
        study = studies.create_study(json_body(request), actor=request.actor)
        return JsonResponse(_detail(study), status=201)
    # Newest first, keyset on the id: ?after=<the last id seen>.
    after, limit = _after_id(request, "study"), _limit(request)
    rows = Study.objects.order_by("-id")
    if after is not None:
        rows = rows.filter(pk__lt=after)
    page = list(rows[: limit + 1])
    progress = studies.study_progress(page[:limit])
    return JsonResponse(
        _page(page, limit, lambda study: _study_dict(study, progress.get(study.pk)), cursor=lambda s: s.pk)
    )


@api_endpoint("GET")
def study_detail(request, study_id):
    return JsonResponse(_detail(studies.get_study(study_id)))


@api_endpoint("POST")
def study_cancel(request, study_id):
    study = studies.get_study(study_id)
    stopped = studies.cancel_study(study, actor=request.actor)
    return JsonResponse({"cancelled_cells": stopped, **_detail(study)})


@api_endpoint("POST")
def study_resume(request, study_id):
    study = studies.get_study(study_id)
    queued = studies.resume_study(study, actor=request.actor)
    return JsonResponse({"resumed_cells": queued, **_detail(study)}, status=202)


@api_endpoint("GET")
def study_results(request, study_id):
    """Every recorded run: JSON (cells and runs), or ?format=csv streamed."""
    study = studies.get_study(study_id)
    chosen = request.GET.get("format", "json")
    if chosen == "csv":
        response = StreamingHttpResponse(studies.results_csv(study), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="study-{study.pk}-results.csv"'
        return response
    if chosen != "json":
        raise Invalid("format must be json or csv")
    return JsonResponse(studies.results_json(study))
