"""A worker killed with SIGKILL mid-training: the sweep fails its job and nothing half-made remains."""

import time

import pytest

from adapters_app.lifecycle.jobs import start_training
from adapters_app.lifecycle.storage import get_store
from adapters_app.models import AuditEvent, Job, Revision
from mintweb.celery import app as celery_app
from tests.conftest import wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_a_killed_worker_leaves_its_job_failed_with_no_revision_and_no_orphan_blob(
    adapter, dataset, actor, settings, spawn_worker, celery_worker_process
):
    doomed_queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-doomed"
    settings.CELERY_TASK_DEFAULT_QUEUE = doomed_queue
    doomed = spawn_worker(doomed_queue)

    job = start_training(adapter, dataset, config={"steps": 100000}, actor=actor)
    wait_for_job(job, until=lambda j: j.state == Job.RUNNING and j.step > 0)
    doomed.kill()

    job.refresh_from_db()
    assert job.state == Job.RUNNING  # nobody has noticed yet
    time.sleep(3.5)  # longer than the session worker's MINT_STALE_JOB_SECONDS=3
    swept = celery_app.send_task("workers.tasks.sweep", queue=celery_worker_process.queue).get(timeout=60)

    job.refresh_from_db()
    assert swept["stale_jobs"] == [job.pk]
    assert job.state == Job.FAILED
    assert "stopped sending heartbeats" in job.error and "presumed dead" in job.error
    assert not Revision.objects.exists()
    # The sweep leaves no blob that nothing references: only the dataset's remains.
    assert set(get_store().all_keys()) == {dataset.sha256}
    assert AuditEvent.objects.filter(action="job.fail_stale", object_id=str(job.pk)).exists()


def test_the_sweep_removes_a_blob_that_nothing_references(db, settings):
    from adapters_app.lifecycle.jobs import sweep_orphan_blobs

    store = get_store()
    orphan = store.put(b"written by a worker that died before its revision row").sha256
    assert sweep_orphan_blobs(grace_seconds=3600) == []  # too young: may be about to be referenced
    assert sweep_orphan_blobs(grace_seconds=0) == [orphan]
    assert not store.exists(orphan)
