"""Console pages. Each view reads a request, calls one lifecycle service and
shows what happened; the rules themselves live in `adapters_app.lifecycle`."""

from dataclasses import dataclass, field
from functools import wraps
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Prefetch, Q
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from adapters_app.console import audit_csv, charts, filters, learning
from adapters_app.console import workers as worker_views
from adapters_app.console.counts import fleet_counts
from adapters_app.console.keyset import BadCursor, KeysetPage, keyset_page
from adapters_app.lifecycle import jobs as job_service
from adapters_app.lifecycle import pointer, roles
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.audit import export_audit
from adapters_app.lifecycle.datasets import refuse_oversize, upload_dataset
from adapters_app.lifecycle.errors import Forbidden, LifecycleError, NotFound
from adapters_app.lifecycle.gates import (
    DEFAULT_GATE,
    GATE_SUITES,
    configure_gate,
    gate_of,
    suite_scores,
    verdict,
)
from adapters_app.lifecycle.inference import InferenceUnavailable, complete
from adapters_app.lifecycle.people import (
    create_adapter,
    create_person,
    describe_erasure,
    erase_person,
    get_adapter,
    get_person,
)
from adapters_app.lifecycle.revisions import download_revision, get_revision
from adapters_app.models import (
    Adapter,
    AuditEvent,
    BaseModel,
    Dataset,
    Evaluation,
    EvaluationItem,
    Job,
    Person,
    PersonalUpdate,
    PointerEvent,
    Revision,
)
from workers.engine.examples import Message
from workers.engine.runtime import SamplingParams
from workers.engine.suites import SUITE_FORMAT
from workers.engine.training import INIT_METHODS

PAGE_SIZE = 50
# Lists of events and jobs read newest first; the id breaks ties in a timestamp.
NEWEST_FIRST = ("-created_at", "-id")
RECENT = 10
# Training settings the console form offers; the rest (and any left blank) keep the live
# revision's recipe, or TrainingConfig's defaults when nothing is live.
TRAIN_FIELDS = ("rank", "steps", "seed", "learning_rate", "init")
# The older evaluation: held-out loss and token accuracy on training-format rows.
HELDOUT = "heldout"
# A suite's item table starts folded when it has more rows than this.
OPEN_ITEMS = 10
GATE_EVENTS = ("adapter.auto_promote_refused", "adapter.gate_override")
# Greedy and short: the playground compares models, it is not a chat.
PLAYGROUND_PARAMS = SamplingParams(max_tokens=64, temperature=0.0)


def requires(action: str):
    """Refuse, with a 403, a console action the user's role does not allow: buttons are
    hidden from such users, so a request for one is forged or stale."""

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not roles.allows(roles.role_of(request.user), action):
                raise PermissionDenied(f"{action} needs the {roles.REQUIRED[action]} role")
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def _actor(request: HttpRequest) -> Actor:
    return Actor.from_user(request.user, via="console")


class _DamagedPageLink(Exception):
    def __init__(self, response: HttpResponse):
        self.response = response


def _page(request: HttpRequest, queryset, order: tuple[str, ...]) -> KeysetPage:
    """The requested keyset page of a list. A damaged cursor sends the operator back
    to the first page (same search and filters) with a message, rather than an error page."""
    try:
        return keyset_page(queryset, order, request.GET)
    except BadCursor as exc:
        query = request.GET.copy()
        query.pop("after", None)
        query.pop("before", None)
        messages.error(request, str(exc))
        raise _DamagedPageLink(redirect(f"{request.path}?{query.urlencode()}")) from None


def _listing(view):
    """Lets a list view answer a damaged page link with the redirect `_page` prepared."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except _DamagedPageLink as damaged:
            return damaged.response

    return wrapper


def _person_or_404(handle: str) -> Person:
    try:
        return get_person(handle)
    except NotFound as exc:
        raise Http404(exc.message) from None


def _adapter_or_404(handle: str, name: str) -> Adapter:
    try:
        return get_adapter(handle, name)
    except NotFound as exc:
        raise Http404(exc.message) from None


def _revision_or_404(adapter: Adapter, label: str) -> Revision:
    try:
        return get_revision(adapter, label)
    except LifecycleError as exc:
        raise Http404(exc.message) from None


def _refused(request: HttpRequest, exc: LifecycleError) -> None:
    messages.error(request, exc.message)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


# --- overview and lists ------------------------------------------------------------


@login_required
def overview(request: HttpRequest) -> HttpResponse:
    active_jobs = Job.objects.filter(state__in=Job.ACTIVE_STATES).select_related("adapter__person")
    counts, estimated = fleet_counts()
    context = {
        "counts": counts,
        "estimated": estimated,
        "active_jobs": active_jobs[:PAGE_SIZE],
        "pointer_events": PointerEvent.objects.select_related(
            "adapter__person", "from_revision", "to_revision"
        )[:RECENT],
        "failed_jobs": Job.objects.filter(state=Job.FAILED).select_related("adapter__person")[:RECENT],
        "gate_events": _gate_events(),
        "workers": worker_views.fleet_summary(),
        "learning": (fleet := learning.fleet_learning()),
        "updates_chart": charts.updates_per_day_figure(fleet["per_day"]),
    }
    return render(request, "console/overview.html", context)


def _gate_events() -> list[AuditEvent]:
    """Recent refused auto-promotions and gate overrides, each with its adapter when it still exists."""
    events = list(AuditEvent.objects.filter(action__in=GATE_EVENTS, object_type="Adapter")[:RECENT])
    ids = [int(e.object_id) for e in events if e.object_id.isdigit()]
    found = Adapter.objects.select_related("person").in_bulk(ids)
    for event in events:
        # Not saved (audit rows are append-only): carries the link target to the template.
        event.adapter = found.get(int(event.object_id)) if event.object_id.isdigit() else None
    return events


@login_required
@_listing
def people(request: HttpRequest) -> HttpResponse:
    # Handles are lowercase; a prefix search walks the handle index, where a
    # substring search would scan every person.
    q = request.GET.get("q", "").strip().lower()
    queryset = Person.objects.all()
    if q:
        queryset = queryset.filter(handle__startswith=q)
    sort_key, sort = filters.sort_of(request.GET, filters.PEOPLE_SORTS)
    page = _page(request, queryset, sort.order)
    # Counted for the page's people only, not joined into the paged query.
    counts = {
        row["person_id"]: row
        for row in Adapter.objects.filter(person__in=page.object_list)
        .values("person_id")
        .annotate(adapters=Count("id"), live=Count("id", filter=Q(live_revision__isnull=False)))
    }
    for person in page.object_list:
        person.adapter_count = counts.get(person.pk, {}).get("adapters", 0)
        person.live_count = counts.get(person.pk, {}).get("live", 0)
    context = {"page": page, "q": q, "sort": sort_key, "sorts": filters.PEOPLE_SORTS}
    return render(request, "console/people.html", context)


@login_required
@_listing
def adapters(request: HttpRequest) -> HttpResponse:
    queryset = filters.filter_adapters(
        Adapter.objects.select_related("person", "base", "live_revision"), request.GET
    )
    sort_key, sort = filters.sort_of(request.GET, filters.ADAPTER_SORTS)
    if sort.requires is not None:
        queryset = queryset.filter(sort.requires)
    page = _page(request, queryset, sort.order)
    counts = dict(
        Revision.objects.filter(adapter__in=page.object_list)
        .values("adapter_id")
        .annotate(n=Count("id"))
        .values_list("adapter_id", "n")
    )
    for adapter in page.object_list:
        adapter.revision_count = counts.get(adapter.pk, 0)
        if adapter.live_revision is not None:
            # Its link names the adapter and person: reuse the rows already loaded
            # rather than two queries per row.
            adapter.live_revision.adapter = adapter
    context = {
        "page": page,
        "live": request.GET.get("live", ""),
        "base": request.GET.get("base", ""),
        "gate": filters.chosen(request.GET, "gate", dict(Adapter.GATE_STATUSES)),
        "trained": filters.chosen(request.GET, "trained", filters.TRAINED_WINDOWS),
        "sort": sort_key,
        "sort_leaves_out": sort.leaves_out,
        "filtered": any(request.GET.get(name) for name in ("live", "base", "gate", "trained")),
        "bases": BaseModel.objects.values_list("name", flat=True),
        "gate_statuses": Adapter.GATE_STATUSES,
        "trained_windows": filters.TRAINED_WINDOWS,
        "sorts": filters.ADAPTER_SORTS,
    }
    return render(request, "console/adapters.html", context)


@login_required
@_listing
def revisions(request: HttpRequest) -> HttpResponse:
    queryset = Revision.objects.select_related("adapter__person", "parent")
    return render(request, "console/revisions.html", {"page": _page(request, queryset, NEWEST_FIRST)})


@login_required
@_listing
def jobs(request: HttpRequest) -> HttpResponse:
    state, kind = request.GET.get("state", ""), request.GET.get("kind", "")
    queryset = Job.objects.select_related("adapter__person", "revision", "result_revision")
    if state:
        queryset = queryset.filter(state=state)
    if kind:
        queryset = queryset.filter(kind=kind)
    context = {
        "page": _page(request, queryset, NEWEST_FIRST),
        "state": state,
        "kind": kind,
        "states": [s for s, _ in Job.STATES],
        "kinds": [k for k, _ in Job.KINDS],
    }
    return render(request, "console/jobs.html", context)


@login_required
@_listing
def audit(request: HttpRequest) -> HttpResponse:
    chosen_filters = filters.audit_filters(request.GET)
    queryset = filters.filter_audit(AuditEvent.objects.all(), chosen_filters)
    context = {
        "page": _page(request, queryset, NEWEST_FIRST),
        **chosen_filters,
        "filtered": any(chosen_filters.values()),
        "export_query": urlencode({k: v for k, v in chosen_filters.items() if v}),
    }
    return render(request, "console/audit.html", context)


@login_required
@requires("audit.export")
def audit_export(request: HttpRequest) -> StreamingHttpResponse:
    """The filtered audit log as CSV, streamed: an export of a long history never
    sits in memory whole."""
    queryset = filters.filter_audit(AuditEvent.objects.all(), filters.audit_filters(request.GET))
    try:
        events = export_audit(queryset, actor=_actor(request))
    except Forbidden as exc:
        raise PermissionDenied(exc.message) from None
    rows = audit_csv.rows(events.order_by(*NEWEST_FIRST))
    response = StreamingHttpResponse(rows, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{audit_csv.filename()}"'
    return response


# --- people ------------------------------------------------------------------------


@login_required
def person(request: HttpRequest, handle: str) -> HttpResponse:
    subject = _person_or_404(handle)
    waiting = Count("updates", filter=Q(updates__state__in=PersonalUpdate.WAITING))
    adapter_list = subject.adapters.select_related("base", "live_revision").annotate(waiting=waiting)
    adapter_list = adapter_list.prefetch_related(
        Prefetch("revisions", queryset=Revision.objects.select_related("parent", "dataset")),
        Prefetch(
            "pointer_events",
            queryset=PointerEvent.objects.select_related("from_revision", "to_revision"),
        ),
    )
    context = {
        "person": subject,
        "adapters": adapter_list,
        "datasets": subject.datasets.all(),
        "purposes": Dataset.PURPOSES,
        "bases": BaseModel.objects.all(),
        "timeline": learning.timeline(subject),
    }
    return render(request, "console/person.html", context)


@login_required
@require_POST
@requires("person.create")
def person_create(request: HttpRequest) -> HttpResponse:
    handle = request.POST.get("handle", "").strip()
    try:
        created = create_person(
            handle, display_name=request.POST.get("display_name", "").strip(), actor=_actor(request)
        )
    except LifecycleError as exc:
        _refused(request, exc)
        return redirect("console:people")
    messages.success(request, f"Created person {created.handle}.")
    return redirect(created)


@login_required
@require_POST
@requires("person.erase")
def person_erase(request: HttpRequest, handle: str) -> HttpResponse:
    subject = _person_or_404(handle)
    # Typing the handle again is the confirmation: erasure cannot be undone.
    if request.POST.get("confirm", "").strip() != subject.handle:
        messages.error(request, f"Nothing was erased: type {subject.handle} to confirm.")
        return redirect(subject)
    try:
        counts = erase_person(subject, actor=_actor(request), reason=request.POST.get("reason", "").strip())
    except LifecycleError as exc:
        _refused(request, exc)
        return redirect(subject)
    messages.success(request, f"Erased {handle} ({describe_erasure(counts)}).")
    return redirect("console:people")


@login_required
@require_POST
@requires("adapter.create")
def adapter_create(request: HttpRequest, handle: str) -> HttpResponse:
    subject = _person_or_404(handle)
    base = BaseModel.objects.filter(pk=_posted_id(request, "base")).first()
    if base is None:
        messages.error(request, "Choose a base model for the adapter.")
        return redirect(subject)
    try:
        created = create_adapter(
            subject,
            request.POST.get("name", "").strip(),
            base=base,
            description=request.POST.get("description", "").strip(),
            actor=_actor(request),
        )
    except LifecycleError as exc:
        _refused(request, exc)
        return redirect(subject)
    messages.success(request, f"Created adapter {created.handle} on {base.name}.")
    return redirect(created)


@login_required
@require_POST
@requires("dataset.upload")
def dataset_upload(request: HttpRequest, handle: str) -> HttpResponse:
    subject = _person_or_404(handle)
    upload = request.FILES.get("file")
    if upload is None:
        messages.error(request, "Choose a JSONL file to upload.")
        return redirect(subject)
    name = request.POST.get("name", "").strip() or upload.name
    try:
        # By its declared size, before it is read into memory.
        refuse_oversize(upload.size)
        dataset, created = upload_dataset(
            subject,
            upload.read(),
            name=name,
            purpose=request.POST.get("purpose", Dataset.TRAIN),
            actor=_actor(request),
        )
    except LifecycleError as exc:
        _refused(request, exc)
        return redirect(subject)
    if created:
        messages.success(request, f"Uploaded {dataset.name}: {dataset.rows} {dataset.format} rows.")
    else:
        messages.info(request, f"These bytes are already stored as {dataset.name}; nothing new was added.")
    return redirect(subject)


# --- adapters ----------------------------------------------------------------------


def _revisions_with_latest_evaluation(adapter: Adapter) -> list[Revision]:
    """The adapter's revisions, each carrying its children (`child_revisions`), its latest
    held-out evaluation, its latest suite scores (`suite_scores`: [(suite, score)]) and its
    gate verdict (`gate`)."""
    revision_list = list(
        adapter.revisions.select_related("parent", "dataset").prefetch_related(
            Prefetch(
                "evaluations",
                queryset=Evaluation.objects.filter(suite=HELDOUT).order_by("-created_at", "-id"),
                to_attr="heldout_evaluations",
            )
        )
    )
    scores = _suite_scores_by_revision(adapter)
    children: dict[int, list[Revision]] = {}
    for rev in revision_list:
        if rev.parent_id is not None:
            children.setdefault(rev.parent_id, []).append(rev)
    for rev in revision_list:
        # Not saved: revisions are write-once; these only carry values to the template.
        # A revision with two or more children is a branch point: retrained from twice.
        rev.child_revisions = sorted(children.get(rev.pk, []), key=lambda child: child.number)
        rev.latest_evaluation = rev.heldout_evaluations[0] if rev.heldout_evaluations else None
        by_suite = scores.get(rev.pk, {})
        rev.suite_scores = [(suite, by_suite[suite]) for suite in GATE_SUITES if suite in by_suite]
        rev.gate = verdict(rev)
    return revision_list


def _suite_scores_by_revision(adapter: Adapter) -> dict[int, dict[str, float]]:
    """revision id -> {suite: latest score}: on the adapter's evaluation set when it has
    one (the scores its gate reads), otherwise on whichever set was used last."""
    rows = Evaluation.objects.filter(revision__adapter=adapter, suite__in=GATE_SUITES)
    if adapter.eval_dataset is not None:
        rows = rows.filter(dataset_sha256=adapter.eval_dataset.sha256)
    scores: dict[int, dict[str, float]] = {}
    for revision_id, suite, metrics in rows.order_by("-created_at", "-id").values_list(
        "revision_id", "suite", "metrics"
    ):
        scores.setdefault(revision_id, {}).setdefault(suite, metrics["score"])
    return scores


def _gate_thresholds(adapter: Adapter) -> list[dict]:
    """The adapter's effective thresholds (its own over the defaults), in the gate's order."""
    rows = []
    for name, rule in gate_of(adapter).items():
        key = "max" if name == "retention_drop" else "min"
        rows.append(
            {
                "name": name,
                "op": "≤" if key == "max" else "≥",
                "value": rule[key],
                "default": DEFAULT_GATE[name][key],
            }
        )
    return rows


@dataclass(slots=True)
class PlaygroundAnswer:
    title: str
    model: str
    text: str = ""
    served_by: str = ""
    error: str = ""


@dataclass(slots=True)
class Playground:
    prompt: str
    revision: str
    answers: list[PlaygroundAnswer] = field(default_factory=list)
    error: str = ""


def _adapter_context(request: HttpRequest, subject: Adapter, playground: Playground | None = None) -> dict:
    revision_list = _revisions_with_latest_evaluation(subject)
    accuracies = {}
    for rev in revision_list:
        accuracy = rev.latest_evaluation.metrics.get("token_accuracy") if rev.latest_evaluation else None
        if isinstance(accuracy, int | float):
            accuracies[rev.number] = accuracy
    base_scores = (
        suite_scores(base_id=subject.base_id, revision=None, dataset_sha256=subject.eval_dataset.sha256)
        if subject.eval_dataset is not None
        else {}
    )
    pointer_events = list(subject.pointer_events.select_related("from_revision", "to_revision"))
    been_live = {event.to_revision_id for event in pointer_events}
    datasets = list(subject.person.datasets.all())
    chosen = playground.revision if playground else request.GET.get("revision", "")
    return {
        "adapter": subject,
        "person": subject.person,
        "revisions": revision_list,
        "promotable": [rev for rev in revision_list if rev.pk != subject.live_revision_id],
        # Offered as rollback targets; the service still decides (it refuses a never-live one).
        "rollback_targets": [
            rev for rev in revision_list if rev.pk in been_live and rev.pk != subject.live_revision_id
        ],
        "pointer_events": pointer_events,
        "datasets": datasets,
        "training_datasets": [d for d in datasets if d.format != SUITE_FORMAT],
        "suite_datasets": [d for d in datasets if d.format == SUITE_FORMAT],
        "thresholds": _gate_thresholds(subject),
        "active_jobs": subject.jobs.filter(state__in=Job.ACTIVE_STATES),
        "residency": worker_views.adapter_residency(subject),
        "recent_jobs": subject.jobs.select_related("revision", "result_revision")[:RECENT],
        "defaults": job_service.retrain_config(subject),
        "init_methods": list(INIT_METHODS),
        "suite_chart": charts.suite_scores_figure(
            revision_list, {rev.number: dict(rev.suite_scores) for rev in revision_list}, base_scores
        ),
        "base_scores": base_scores,
        "loss_chart": charts.revision_history_figure(revision_list, accuracies),
        "playground": playground,
        "playground_revision": chosen or (subject.live_revision.label if subject.live_revision else ""),
        "learning": learning.adapter_learning(subject),
    }


@login_required
def adapter(request: HttpRequest, handle: str, adapter: str) -> HttpResponse:
    subject = _adapter_or_404(handle, adapter)
    return render(request, "console/adapter.html", _adapter_context(request, subject))


def _posted_id(request: HttpRequest, field: str) -> int | None:
    """A row id a form's select posted; None when absent or not an id (a hand-made post),
    so the view answers with its own message rather than a database error."""
    value = request.POST.get(field, "").strip()
    return int(value) if value.isdigit() else None


def _chosen_dataset(request: HttpRequest, adapter: Adapter) -> Dataset | None:
    return Dataset.objects.filter(person=adapter.person, pk=_posted_id(request, "dataset")).first()


@login_required
@require_POST
@requires("train")
def train(request: HttpRequest, handle: str, adapter: str) -> HttpResponse:
    subject = _adapter_or_404(handle, adapter)
    dataset = _chosen_dataset(request, subject)
    if dataset is None:
        messages.error(request, "Choose one of this person's datasets to train on.")
        return redirect(subject)
    # The form shows the live revision's recipe; settings it does not show carry over too.
    config = job_service.retrain_config(subject).as_dict()
    config.update({name: value for name in TRAIN_FIELDS if (value := request.POST.get(name, "").strip())})
    try:
        job = job_service.start_training(
            subject,
            dataset,
            config=config,
            actor=_actor(request),
            # An unticked box sends nothing: that is the operator saying no, not "use the default".
            auto_promote="auto_promote" in request.POST,
        )
    except LifecycleError as exc:
        _refused(request, exc)
        return redirect(subject)
    messages.success(request, f"Training job {job.pk} queued on {dataset.name}.")
    return redirect(job)


@login_required
@require_POST
@requires("evaluate")
def evaluate(request: HttpRequest, handle: str, adapter: str) -> HttpResponse:
    subject = _adapter_or_404(handle, adapter)
    dataset = _chosen_dataset(request, subject)
    if dataset is None:
        messages.error(request, "Choose one of this person's datasets to evaluate on.")
        return redirect(subject)
    label = request.POST.get("revision", "").strip()
    try:
        target = get_revision(subject, label) if label else None
        job = job_service.start_evaluation(subject, dataset, revision=target, actor=_actor(request))
    except LifecycleError as exc:
        _refused(request, exc)
        return redirect(subject)
    what = target.label if target else "the bare base"
    messages.success(request, f"Evaluation job {job.pk} queued: {what} on {dataset.name}.")
    return redirect(job)


@login_required
@require_POST
@requires("promote")
def promote(request: HttpRequest, handle: str, adapter: str) -> HttpResponse:
    subject = _adapter_or_404(handle, adapter)
    try:
        target = get_revision(subject, request.POST.get("revision", ""))
        event = pointer.promote(
            target,
            actor=_actor(request),
            reason=request.POST.get("reason", "").strip(),
            override_reason=request.POST.get("override_reason", "").strip(),
        )
    except LifecycleError as exc:
        _refused(request, exc)
    else:
        messages.success(request, f"{subject.handle} now serves {event.to_revision.label}.")
    return redirect(subject)


@login_required
@require_POST
@requires("rollback")
def rollback(request: HttpRequest, handle: str, adapter: str) -> HttpResponse:
    subject = _adapter_or_404(handle, adapter)
    label = request.POST.get("revision", "").strip()
    try:
        target = get_revision(subject, label) if label else None
        event = pointer.rollback(
            subject, to=target, actor=_actor(request), reason=request.POST.get("reason", "").strip()
        )
    except LifecycleError as exc:
        _refused(request, exc)
    else:
        messages.success(request, f"{subject.handle} rolled back to {event.to_revision.label}.")
    return redirect(subject)


def _threshold(raw: str) -> float | str:
    """A number when it reads as one; otherwise the text, for the gate's own validation to name."""
    try:
        return float(raw)
    except ValueError:
        return raw


@login_required
@require_POST
@requires("gate.configure")
def gate(request: HttpRequest, handle: str, adapter: str) -> HttpResponse:
    subject = _adapter_or_404(handle, adapter)
    eval_dataset = None
    if request.POST.get("eval_dataset", "").strip():
        eval_dataset = Dataset.objects.filter(
            person=subject.person, format=SUITE_FORMAT, pk=_posted_id(request, "eval_dataset")
        ).first()
        if eval_dataset is None:
            messages.error(request, "Choose one of this person's evaluation sets (format suite).")
            return redirect(subject)
    thresholds = {}
    for name in DEFAULT_GATE:
        raw = request.POST.get(f"gate_{name}", "").strip()
        if raw:
            key = "max" if name == "retention_drop" else "min"
            thresholds[name] = {key: _threshold(raw)}
    try:
        configure_gate(
            subject,
            actor=_actor(request),
            eval_dataset=eval_dataset,
            thresholds=thresholds,
            auto_promote="auto_promote" in request.POST,
        )
    except LifecycleError as exc:
        _refused(request, exc)
    else:
        where = subject.eval_dataset.name if subject.eval_dataset else "no evaluation set"
        auto = "on" if subject.auto_promote else "off"
        messages.success(request, f"Gate of {subject.handle} saved: {where}, auto-promotion {auto}.")
    return redirect(subject)


def _play(subject: Adapter, prompt: str, label: str) -> Playground:
    """Answer one prompt with the live revision, the chosen one and the bare base."""
    played = Playground(prompt=prompt, revision=label)
    if not prompt.strip():
        played.error = "Type a prompt to compare the answers."
        return played
    if not label:
        played.error = "Choose a revision to compare with the live one and the bare base."
        return played
    # The worker renders it with the base's own chat template.
    conversation = [Message("user", prompt)]
    columns = [
        ("live", subject.handle),
        (f"revision {label}", f"{subject.handle}@{label}"),
        ("bare base", subject.base.name),
    ]
    unavailable = ""
    for title, model in columns:
        answer = PlaygroundAnswer(title=title, model=model)
        played.answers.append(answer)
        if unavailable:
            # No worker answered the first call; the others would only wait as long again.
            answer.error = unavailable
            continue
        try:
            result = complete(model, conversation, PLAYGROUND_PARAMS)
        except InferenceUnavailable as exc:
            unavailable = answer.error = exc.message
        except LifecycleError as exc:
            answer.error = exc.message
        else:
            answer.text = result["generations"][0]["text"]
            answer.served_by = result["revision"].label if result["revision"] else result["base"].name
    return played


@login_required
@require_POST
@requires("infer")
def playground(request: HttpRequest, handle: str, adapter: str) -> HttpResponse:
    subject = _adapter_or_404(handle, adapter)
    played = _play(subject, request.POST.get("prompt", ""), request.POST.get("revision", "").strip())
    if request.htmx:
        return render(request, "console/_playground_result.html", {"playground": played})
    return render(request, "console/adapter.html", _adapter_context(request, subject, played))


# --- revisions ---------------------------------------------------------------------


@dataclass(slots=True)
class SuiteResult:
    """A revision's latest evaluation on one suite, beside the bare base's on the same set."""

    suite: str
    evaluation: Evaluation
    base_score: float | None
    items: list[EvaluationItem]

    @property
    def score(self) -> float:
        return self.evaluation.metrics["score"]

    @property
    def delta(self) -> str:
        return "" if self.base_score is None else f"{self.score - self.base_score:+.3f}"

    @property
    def failed(self) -> int:
        return sum(1 for item in self.items if not item.passed)

    @property
    def folded(self) -> bool:
        return len(self.items) > OPEN_ITEMS


def _suite_results(revision: Revision) -> list[SuiteResult]:
    latest: dict[str, Evaluation] = {}
    evaluations = revision.evaluations.filter(suite__in=GATE_SUITES).order_by("-created_at", "-id")
    for evaluation in evaluations.select_related("dataset", "job"):
        latest.setdefault(evaluation.suite, evaluation)
    base_scores: dict[str, dict[str, float]] = {}
    results = []
    for suite in GATE_SUITES:
        if suite not in latest:
            continue
        evaluation = latest[suite]
        sha = evaluation.dataset_sha256
        if sha not in base_scores:
            base_scores[sha] = suite_scores(base_id=evaluation.base_id, revision=None, dataset_sha256=sha)
        # Failed items first: they are what the operator came to read.
        items = list(evaluation.items.order_by("passed", "id"))
        results.append(SuiteResult(suite, evaluation, base_scores[sha].get(suite), items))
    return results


@login_required
def revision(request: HttpRequest, handle: str, adapter: str, rev: str) -> HttpResponse:
    subject = _adapter_or_404(handle, adapter)
    found = _revision_or_404(subject, rev)
    context = {
        "adapter": subject,
        "person": subject.person,
        "revision": found,
        "is_live": subject.live_revision_id == found.pk,
        "suite_results": _suite_results(found),
        "gate": verdict(found),
        "evaluations": found.evaluations.order_by("-created_at", "-id").select_related("dataset", "job"),
        "revisions": subject.revisions.all(),
        "playground_revision": found.label,
        "children": found.children.all(),
        "pointer_events": subject.pointer_events.filter(
            Q(to_revision=found) | Q(from_revision=found)
        ).select_related("from_revision", "to_revision"),
    }
    return render(request, "console/revision.html", context)


@login_required
@requires("revision.download")
def download(request: HttpRequest, handle: str, adapter: str, rev: str) -> HttpResponse:
    found = _revision_or_404(_adapter_or_404(handle, adapter), rev)
    try:
        filename, archive = download_revision(found, actor=_actor(request))
    except Forbidden as exc:
        raise PermissionDenied(exc.message) from None
    response = HttpResponse(archive, content_type="application/gzip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# --- jobs --------------------------------------------------------------------------


@login_required
def job(request: HttpRequest, job_id: int) -> HttpResponse:
    found = get_object_or_404(
        Job.objects.select_related("adapter__person", "dataset", "revision", "result_revision"), pk=job_id
    )
    context = {
        "job": found,
        "eta": _duration(found.eta_seconds),
        # As pairs: in a template, `result.items` would read a result key named "items".
        "result_rows": list(found.result.items()),
        "chart": charts.loss_curve_figure(found.loss_points, found.total_steps)
        if found.kind == Job.TRAIN
        else None,
    }
    # htmx polls this same URL for the live part only.
    template = "console/_job_live.html" if request.htmx else "console/job.html"
    return render(request, template, context)


@login_required
@require_POST
@requires("job.cancel")
def job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    found = get_object_or_404(Job.objects.select_related("adapter__person"), pk=job_id)
    try:
        job_service.cancel_job(found, actor=_actor(request))
    except LifecycleError as exc:
        _refused(request, exc)
    else:
        if found.state == Job.CANCELLED:
            messages.success(request, f"Job {found.pk} cancelled.")
        else:
            messages.info(request, f"Job {found.pk} will stop after its current step.")
    return redirect(found)


@login_required
@require_POST
@requires("job.retry")
def job_retry(request: HttpRequest, job_id: int) -> HttpResponse:
    found = get_object_or_404(Job.objects.select_related("adapter__person"), pk=job_id)
    try:
        retried = job_service.retry_job(found, actor=_actor(request))
    except LifecycleError as exc:
        _refused(request, exc)
        return redirect(found)
    messages.success(request, f"Job {found.pk} retried as job {retried.pk}.")
    return redirect(retried)
