"""Launching, cancelling, retrying and sweeping jobs.

A job row is written (and audited) in one transaction; its Celery task is sent
only after that commits, so a worker never picks up a job it cannot see.
"""

import logging
import time
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from adapters_app.lifecycle import audit, broker
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.errors import Conflict, Invalid
from adapters_app.lifecycle.roles import authorize
from adapters_app.lifecycle.storage import delete_unreferenced_blob, get_store, is_referenced
from adapters_app.models import Adapter, Dataset, Job, Revision
from mintweb.celery import app as celery_app
from workers.engine.suites import SUITE_FORMAT
from workers.engine.training import TrainingConfig, TrainingConfigInvalid

log = logging.getLogger(__name__)

TASK_FOR_KIND = {
    Job.TRAIN: "workers.tasks.train",
    Job.EVALUATE: "workers.tasks.evaluate",
    Job.INFER: "workers.tasks.infer",
    Job.STUDY: "workers.tasks.study_cell",
}


def start_training(
    adapter: Adapter, dataset: Dataset, *, config: dict | None, actor: Actor, auto_promote: bool | None = None
) -> Job:
    """Train a new revision. With auto-promotion (the adapter's setting unless given
    here) the new revision is then evaluated on the adapter's evaluation set and
    promoted if it passes its gate."""
    authorize(actor, "train")
    if dataset.person_id != adapter.person_id:
        raise Invalid(f"dataset {dataset.pk} belongs to another person")
    if dataset.format == SUITE_FORMAT:
        raise Invalid(f"{dataset.name} is an evaluation set; train on chat, completion or preference rows")
    try:
        training = TrainingConfig.from_dict(config)
    except TrainingConfigInvalid as exc:
        raise Invalid(f"invalid training config: {exc}", details=exc.errors) from None
    auto_promote = adapter.auto_promote if auto_promote is None else bool(auto_promote)
    if auto_promote and adapter.eval_dataset_id is None:
        raise Invalid(f"auto-promotion needs an evaluation dataset; set one on {adapter.handle}'s gate first")
    params = {
        "config": training.as_dict(),
        "parent_revision_id": adapter.live_revision_id,
        "auto_promote": auto_promote,
    }
    return launch_job(
        Job.TRAIN, actor, adapter=adapter, dataset=dataset, params=params, total_steps=training.steps
    )


def retrain_config(adapter: Adapter) -> TrainingConfig:
    """What a retrain starts from: the live revision's recipe (rank, steps, replay, targets…),
    so an operator changes what they mean to and keeps the rest; defaults with nothing live."""
    live = adapter.live_revision
    if live is None:
        return TrainingConfig()
    try:
        return TrainingConfig.from_dict(live.training_config)
    except TrainingConfigInvalid:  # a recipe from an older code version
        return TrainingConfig()


def start_evaluation(
    adapter: Adapter, dataset: Dataset, *, revision: Revision | None, actor: Actor, then_promote: bool = False
) -> Job:
    """Evaluate `revision` (or the bare base when None) on `dataset`.

    On an evaluation set (suite items) every item is generated and graded; on
    training-format rows the held-out loss and token accuracy are measured.
    `then_promote` promotes the revision afterwards if its gate passes."""
    authorize(actor, "evaluate")
    if dataset.person_id != adapter.person_id:
        raise Invalid(f"dataset {dataset.pk} belongs to another person")
    if revision is not None and revision.adapter_id != adapter.pk:
        raise Invalid(f"{revision} does not belong to {adapter.handle}")
    if then_promote and revision is None:
        raise Invalid("only a revision can be promoted after its evaluation")
    return launch_job(
        Job.EVALUATE,
        actor,
        adapter=adapter,
        dataset=dataset,
        revision=revision,
        params={"then_promote": then_promote},
        total_steps=dataset.rows,
    )


def start_inference(
    adapter: Adapter, revision: Revision | None, *, prompt: str, max_tokens: int, actor: Actor
) -> Job:
    authorize(actor, "infer")
    if not prompt.strip():
        raise Invalid("prompt is empty")
    if not 1 <= max_tokens <= 1024:
        raise Invalid("max_tokens must be between 1 and 1024")
    return launch_job(
        Job.INFER,
        actor,
        adapter=adapter,
        revision=revision,
        params={"prompt": prompt, "max_tokens": max_tokens},
        total_steps=1,
    )


def launch_job(kind: str, actor: Actor, *, audited: bool = True, **fields) -> Job:
    """Write a job row and send its task once the row is committed. `audited=False` is for
    a caller that records its own audit event for the jobs it launches (a study's cells)."""
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    task_id = str(uuid.uuid4())
    with transaction.atomic():
        job = Job.objects.create(
            kind=kind, created_by=actor.name, queue=queue, celery_task_id=task_id, **fields
        )
        adapter = fields.get("adapter")
        if audited:
            audit.record(
                actor,
                f"job.{kind}",
                job,
                person_handle=adapter.person.handle if adapter else "",
                after={"params": job.params, "dataset": job.dataset_id, "revision": job.revision_id},
            )
        transaction.on_commit(
            lambda: celery_app.send_task(TASK_FOR_KIND[kind], args=[job.pk], task_id=task_id, queue=queue)
        )
    return job


def cancel_job(job: Job, *, actor: Actor, audited: bool = True) -> Job:
    """A queued job is cancelled at once; a running one stops at its next step."""
    authorize(actor, "job.cancel")
    before = job.state
    with transaction.atomic():
        if job.state == Job.QUEUED and job.mark_cancelled():
            pass
        elif Job.objects.filter(pk=job.pk, state=Job.RUNNING).update(cancel_requested=True):
            job.cancel_requested = True
        else:
            job.refresh_from_db()
            raise Conflict(f"job {job.pk} is {job.state}; only queued or running jobs can be cancelled")
        if audited:
            audit.record(actor, "job.cancel", job, person_handle=_person_of(job), before={"state": before})
    if job.state == Job.CANCELLED:
        celery_app.control.revoke(job.celery_task_id)
    return job


def retry_job(job: Job, *, actor: Actor) -> Job:
    authorize(actor, "job.retry")
    if job.state not in (Job.FAILED, Job.CANCELLED):
        raise Conflict(f"job {job.pk} is {job.state}; only failed or cancelled jobs can be retried")
    return launch_job(
        job.kind,
        actor,
        adapter=job.adapter,
        dataset=job.dataset,
        revision=job.revision,
        params=job.params,
        total_steps=job.total_steps,
    )


def _person_of(job: Job) -> str:
    return job.adapter.person.handle if job.adapter_id else ""


def sweep_stale_jobs(*, stale_after: float | None = None) -> list[int]:
    """Fail running jobs whose worker stopped beating: it died, and no one else will."""
    seconds = settings.MINT_STALE_JOB_SECONDS if stale_after is None else stale_after
    swept = []
    for job in Job.stale(timedelta(seconds=seconds)).select_related("adapter__person"):
        reason = (
            f"worker {job.worker or '?'} stopped sending heartbeats "
            f"(last at {job.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC, more than {seconds:g}s ago); "
            "presumed dead, so the job was failed"
        )
        with transaction.atomic():
            if job.fail(reason):
                audit.record(
                    Actor.system("sweeper"),
                    "job.fail_stale",
                    job,
                    person_handle=_person_of(job),
                    after={"error": reason},
                )
                swept.append(job.pk)
    return swept


def requeue_lost_jobs(*, older_than: float | None = None) -> list[int]:
    """Send again the task of each job still queued after `older_than` seconds whose message
    the broker no longer holds: a Redis restart without persistence loses every message
    waiting in it, and the job would stay queued for ever. Safe to repeat: a job runs only
    once claimed (queued → running), so a message that turns up twice runs it once."""
    seconds = settings.MINT_LOST_JOB_SECONDS if older_than is None else older_than
    cutoff = timezone.now() - timedelta(seconds=seconds)
    waiting = list(Job.objects.filter(state=Job.QUEUED, created_at__lt=cutoff).exclude(celery_task_id=""))
    if not waiting:
        return []
    held = broker.task_ids_held({job.queue or settings.CELERY_TASK_DEFAULT_QUEUE for job in waiting})
    if held is None:
        return []
    requeued = []
    for job in waiting:
        if job.celery_task_id in held:
            continue
        queue = job.queue or settings.CELERY_TASK_DEFAULT_QUEUE
        celery_app.send_task(TASK_FOR_KIND[job.kind], args=[job.pk], task_id=job.celery_task_id, queue=queue)
        job.append_log("its task was no longer in the broker (Redis restarted?); sent again")
        requeued.append(job.pk)
    if requeued:
        log.warning("re-sent the lost tasks of %d queued job(s): %s", len(requeued), requeued)
    return requeued


def sweep_orphan_blobs(*, grace_seconds: float | None = None) -> list[str]:
    """Remove store blobs that no revision or dataset references, once past a grace period.

    The grace period protects a blob that a worker has just written and is
    about to reference in its revision row.
    """
    grace = settings.MINT_ORPHAN_BLOB_GRACE_SECONDS if grace_seconds is None else grace_seconds
    store = get_store()
    removed = []
    for sha in store.all_keys():
        if is_referenced(sha) or store.age_seconds(sha) < grace:
            continue
        # Decided again under the blob's lock: an upload re-using it renews its age first.
        put_after_ns = time.time_ns() - int(grace * 1e9)
        if delete_unreferenced_blob(sha, put_after_ns=put_after_ns):
            removed.append(sha)
    if removed:
        log.warning("removed %d orphan blob(s) from the store", len(removed))
    return removed
