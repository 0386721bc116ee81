"""Routing: a request goes to a worker that holds its adapter, else to the least loaded one."""

import itertools
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from adapters_app.lifecycle.routing import Dispatched, current_loads, route, worker_queue
from adapters_app.models import ResidentAdapter, Worker

pytestmark = pytest.mark.django_db

SHA = "a" * 64
_names = itertools.count()


@pytest.fixture
def fleet():
    """Make workers of this fleet (consuming the shared queue and their own); their load
    counters are removed afterwards."""
    made: list[Worker] = []

    def worker(*, seen_ago: float = 0, stopped: bool = False, shared: bool = True) -> Worker:
        name = f"routing-{next(_names)}@host"
        now = timezone.now()
        queues = [worker_queue(name)] + ([settings.CELERY_TASK_DEFAULT_QUEUE] if shared else ["other-fleet"])
        made.append(
            Worker.objects.create(
                name=name,
                hostname="host",
                pid=1,
                queues=queues,
                concurrency=1,
                device="cpu",
                code_version="test",
                started_at=now,
                last_seen_at=now - timedelta(seconds=seen_ago),
                stopped_at=now if stopped else None,
            )
        )
        return made[-1]

    yield worker
    cache.delete_many([f"route-load:{w.name}" for w in made])


def holding(worker: Worker, sha256: str = SHA) -> Worker:
    now = timezone.now()
    ResidentAdapter.objects.create(
        worker=worker, pid=2, tier="cpu", sha256=sha256, bytes=1000, loaded_at=now, last_used_at=now
    )
    return worker


def test_with_no_worker_known_the_shared_queue_takes_the_request():
    assert route(SHA).queue == settings.CELERY_TASK_DEFAULT_QUEUE
    assert route(SHA).reason == "shared"


def test_a_worker_that_holds_the_adapter_gets_the_request(fleet):
    fleet()
    holder = holding(fleet())
    fleet()
    chosen = route(SHA)
    assert (chosen.worker, chosen.queue, chosen.reason) == (
        holder.name,
        worker_queue(holder.name),
        "resident",
    )


def test_among_holders_the_least_loaded_wins(fleet):
    first, second = holding(fleet()), holding(fleet())
    with Dispatched(route(SHA)):
        assert current_loads([first.name, second.name]) == {first.name: 1, second.name: 0}
        assert route(SHA).worker == second.name
    assert current_loads([first.name]) == {first.name: 0}


def test_when_nobody_holds_it_the_least_loaded_worker_cold_loads_it(fleet):
    busy, idle = fleet(), fleet()
    holding(busy, "b" * 64)
    with Dispatched(route("b" * 64)):
        chosen = route(SHA)
    assert (chosen.worker, chosen.reason) == (idle.name, "cold")


def test_stale_stopped_and_other_fleets_workers_are_never_chosen(fleet):
    holding(fleet(seen_ago=3600))
    holding(fleet(stopped=True))
    holding(fleet(shared=False))
    assert route(SHA).reason == "shared"
    healthy = fleet()
    assert route(SHA).worker == healthy.name
