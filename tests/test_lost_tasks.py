"""A queued job whose task the broker lost (Redis restarted without persistence) is sent again."""

import uuid

import pytest

from adapters_app.lifecycle.broker import task_ids_held
from adapters_app.lifecycle.jobs import requeue_lost_jobs, start_training
from mintweb.celery import app as celery_app

pytestmark = pytest.mark.django_db


@pytest.fixture
def nobody_listens(settings):
    """A queue no worker consumes, emptied afterwards."""
    settings.CELERY_TASK_DEFAULT_QUEUE = queue = f"nobody-listens-{uuid.uuid4().hex[:8]}"
    yield queue
    drop_queue(queue)


def drop_queue(queue: str) -> None:
    """What a Redis restart does to the messages waiting in `queue`."""
    with celery_app.connection_for_write() as connection:
        connection.default_channel.client.delete(queue)


def test_a_queued_job_whose_task_the_broker_lost_is_sent_again_once(
    adapter, dataset, actor, nobody_listens, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        job = start_training(adapter, dataset, config={"steps": 2}, actor=actor)
    assert job.celery_task_id in task_ids_held({nobody_listens})
    assert requeue_lost_jobs(older_than=0) == []  # its task is waiting: nothing to do

    drop_queue(nobody_listens)
    assert requeue_lost_jobs(older_than=0) == [job.pk]
    assert job.celery_task_id in task_ids_held({nobody_listens})
    assert requeue_lost_jobs(older_than=0) == []  # sent once, not at every sweep
    job.refresh_from_db()
    assert job.state == job.QUEUED
    assert "sent again" in job.log


def test_a_job_queued_only_moments_ago_is_left_alone(adapter, dataset, actor, nobody_listens):
    # Its task may be on its way (sent once the row commits); the grace period covers that.
    start_training(adapter, dataset, config={"steps": 2}, actor=actor)
    assert requeue_lost_jobs(older_than=3600) == []
