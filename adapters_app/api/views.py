"""Management API endpoints: parse, call one lifecycle service, serialise."""

from django.http import HttpResponse, JsonResponse

from adapters_app.api import serializers as out
from adapters_app.api.auth import api_endpoint, json_body
from adapters_app.api.openapi import openapi_document
from adapters_app.lifecycle import gates, jobs, people, pointer
from adapters_app.lifecycle.datasets import get_dataset, refuse_oversize, upload_dataset
from adapters_app.lifecycle.errors import Invalid, NotFound
from adapters_app.lifecycle.revisions import download_revision, get_revision
from adapters_app.models import BaseModel, Dataset, Job, Person

PAGE_LIMIT = 100


def openapi_json(request):
    return JsonResponse(openapi_document(request.build_absolute_uri("/")), json_dumps_params={"indent": 2})


@api_endpoint("GET", "POST")
def people_collection(request):
    if request.method == "POST":
        body = json_body(request)
        person = people.create_person(
            str(body.get("handle", "")), display_name=str(body.get("display_name", "")), actor=request.actor
        )
        return JsonResponse(out.person_dict(person), status=201)
    # Keyset pagination on the unique handle: stable and cheap at any depth.
    after = request.GET.get("after", "")
    limit = _limit(request)
    rows = list(Person.objects.filter(handle__gt=after).order_by("handle")[: limit + 1])
    return JsonResponse(_page(rows, limit, out.person_dict, cursor=lambda person: person.handle))


@api_endpoint("POST")
def person_erase(request, person):
    """Erasure on request: the person, their adapters, revisions, datasets, blobs and
    the study runs trained on their data. Admins only; a reason is required (audited)."""
    owner = people.get_person(person)
    counts = people.erase_person(owner, actor=request.actor, reason=str(json_body(request).get("reason", "")))
    return JsonResponse({"erased": person, **counts})


@api_endpoint("GET", "POST")
def person_adapters(request, person):
    owner = people.get_person(person)
    if request.method == "GET":
        # Keyset on the name, unique per person, as the people list pages on the handle.
        after, limit = request.GET.get("after", ""), _limit(request)
        adapters = owner.adapters.select_related("person", "base", "live_revision")
        rows = list(adapters.filter(name__gt=after).order_by("name")[: limit + 1])
        return JsonResponse(_page(rows, limit, out.adapter_dict, cursor=lambda adapter: adapter.name))
    body = json_body(request)
    base_name = body.get("base")
    base = BaseModel.objects.filter(name=base_name).first() if base_name else BaseModel.objects.first()
    if base is None:
        raise NotFound(f"no base model {base_name!r}" if base_name else "no base model is registered")
    adapter = people.create_adapter(
        owner,
        str(body.get("name", "")),
        base=base,
        description=str(body.get("description", "")),
        actor=request.actor,
    )
    return JsonResponse(out.adapter_dict(adapter), status=201)


@api_endpoint("GET")
def adapter_detail(request, person, adapter):
    return JsonResponse(out.adapter_dict(people.get_adapter(person, adapter), detail=True))


@api_endpoint("GET", "POST")
def adapter_datasets(request, person, adapter):
    target = people.get_adapter(person, adapter)
    if request.method == "GET":
        # Datasets belong to the person, so every adapter of theirs lists the same ones.
        return JsonResponse(_dataset_page(request, target.person))
    # By the declared length, before the body is read into memory.
    refuse_oversize(_content_length(request))
    dataset, created = upload_dataset(
        target.person,
        request.body,
        name=request.GET.get("name", ""),
        purpose=request.GET.get("purpose", "train"),
        actor=request.actor,
    )
    return JsonResponse(out.dataset_dict(dataset), status=201 if created else 200)


@api_endpoint("POST")
def adapter_train(request, person, adapter):
    target = people.get_adapter(person, adapter)
    body = json_body(request)
    dataset = get_dataset(target.person, _required(body, "dataset"))
    config = body.get("config") or {}
    if not isinstance(config, dict):
        raise Invalid("config must be an object")
    auto = body.get("auto_promote")
    if auto is not None and not isinstance(auto, bool):
        raise Invalid("auto_promote must be true or false")
    job = jobs.start_training(target, dataset, config=config, actor=request.actor, auto_promote=auto)
    return JsonResponse(out.job_dict(job), status=202)


@api_endpoint("POST")
def adapter_evaluate(request, person, adapter):
    target = people.get_adapter(person, adapter)
    body = json_body(request)
    dataset = get_dataset(target.person, _required(body, "dataset"))
    revision = get_revision(target, str(body["revision"])) if body.get("revision") else None
    job = jobs.start_evaluation(target, dataset, revision=revision, actor=request.actor)
    return JsonResponse(out.job_dict(job), status=202)


@api_endpoint("POST")
def adapter_infer(request, person, adapter):
    """Generate with a revision (the live one unless `revision` is given) as a tracked job."""
    target = people.get_adapter(person, adapter)
    body = json_body(request)
    if body.get("revision"):
        revision = get_revision(target, str(body["revision"]))
    elif target.live_revision_id:
        revision = target.live_revision
    else:
        raise Invalid(f"{target.handle} has no live revision; name one with `revision`")
    max_tokens = body.get("max_tokens", 32)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise Invalid("max_tokens must be an integer")
    job = jobs.start_inference(
        target, revision, prompt=str(body.get("prompt", "")), max_tokens=max_tokens, actor=request.actor
    )
    return JsonResponse(out.job_dict(job), status=202)


@api_endpoint("POST")
def adapter_promote(request, person, adapter):
    target = people.get_adapter(person, adapter)
    body = json_body(request)
    revision = get_revision(target, _required(body, "revision"))
    event = pointer.promote(
        revision,
        actor=request.actor,
        reason=str(body.get("reason", "")),
        override_reason=str(body.get("override_reason", "")),
    )
    return JsonResponse(out.pointer_event_dict(event))


@api_endpoint("GET", "POST")
def adapter_gate(request, person, adapter):
    """The promotion gate: evaluation dataset, thresholds, auto-promotion."""
    target = people.get_adapter(person, adapter)
    if request.method == "POST":
        body = json_body(request)
        dataset = get_dataset(target.person, str(body["eval_dataset"])) if body.get("eval_dataset") else None
        auto = body.get("auto_promote")
        if auto is not None and not isinstance(auto, bool):
            raise Invalid("auto_promote must be true or false")
        gates.configure_gate(
            target,
            actor=request.actor,
            eval_dataset=dataset,
            thresholds=body.get("thresholds"),
            auto_promote=auto,
        )
    return JsonResponse(out.gate_dict(target))


@api_endpoint("POST")
def adapter_rollback(request, person, adapter):
    target = people.get_adapter(person, adapter)
    body = json_body(request)
    to = get_revision(target, str(body["to"])) if body.get("to") else None
    event = pointer.rollback(target, to=to, actor=request.actor, reason=str(body.get("reason", "")))
    return JsonResponse(out.pointer_event_dict(event))


@api_endpoint("GET")
def jobs_collection(request):
    """Jobs newest first, keyset on the id as the studies list: ?after=<the last id seen>
    (&adapter=<person/adapter>&state=&kind=&limit=)."""
    after, limit = _after_id(request, "job"), _limit(request)
    found = Job.objects.select_related("adapter__person", "revision", "result_revision")
    if after is not None:
        found = found.filter(pk__lt=after)
    if handle := request.GET.get("adapter"):
        person, _, name = handle.partition("/")
        found = found.filter(adapter=people.get_adapter(person, name))
    for field, choices in (("state", Job.STATES), ("kind", Job.KINDS)):
        if (value := _choice(request, field, choices)) is not None:
            found = found.filter(**{field: value})
    rows = list(found.order_by("-pk")[: limit + 1])
    return JsonResponse(
        _page(rows, limit, lambda job: out.job_dict(job, detail=False), cursor=lambda job: job.pk)
    )


@api_endpoint("GET")
def job_detail(request, job_id):
    return JsonResponse(out.job_dict(_job(job_id)))


@api_endpoint("POST")
def job_cancel(request, job_id):
    return JsonResponse(out.job_dict(jobs.cancel_job(_job(job_id), actor=request.actor)))


@api_endpoint("GET")
def revision_download(request, person, adapter, rev):
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


def _required(body: dict, key: str) -> str:
    value = body.get(key)
    if value in (None, ""):
        raise Invalid(f"{key} is required")
    return str(value)


def _dataset_page(request, person: Person) -> dict:
    """The person's datasets, oldest first, keyset on the id (?after=<id>&purpose=&limit=)."""
    after, limit = _after_id(request, "dataset"), _limit(request)
    datasets = Dataset.objects.filter(person=person, pk__gt=after or 0)
    if (purpose := _choice(request, "purpose", Dataset.PURPOSES)) is not None:
        datasets = datasets.filter(purpose=purpose)
    rows = list(datasets.order_by("pk")[: limit + 1])
    return _page(rows, limit, out.dataset_dict, cursor=lambda dataset: dataset.pk)


def _choice(request, field: str, choices) -> str | None:
    """A list filter's ?field=: None when absent, refused when not one of the model's choices."""
    value = request.GET.get(field)
    if value is not None and value not in dict(choices):
        raise Invalid(f"{field} must be one of {', '.join(dict(choices))}")
    return value


def _after_id(request, what: str) -> int | None:
    """The `after` cursor of a list keyed by id: None when absent, refused when not an id."""
    after = request.GET.get("after", "")
    if after and not after.isdigit():
        raise Invalid(f"after must be a {what} id")
    return int(after) if after else None


def _page(rows: list, limit: int, serialize, *, cursor) -> dict:
    """One page of a keyset list from up to limit + 1 rows (an extra one says more follow)."""
    more, rows = len(rows) > limit, rows[:limit]
    return {"data": [serialize(row) for row in rows], "next_after": cursor(rows[-1]) if more else None}


def _limit(request) -> int:
    """?limit=: rows per page, 50 unless asked; more than PAGE_LIMIT gets PAGE_LIMIT (a
    client asking for "all" still pages), and fewer than one is a mistake worth naming."""
    try:
        limit = int(request.GET.get("limit", 50))
    except ValueError:
        raise Invalid("limit must be an integer") from None
    if limit < 1:
        raise Invalid(f"limit must be at least 1 (at most {PAGE_LIMIT} rows come back a page)")
    return min(PAGE_LIMIT, limit)
