"""Plain-dict views of domain objects for the JSON API."""

from adapters_app.models import Adapter, BaseModel, Dataset, Job, Person, PointerEvent, Revision


def _time(value):
    return value.isoformat() if value else None


def person_dict(person: Person) -> dict:
    return {
        "handle": person.handle,
        "display_name": person.display_name,
        "created_at": _time(person.created_at),
    }


def revision_dict(revision: Revision) -> dict:
    return {
        "label": revision.label,
        "number": revision.number,
        "sha256": revision.sha256,
        "size_bytes": revision.size_bytes,
        "rank": revision.rank,
        "parameters": revision.parameters,
        "parent": revision.parent.label if revision.parent_id else None,
        "provenance": {
            "dataset_sha256": revision.dataset_sha256,
            "dataset_rows": revision.dataset_rows,
            "training_config": revision.training_config,
            "seed": revision.seed,
            "init_method": revision.init_method,
            "base_digest": revision.base_digest,
            "code_version": revision.code_version,
            "job": revision.job_id,
            "created_by": revision.created_by,
            "created_at": _time(revision.created_at),
        },
        "final_loss": revision.final_loss,
    }


def revision_detail_dict(revision: Revision) -> dict:
    from adapters_app.lifecycle.gates import verdict

    return {**revision_dict(revision), "gate": verdict(revision).as_dict()}


def gate_dict(adapter: Adapter) -> dict:
    from adapters_app.lifecycle.gates import gate_of

    return {
        "eval_dataset": adapter.eval_dataset_id,
        "thresholds": gate_of(adapter),
        "auto_promote": adapter.auto_promote,
    }


def pointer_event_dict(event: PointerEvent) -> dict:
    return {
        "action": event.action,
        "from": event.from_revision.label if event.from_revision_id else None,
        "to": event.to_revision.label,
        "actor": event.actor,
        "reason": event.reason,
        "at": _time(event.created_at),
    }


def adapter_dict(adapter: Adapter, *, detail: bool = False) -> dict:
    body = {
        "id": adapter.handle,
        "person": adapter.person.handle,
        "name": adapter.name,
        "base": adapter.base.name,
        "base_digest": adapter.base_digest,
        "live": adapter.live_revision.label if adapter.live_revision_id else None,
        "created_at": _time(adapter.created_at),
    }
    if detail:
        revisions = adapter.revisions.select_related("parent").order_by("number")
        events = adapter.pointer_events.select_related("from_revision", "to_revision")
        body["revisions"] = [revision_detail_dict(r) for r in revisions]
        body["gate"] = gate_dict(adapter)
        body["pointer_history"] = [pointer_event_dict(e) for e in events]
    return body


def dataset_dict(dataset: Dataset) -> dict:
    return {
        "id": dataset.pk,
        "name": dataset.name,
        "purpose": dataset.purpose,
        "format": dataset.format,
        "sha256": dataset.sha256,
        "rows": dataset.rows,
        "size_bytes": dataset.size_bytes,
        "created_at": _time(dataset.created_at),
    }


def job_dict(job: Job, *, detail: bool = True) -> dict:
    """A job; lists leave out its log and loss curve (`detail=False`): the job's own URL has them."""
    body = {
        "id": job.pk,
        "kind": job.kind,
        "state": job.state,
        "adapter": job.adapter.handle if job.adapter_id else None,
        "dataset": job.dataset_id,
        "revision": job.revision.label if job.revision_id else None,
        "result_revision": job.result_revision.label if job.result_revision_id else None,
        "progress": {
            "step": job.step,
            "total": job.total_steps,
            "percent": job.progress_percent,
            "eta_seconds": job.eta_seconds,
        },
        "params": job.params,
        "result": job.result,
        "worker": job.worker,
        "heartbeat_at": _time(job.heartbeat_at),
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "created_by": job.created_by,
        "created_at": _time(job.created_at),
        "started_at": _time(job.started_at),
        "finished_at": _time(job.finished_at),
    }
    if detail:
        body["progress"]["loss"] = job.loss_points
        body["log"] = job.log.splitlines()
    return body


def base_model_dict(base: BaseModel, *, detail: bool = False) -> dict:
    """A base; `base.adapter_count` comes from `lifecycle.base_models.base_models()`."""
    from adapters_app.lifecycle.base_models import bytes_on_disk, serving_of

    mode, reason = serving_of(base)
    body = {
        "name": base.name,
        "digest": base.digest,
        "parameters": base.parameters,
        "architecture": base.architecture,
        "context_length": base.context_length,
        "license": base.license,
        "source": base.source,
        "serving_mode": mode,
        "adapters": base.adapter_count,
        "created_at": _time(base.created_at),
    }
    if detail:
        body["serving_reason"] = reason
        body["path"] = base.path
        body["bytes_on_disk"] = bytes_on_disk(base)
    return body
