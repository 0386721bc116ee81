"""Footprint study endpoints: launch, list, read, cancel, resume, export."""

from django.http import StreamingHttpResponse
from ninja import Router, Status

from adapters_app.api import schemas
from adapters_app.api.schemas import answers
from adapters_app.api.views import _limit, _page
from adapters_app.lifecycle import studies
from adapters_app.models import Study

router = Router()


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


@router.get("/studies", response=answers({200: schemas.StudyPage}, 400, 401), url_name="studies")
def list_studies(request, after: int | None = None, limit: int = 50):
    """List footprint studies, newest first (keyset pagination: ?after=<id>&limit=)."""
    limit = _limit(limit)
    rows = Study.objects.order_by("-id")
    if after is not None:
        rows = rows.filter(pk__lt=after)
    page = list(rows[: limit + 1])
    progress = studies.study_progress(page[:limit])
    rows = [_study_dict(study, progress.get(study.pk)) for study in page]
    return _page(rows, limit, cursor=lambda study: study["id"])


@router.post("/studies", response=answers({201: schemas.StudyDetail}, 400, 401, 403), url_name="studies")
def launch_study(request, payload: schemas.StudyRequest):
    """Launch a footprint study: one cell per base x rank x targets x init, each a queued
    `study` job training every person x seed. Invalid fields are named in error.details and
    nothing is written."""
    study = studies.create_study(payload.model_dump(exclude_unset=True), actor=request.actor)
    return Status(201, _detail(study))


@router.get(
    "/studies/{int:study_id}", response=answers({200: schemas.StudyDetail}, 401, 404), url_name="study"
)
def study_detail(request, study_id: int):
    """A study's progress, recommendation per base and cells with their reliability."""
    return _detail(studies.get_study(study_id))


@router.post(
    "/studies/{int:study_id}/cancel",
    response=answers({200: schemas.StudyCancelled}, 401, 403, 404, 409),
    url_name="study-cancel",
)
def cancel_study(request, study_id: int):
    """Cancel every queued or running cell (recorded runs are kept)."""
    study = studies.get_study(study_id)
    stopped = studies.cancel_study(study, actor=request.actor)
    return {"cancelled_cells": stopped, **_detail(study)}


@router.post(
    "/studies/{int:study_id}/resume",
    response=answers({202: schemas.StudyResumed}, 401, 403, 404, 409),
    url_name="study-resume",
)
def resume_study(request, study_id: int):
    """Queue a new job for every failed, cancelled or pending cell; recorded runs are skipped."""
    study = studies.get_study(study_id)
    queued = studies.resume_study(study, actor=request.actor)
    return Status(202, {"resumed_cells": queued, **_detail(study)})


@router.get(
    "/studies/{int:study_id}/results",
    response=answers({200: schemas.StudyResults}, 400, 401, 404),
    url_name="study-results",
    openapi_extra={
        "responses": {200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
    },
)
def study_results(request, study_id: int, format: schemas.ResultsFormat = "json"):
    """Every recorded run: JSON (the study, its cells and runs), or ?format=csv streamed."""
    study = studies.get_study(study_id)
    if format == "csv":
        response = StreamingHttpResponse(studies.results_csv(study), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="study-{study.pk}-results.csv"'
        return response
    return studies.results_json(study)
