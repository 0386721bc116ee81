"""Footprint study pages: the list, the launch form, a study's live progress, results and
exports. `adapters_app.lifecycle.studies` does the work; these views read the form and
show what it answered."""

from __future__ import annotations

import math

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from adapters_app.console import study_charts
from adapters_app.console.views import NEWEST_FIRST, _actor, _listing, _page, _refused, requires
from adapters_app.lifecycle import studies
from adapters_app.lifecycle.errors import Invalid, LifecycleError, NotFound
from adapters_app.models import BaseModel, Study, StudyRun
from workers.engine.base_family import SMALLEST
from workers.engine.training import CHECKPOINTING, TARGET_PRESETS

RANK_CHOICES = (1, 2, 4, 8, 16, 32)
# The form's fields for the settings every cell shares, in the order shown.
TRAINING_FIELDS = (
    ("steps", "Steps", int),
    ("learning_rate", "Learning rate", float),
    ("batch_size", "Batch size", int),
    ("replay", "Replay share", float),
    ("gradient_checkpointing", "Gradient checkpointing", str),
)
# Fields offered as a choice rather than typed.
TRAINING_CHOICES = {"gradient_checkpointing": CHECKPOINTING}
# Settings one base may change, posted as "<setting>@<base name>" beside its checkbox: the
# learning rate that suits a 1 M-parameter toy need not suit a pretrained 135 M model, and
# a base model that does not follow a chat (Gemma-3-270M pretrained) has no answers of
# its own worth replaying.
PER_BASE_FIELDS = (("learning_rate", "learning rate"), ("replay", "replay"))
COHORT_FIELDS = (("seeds", int), ("people", int), ("world_seed", int), ("reliability_target", float))
# Left out when the cohort is people of the fleet (the form still posts them, hidden).
GENERATED_COHORT_FIELDS = ("people", "world_seed")
# Errors the form shows next to a field; any other key is shown above the form.
FORM_FIELDS = (*studies.REQUEST_FIELDS, "grid")
# While a study runs its page polls for the live part this often.
POLL_SECONDS = 5


def _study_or_404(study_id: int) -> Study:
    try:
        return studies.get_study(study_id)
    except NotFound as exc:
        raise Http404(exc.message) from None


@login_required
@_listing
def study_list(request: HttpRequest) -> HttpResponse:
    page = _page(request, Study.objects.all(), NEWEST_FIRST)
    progress = studies.study_progress(page.object_list)
    for study in page.object_list:
        # Not saved: carries the counts to the template.
        study.progress = progress.get(study.pk)
    return render(request, "console/studies.html", {"page": page})


def _number(raw: str, kind: type):
    """The number a form field holds, or its text for the service's validation to name."""
    raw = raw.strip()
    try:
        return kind(raw)
    except ValueError:
        return raw


def study_request(post) -> dict:
    """The launch form's fields as the request `create_study` validates. A number left blank
    is left out, so the service's default applies, as for the training settings."""
    fleet = post.get("cohort") == "fleet"
    skipped = GENERATED_COHORT_FIELDS if fleet else ()
    return {
        "name": post.get("name", ""),
        "bases": post.getlist("bases"),
        "ranks": [_number(v, int) for v in post.getlist("ranks")],
        "targets": post.getlist("targets"),
        "inits": post.getlist("inits"),
        **{
            name: _number(post[name], kind)
            for name, kind in COHORT_FIELDS
            if post.get(name, "").strip() and name not in skipped
        },
        **({"adapters": post.get("adapters", "").replace(",", " ").split()} if fleet else {}),
        "training": {
            name: _number(post[name], kind) for name, _, kind in TRAINING_FIELDS if post.get(name, "").strip()
        },
        "training_per_base": {
            base: settings for base in post.getlist("bases") if (settings := _per_base_settings(post, base))
        },
    }


def _per_base_settings(post, base: str) -> dict:
    return {
        name: _number(post[f"{name}@{base}"], float)
        for name, _ in PER_BASE_FIELDS
        if post.get(f"{name}@{base}", "").strip()
    }


def _form_context(chosen: dict, errors: dict | None = None) -> dict:
    errors = errors or {}
    per_base = chosen.get("training_per_base") or {}
    training = {**studies.DEFAULT_TRAINING, **chosen.get("training", {})}
    return {
        "chosen": chosen,
        "errors": errors,
        "other_errors": {k: v for k, v in errors.items() if k not in FORM_FIELDS},
        "bases": [(b, _own_settings(per_base.get(b.name, {}))) for b in BaseModel.objects.order_by("name")],
        "rank_choices": RANK_CHOICES,
        "target_choices": TARGET_PRESETS,
        "init_choices": studies.STUDY_INITS,
        "training_fields": [
            (name, label, training.get(name, ""), TRAINING_CHOICES.get(name))
            for name, label, _ in TRAINING_FIELDS
        ],
        "alpha_per_rank": studies.ALPHA_PER_RANK,
        "max_runs": studies.MAX_RUNS,
        "runs": _planned_runs(chosen),
        # A request naming adapters is a fleet cohort (the form only sends them then).
        "fleet_cohort": "adapters" in chosen,
        "adapters_text": "\n".join(map(str, chosen.get("adapters") or [])),
    }


def _own_settings(chosen: dict) -> list[tuple[str, str, object]]:
    """One base's boxes: (field, label, what the operator typed, or blank for the shared value)."""
    return [(name, label, chosen.get(name, "")) for name, label in PER_BASE_FIELDS]


def _planned_runs(chosen: dict) -> int | str:
    """How many runs the chosen grid makes, as the page's script counts it; "—" while unreadable."""
    sizes = [chosen.get(key) for key in ("bases", "ranks", "targets", "inits")]
    adapters = chosen.get("adapters")
    people = len(set(adapters)) if isinstance(adapters, list) else chosen.get("people")
    counts = [chosen.get("seeds"), people]
    if not all(isinstance(s, list) for s in sizes) or not all(isinstance(c, int) for c in counts):
        return "—"
    return math.prod(len(s) for s in sizes) * math.prod(counts)


def _default_request() -> dict:
    names = list(BaseModel.objects.order_by("name").values_list("name", flat=True))
    # The family's smallest base when registered (the service's default too), else the first.
    chosen = SMALLEST if SMALLEST in names else next(iter(names), None)
    return {
        "name": "",
        "bases": [chosen] if chosen else [],
        "ranks": studies.DEFAULT_GRID["ranks"],
        "targets": studies.DEFAULT_GRID["targets"],
        "inits": studies.DEFAULT_GRID["inits"],
        "seeds": studies.DEFAULT_GRID["seeds"],
        "people": studies.DEFAULT_COHORT["people"],
        "world_seed": studies.DEFAULT_COHORT["world_seed"],
        "reliability_target": 0.95,
        "training": dict(studies.DEFAULT_TRAINING),
    }


@login_required
@requires("study.run")
def study_new(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return render(request, "console/study_new.html", _form_context(_default_request()))
    chosen = study_request(request.POST)
    try:
        study = studies.create_study(chosen, actor=_actor(request))
    except Invalid as exc:
        details = exc.details if isinstance(exc.details, dict) else {"": exc.message}
        return render(request, "console/study_new.html", _form_context(chosen, details), status=400)
    messages.success(request, f"Study {study.pk} queued: {study.cells.count()} cells.")
    return redirect(study)


# The recommendation lists this many smaller cells that fell short; every cell is in the
# cell table below it and in the exports anyway.
SHORT_OF_TARGET_SHOWN = 12


def _recommendation_rows(report) -> list[dict]:
    return [
        {
            "rec": rec,
            "short": rec.smaller_failing[:SHORT_OF_TARGET_SHOWN],
            "more": max(0, len(rec.smaller_failing) - SHORT_OF_TARGET_SHOWN),
        }
        for rec in report.recommendations
    ]


def _scores_by_cell(study: Study) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for cell_id, scores in StudyRun.objects.filter(cell__study=study).values_list("cell_id", "scores"):
        out.setdefault(cell_id, []).append(scores)
    return out


@login_required
def study(request: HttpRequest, study_id: int) -> HttpResponse:
    found = _study_or_404(study_id)
    report = studies.study_report(found)
    counts = report.counts()
    groups = study_charts.cell_groups(report.cells, _scores_by_cell(found), found.reliability_target)
    context = {
        "study": found,
        "report": report,
        "counts": sorted(counts.items()),
        "progress_percent": round(100 * report.runs_done / report.runs_total) if report.runs_total else 0,
        "can_cancel": bool(counts.get("queued") or counts.get("running")),
        "can_resume": any(counts.get(s) for s in ("failed", "cancelled", "pending")),
        "recommendations": _recommendation_rows(report),
        "groups": groups,
        "figures": study_charts.figures(groups),
        "alpha_per_rank": studies.ALPHA_PER_RANK,
        "poll_seconds": POLL_SECONDS,
    }
    # htmx polls this same URL for the live part only.
    template = "console/_study_cells.html" if request.htmx else "console/study.html"
    return render(request, template, context)


@login_required
@require_POST
@requires("study.run")
def study_cancel(request: HttpRequest, study_id: int) -> HttpResponse:
    found = _study_or_404(study_id)
    try:
        stopped = studies.cancel_study(found, actor=_actor(request))
    except LifecycleError as exc:
        _refused(request, exc)
    else:
        messages.success(request, f"Study {found.pk}: {stopped} cell(s) cancelled; recorded runs are kept.")
    return redirect(found)


@login_required
@require_POST
@requires("study.run")
def study_resume(request: HttpRequest, study_id: int) -> HttpResponse:
    found = _study_or_404(study_id)
    try:
        queued = studies.resume_study(found, actor=_actor(request))
    except LifecycleError as exc:
        _refused(request, exc)
    else:
        messages.success(
            request, f"Study {found.pk}: {queued} cell(s) queued again; recorded runs are skipped."
        )
    return redirect(found)


@login_required
def study_results_csv(request: HttpRequest, study_id: int) -> StreamingHttpResponse:
    found = _study_or_404(study_id)
    response = StreamingHttpResponse(studies.results_csv(found), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="study-{found.pk}-results.csv"'
    return response


@login_required
def study_results_json(request: HttpRequest, study_id: int) -> JsonResponse:
    found = _study_or_404(study_id)
    response = JsonResponse(studies.results_json(found))
    response["Content-Disposition"] = f'attachment; filename="study-{found.pk}-results.json"'
    return response
