"""Management API endpoints: ninja validates against `schemas`, one lifecycle service acts,
and the object it returns is rendered through the operation's response schema."""

from django.http import HttpResponse
from ninja import Query, Router, Status

from adapters_app.api import schemas
from adapters_app.api.schemas import answers
from adapters_app.lifecycle import gates, jobs, people, pointer
from adapters_app.lifecycle.datasets import get_dataset, refuse_oversize, upload_dataset
from adapters_app.lifecycle.errors import Invalid, NotFound
from adapters_app.lifecycle.revisions import download_revision, get_revision
from adapters_app.models import BaseModel, Dataset, Job, Person

PAGE_LIMIT = 100

router = Router(by_alias=True)

ADAPTER_PATH = "/adapters/{person}/{adapter}"


@router.get("/people", response=answers({200: schemas.PersonPage}, 400, 401), url_name="people")
def list_people(request, after: str = "", limit: int = 50):
    """List people (keyset pagination: ?after=<handle>&limit=)."""
    # Keyset pagination on the unique handle: stable and cheap at any depth.
    limit = _limit(limit)
    rows = list(Person.objects.filter(handle__gt=after).order_by("handle")[: limit + 1])
    return _page(rows, limit, cursor=lambda person: person.handle)


@router.post("/people", response=answers({201: schemas.Person}, 400, 401, 403, 409), url_name="people")
def create_person(request, payload: schemas.PersonRequest):
    """Create a person."""
    person = people.create_person(payload.handle, display_name=payload.display_name, actor=request.actor)
    return Status(201, person)


@router.post(
    "/people/{person}/erase",
    response=answers({200: schemas.Erased}, 400, 401, 403, 404),
    url_name="person-erase",
)
def erase_person(request, person: str, payload: schemas.EraseRequest):
    """Erase a person: their adapters, revisions, datasets, stored blobs and the study runs
    trained on their data (admin role; a reason is required, and an audit tombstone names
    what was erased)."""
    owner = people.get_person(person)
    counts = people.erase_person(owner, actor=request.actor, reason=payload.reason)
    return {"erased": person, **counts}


@router.get(
    "/people/{person}/adapters",
    response=answers({200: schemas.AdapterPage}, 400, 401, 404),
    url_name="person-adapters",
)
def list_adapters(request, person: str, after: str = "", limit: int = 50):
    """List a person's adapters (keyset pagination: ?after=<name>&limit=)."""
    owner = people.get_person(person)
    # Keyset on the name, unique per person, as the people list pages on the handle.
    limit = _limit(limit)
    adapters = owner.adapters.select_related("person", "base", "live_revision")
    rows = list(adapters.filter(name__gt=after).order_by("name")[: limit + 1])
    return _page(rows, limit, cursor=lambda adapter: adapter.name)


@router.post(
    "/people/{person}/adapters",
    response=answers({201: schemas.Adapter}, 400, 401, 403, 404, 409),
    url_name="person-adapters",
)
def create_adapter(request, person: str, payload: schemas.AdapterRequest):
    """Create an adapter bound to a base model."""
    owner = people.get_person(person)
    base_name = payload.base
    base = BaseModel.objects.filter(name=base_name).first() if base_name else BaseModel.objects.first()
    if base is None:
        raise NotFound(f"no base model {base_name!r}" if base_name else "no base model is registered")
    adapter = people.create_adapter(
        owner, payload.name, base=base, description=payload.description, actor=request.actor
    )
    return Status(201, adapter)


@router.get(ADAPTER_PATH, response=answers({200: schemas.AdapterDetail}, 401, 404), url_name="adapter")
def adapter_detail(request, person: str, adapter: str):
    """An adapter with its live pointer, revisions and pointer history."""
    return people.get_adapter(person, adapter)


@router.get(
    f"{ADAPTER_PATH}/datasets",
    response=answers({200: schemas.DatasetPage}, 400, 401, 404),
    url_name="datasets",
)
def list_datasets(
    request,
    person: str,
    adapter: str,
    after: int | None = None,
    purpose: schemas.DatasetPurpose | None = None,
    limit: int = 50,
):
    """The person's datasets, oldest first (?after=<id>&purpose=train|eval&limit=). Datasets
    belong to the person, so every adapter of theirs lists the same ones."""
    owner = people.get_adapter(person, adapter).person
    limit = _limit(limit)
    datasets = Dataset.objects.filter(person=owner, pk__gt=after or 0)
    if purpose is not None:
        datasets = datasets.filter(purpose=purpose)
    rows = list(datasets.order_by("pk")[: limit + 1])
    return _page(rows, limit, cursor=lambda dataset: dataset.pk)


@router.post(
    f"{ADAPTER_PATH}/datasets",
    response=answers({201: schemas.Dataset, 200: schemas.Dataset}, 400, 401, 403, 404, 413),
    url_name="datasets",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        }
    },
)
def upload(request, person: str, adapter: str, name: str = "", purpose: schemas.DatasetPurpose = "train"):
    """Upload JSONL (chat `messages` or `prompt`/`completion`); ?name=&purpose=train|eval.
    201 for a new dataset, 200 when the same file is already there. Invalid files get
    line-numbered errors in error.details and create nothing."""
    target = people.get_adapter(person, adapter)
    # By the declared length, before the body is read into memory.
    refuse_oversize(_content_length(request))
    dataset, created = upload_dataset(
        target.person, request.body, name=name, purpose=purpose, actor=request.actor
    )
    return Status(201 if created else 200, dataset)


@router.post(
    f"{ADAPTER_PATH}/train", response=answers({202: schemas.Job}, 400, 401, 403, 404, 409), url_name="train"
)
def train(request, person: str, adapter: str, payload: schemas.TrainRequest):
    """Start a training job."""
    target = people.get_adapter(person, adapter)
    dataset = get_dataset(target.person, _required(payload.dataset, "dataset"))
    job = jobs.start_training(
        target, dataset, config=payload.config or {}, actor=request.actor, auto_promote=payload.auto_promote
    )
    return Status(202, job)


@router.post(
    f"{ADAPTER_PATH}/evaluate",
    response=answers({202: schemas.Job}, 400, 401, 403, 404, 409),
    url_name="evaluate",
)
def evaluate(request, person: str, adapter: str, payload: schemas.EvaluateRequest):
    """Start an evaluation job (a revision, or the bare base when omitted)."""
    target = people.get_adapter(person, adapter)
    dataset = get_dataset(target.person, _required(payload.dataset, "dataset"))
    revision = get_revision(target, payload.revision) if payload.revision else None
    job = jobs.start_evaluation(target, dataset, revision=revision, actor=request.actor)
    return Status(202, job)


@router.post(
    f"{ADAPTER_PATH}/infer", response=answers({202: schemas.Job}, 400, 401, 403, 404, 409), url_name="infer"
)
def infer(request, person: str, adapter: str, payload: schemas.InferRequest):
    """Generate with a revision (the live one unless `revision` is given) as a tracked job;
    the text is in the finished job's result."""
    target = people.get_adapter(person, adapter)
    if payload.revision:
        revision = get_revision(target, payload.revision)
    elif target.live_revision_id:
        revision = target.live_revision
    else:
        raise Invalid(f"{target.handle} has no live revision; name one with `revision`")
    job = jobs.start_inference(
        target, revision, prompt=payload.prompt, max_tokens=payload.max_tokens, actor=request.actor
    )
    return Status(202, job)


@router.post(
    f"{ADAPTER_PATH}/promote",
    response=answers({200: schemas.PointerEvent}, 400, 401, 403, 404, 409),
    url_name="promote",
)
def promote(request, person: str, adapter: str, payload: schemas.PromoteRequest):
    """Make a revision live. A revision failing its gate is refused (409 gate_failed,
    error.details lists the checks) unless `override_reason` is given (audited)."""
    target = people.get_adapter(person, adapter)
    revision = get_revision(target, _required(payload.revision, "revision"))
    event = pointer.promote(
        revision, actor=request.actor, reason=payload.reason, override_reason=payload.override_reason
    )
    return event


@router.get(f"{ADAPTER_PATH}/gate", response=answers({200: schemas.Gate}, 401, 404), url_name="gate")
def gate(request, person: str, adapter: str):
    """The promotion gate: evaluation dataset, thresholds, auto-promotion."""
    return people.get_adapter(person, adapter)


@router.post(
    f"{ADAPTER_PATH}/gate", response=answers({200: schemas.Gate}, 400, 401, 403, 404), url_name="gate"
)
def configure_gate(request, person: str, adapter: str, payload: schemas.GateRequest | None = None):
    """Configure the gate: evaluation dataset, thresholds (merged over the defaults),
    auto-promotion after training."""
    target = people.get_adapter(person, adapter)
    payload = payload or schemas.GateRequest()
    dataset = get_dataset(target.person, str(payload.eval_dataset)) if payload.eval_dataset else None
    gates.configure_gate(
        target,
        actor=request.actor,
        eval_dataset=dataset,
        thresholds=payload.thresholds,
        auto_promote=payload.auto_promote,
    )
    return target


@router.post(
    f"{ADAPTER_PATH}/rollback",
    response=answers({200: schemas.PointerEvent}, 400, 401, 403, 404, 409),
    url_name="rollback",
)
def rollback(request, person: str, adapter: str, payload: schemas.RollbackRequest | None = None):
    """Move live back (to the previous live revision when `to` is omitted)."""
    target = people.get_adapter(person, adapter)
    payload = payload or schemas.RollbackRequest()
    to = get_revision(target, payload.to) if payload.to else None
    event = pointer.rollback(target, to=to, actor=request.actor, reason=payload.reason)
    return event


@router.get("/jobs", response=answers({200: schemas.JobPage}, 400, 401, 404), url_name="jobs")
def list_jobs(
    request,
    after: int | None = None,
    adapter: str = Query("", description="person/adapter"),
    state: schemas.JobState | None = None,
    kind: schemas.JobKind | None = None,
    limit: int = 50,
):
    """Jobs newest first, keyset on the id as the studies list: ?after=<the last id seen>
    (&adapter=<person/adapter>&state=&kind=&limit=). Lists leave out each job's log and loss
    curve: the job's own URL has them."""
    limit = _limit(limit)
    found = Job.objects.select_related("adapter__person", "revision", "result_revision")
    if after is not None:
        found = found.filter(pk__lt=after)
    if adapter:
        owner, _, name = adapter.partition("/")
        found = found.filter(adapter=people.get_adapter(owner, name))
    if state is not None:
        found = found.filter(state=state)
    if kind is not None:
        found = found.filter(kind=kind)
    rows = list(found.order_by("-pk")[: limit + 1])
    return _page(rows, limit, cursor=lambda job: job.pk)


@router.get("/jobs/{int:job_id}", response=answers({200: schemas.Job}, 401, 404), url_name="job")
def job_detail(request, job_id: int):
    """A job with its progress, loss curve and log."""
    return _job(job_id)


@router.post(
    "/jobs/{int:job_id}/cancel",
    response=answers({200: schemas.Job}, 401, 403, 404, 409),
    url_name="job-cancel",
)
def cancel_job(request, job_id: int):
    """Cancel a queued or running job."""
    return jobs.cancel_job(_job(job_id), actor=request.actor)


@router.get(
    "/revisions/{person}/{adapter}/{rev}/download",
    response=answers({200: None}, 401, 403, 404),
    url_name="download",
    openapi_extra={
        "responses": {
            200: {
                "description": "adapter_model.safetensors + adapter_config.json",
                "content": {"application/gzip": {}},
            }
        }
    },
)
def download(request, person: str, adapter: str, rev: str):
    """The revision's PEFT folder as .tar.gz."""
    revision = get_revision(people.get_adapter(person, adapter), rev)
    filename, archive = download_revision(revision, actor=request.actor)
    response = HttpResponse(archive, content_type="application/gzip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["X-Revision-Sha256"] = revision.sha256
    return response


def _content_length(request) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


def _job(job_id: int) -> Job:
    job = (
        Job.objects.select_related("adapter__person", "revision", "result_revision").filter(pk=job_id).first()
    )
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def _required(value: str | int | None, field: str) -> str:
    if value in (None, ""):
        raise Invalid(f"{field} is required")
    return str(value)


def _page(rows: list, limit: int, *, cursor) -> dict:
    """One page of a keyset list from up to limit + 1 rows (an extra one says more follow)."""
    more, rows = len(rows) > limit, rows[:limit]
    return {"data": rows, "next_after": cursor(rows[-1]) if more else None}


def _limit(limit: int) -> int:
    """?limit=: rows per page, 50 unless asked; more than PAGE_LIMIT gets PAGE_LIMIT (a
    client asking for "all" still pages), and fewer than one is a mistake worth naming."""
    if limit < 1:
        raise Invalid(f"limit must be at least 1 (at most {PAGE_LIMIT} rows come back a page)")
    return min(PAGE_LIMIT, limit)
