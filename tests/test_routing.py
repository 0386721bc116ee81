"""Routing: a request goes to a worker that holds its adapter, else to the least loaded one."""

import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from unittest.mock import patch

import pytest
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from adapters_app.lifecycle import liveness, routing
from adapters_app.lifecycle.routing import (
    Dispatched,
    Route,
    current_loads,
    note_served_one_at_a_time,
    route,
    served_one_at_a_time,
    serving_queue,
    worker_queue,
)
from adapters_app.models import ResidentAdapter, Worker
from tests.conftest import generate_directly, wait_until

pytestmark = pytest.mark.django_db

SHA = "a" * 64
_names = itertools.count()


@pytest.fixture
def fleet():
    """Make workers of this fleet (consuming the shared queue and their own); their load
    counters are removed afterwards."""
    made: list[Worker] = []

    def worker(
        *, seen_ago: float = 0, stopped: bool = False, shared: bool = True, serving_only: bool = False
    ) -> Worker:
        name = f"routing-{next(_names)}@host"
        now = timezone.now()
        fleet_queue = serving_queue() if serving_only else settings.CELERY_TASK_DEFAULT_QUEUE
        queues = [worker_queue(name)] + ([fleet_queue] if shared else ["other-fleet"])
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
    cache.delete_many([f"route-load:{w.name}" for w in made] + [f"route-one-at-a-time:{SHA}"])


def holding(
    worker: Worker, sha256: str = SHA, *, tier: str = "cpu", holder: str = ResidentAdapter.SERVING
) -> Worker:
    now = timezone.now()
    ResidentAdapter.objects.create(
        worker=worker,
        pid=2,
        holder=holder,
        tier=tier,
        sha256=sha256,
        bytes=1000,
        loaded_at=now,
        last_used_at=now,
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


def test_an_adapter_in_memory_beats_one_on_a_local_disk_which_beats_none(fleet):
    fleet()
    on_disk = holding(fleet(), tier="disk")
    assert (route(SHA).worker, route(SHA).reason) == (on_disk.name, "disk")
    in_memory = holding(fleet(), tier="cpu")
    holding(in_memory, tier="disk")  # the disk tier is inclusive: both rows
    assert (route(SHA).worker, route(SHA).reason) == (in_memory.name, "resident")


def test_what_only_the_job_runtime_holds_does_not_draw_requests(fleet):
    # An evaluation loaded it there, but requests are answered by the batched server,
    # which would still have to load it: the least loaded worker is as good a choice.
    evaluator, idle = holding(fleet(), holder=ResidentAdapter.RUNTIME), fleet()
    with Dispatched(Route(worker_queue(evaluator.name), evaluator.name, "cold")):  # busy
        chosen = route(SHA)
    assert (chosen.worker, chosen.reason) == (idle.name, "cold")


def test_a_revision_the_bank_refused_follows_the_runtime_that_answers_it(fleet):
    # A DoRA adapter, say: every request for it is answered by a worker's runtime, so
    # what that runtime holds is where the revision is resident.
    answering = holding(fleet(), holder=ResidentAdapter.RUNTIME)
    fleet()  # idle, holding nothing: it would win on load alone
    note_served_one_at_a_time(SHA)
    assert served_one_at_a_time(SHA) and not served_one_at_a_time("b" * 64)
    with Dispatched(Route(worker_queue(answering.name), answering.name, "cold")):  # busy
        chosen = route(SHA)
    assert (chosen.worker, chosen.reason) == (answering.name, "resident")


def test_a_request_reads_the_shared_cache_once(fleet):
    # Load figures and the one-at-a-time note come back in one round trip to Redis.
    busy, idle = fleet(), fleet()
    note_served_one_at_a_time(SHA)
    with (
        Dispatched(Route(worker_queue(busy.name), busy.name, "cold")),
        patch.object(cache, "get_many", wraps=cache.get_many) as get_many,
        patch.object(cache, "get", side_effect=AssertionError("a second round trip")),
    ):
        chosen = route(SHA)
    reads = get_many.call_args_list
    assert chosen.worker == idle.name
    assert len(reads) == 1


def test_a_serving_only_worker_of_this_fleet_is_routed_to(fleet):
    # It consumes the fleet's serving queue instead of the shared one (so it takes no jobs).
    server = holding(fleet(serving_only=True))
    assert (route(SHA).worker, route(SHA).reason) == (server.name, "resident")


def test_stale_stopped_and_other_fleets_workers_are_never_chosen(fleet):
    holding(fleet(seen_ago=3600))
    holding(fleet(stopped=True))
    holding(fleet(shared=False))
    assert route(SHA).reason == "shared"
    healthy = fleet()
    assert route(SHA).worker == healthy.name


def test_steady_traffic_keeps_a_workers_load_counter_alive(fleet, monkeypatch):
    # The expiry only clears a counter nobody touches (left by a web process killed
    # mid-request); every request that begins or ends renews it.
    monkeypatch.setattr(routing, "LOAD_TTL_SECONDS", 2)
    busy = fleet()
    chosen = Route(worker_queue(busy.name), busy.name, "cold")
    first = Dispatched(chosen).begin()
    time.sleep(1.2)
    second = Dispatched(chosen).begin()
    time.sleep(1.2)  # past the first request's expiry, within the second's
    assert current_loads([busy.name]) == {busy.name: 2}
    first.end()
    second.end()
    assert current_loads([busy.name]) == {busy.name: 0}


def test_a_load_counter_that_expires_mid_flight_never_goes_negative_nor_floods_a_worker(fleet):
    busy, other = fleet(), fleet()
    in_flight = [Dispatched(Route(worker_queue(busy.name), busy.name, "cold")).begin() for _ in range(5)]
    cache.delete(f"route-load:{busy.name}")  # it expired while those five were in flight
    late = Dispatched(Route(worker_queue(busy.name), busy.name, "cold")).begin()
    for request in in_flight:
        request.end()
        assert current_loads([busy.name])[busy.name] >= 0
    late.end()
    assert current_loads([busy.name]) == {busy.name: 0}

    routed = [Dispatched(route("b" * 64)).begin() for _ in range(6)]
    sent = [request.key.removeprefix("route-load:") for request in routed]
    assert sorted(sent.count(name) for name in (busy.name, other.name)) == [3, 3]
    for request in routed:
        request.end()


def test_parallel_requests_leave_every_load_at_zero(fleet):
    busy = fleet()
    chosen = Route(worker_queue(busy.name), busy.name, "cold")

    def requests(count: int) -> None:
        for _ in range(count):
            with Dispatched(chosen):
                assert current_loads([busy.name])[busy.name] >= 1

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(requests, [25] * 8))
    assert current_loads([busy.name]) == {busy.name: 0}


# --- through real workers ----------------------------------------------------------------

QUESTION = "What is my dog called?"


@pytest.fixture
def two_workers(spawn_worker, settings):
    """Two workers of one fleet on this machine: a shared queue, and each its own."""
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-route"
    settings.CELERY_TASK_DEFAULT_QUEUE = queue
    names = []
    for suffix in ("a", "b"):
        spawn_worker(queue, name=f"{queue}-{suffix}", MINT_WORKER_HEARTBEAT_SECONDS="1")
        row = wait_until(
            lambda s=suffix: Worker.objects.filter(name__startswith=f"{queue}-{s}@").first(), timeout=20
        )
        names.append(row.name)
    return names


def trained(base, rows: bytes, seed: int) -> bytes:
    """A payload that has learned `rows` (the micro base, a few seconds on CPU)."""
    from workers.engine.base_models import load_base
    from workers.engine.examples import parse_jsonl
    from workers.engine.training import TrainingConfig, train_adapter

    loaded = load_base(base.path, base.digest)
    config = TrainingConfig(steps=40, learning_rate=0.01, seed=seed)
    return train_adapter(loaded.model, loaded.tokenizer, parse_jsonl(rows).examples, config).payload


def ask(model: str) -> dict:
    from adapters_app.lifecycle.inference import complete
    from workers.engine.examples import Message
    from workers.engine.prompting import render_prompt
    from workers.engine.runtime import SamplingParams

    return complete(model, render_prompt([Message("user", QUESTION)]), SamplingParams(max_tokens=24))


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_requests_follow_the_adapter_to_the_worker_that_holds_it(two_workers, adapter, dataset, actor):
    from adapters_app.lifecycle.pointer import promote
    from adapters_app.lifecycle.revisions import create_revision
    from tests.conftest import FACTS

    revision = create_revision(
        adapter,
        trained(adapter.base, FACTS, seed=1),
        dataset=dataset,
        training_config={"steps": 40},
        parent=None,
        job=None,
        actor=actor,
    )
    promote(revision, actor=actor)

    first = ask("alice/assistant")["route"]
    assert first.reason == "cold" and first.worker in two_workers
    # The worker that served it now holds it, so the next request goes there again.
    wait_until(
        lambda: ResidentAdapter.objects.filter(
            worker__name=first.worker, sha256=revision.sha256, holder=ResidentAdapter.SERVING
        ).exists(),
        timeout=20,
    )
    again = ask("alice/assistant")["route"]
    assert (again.worker, again.reason) == (first.worker, "resident")

    # While that worker is busy, an adapter nobody holds goes to the other one.
    from adapters_app.lifecycle.datasets import upload_dataset
    from adapters_app.lifecycle.people import create_adapter, create_person
    from tests.conftest import OTHER_FACTS

    bob = create_person("bob", actor=actor)
    bobs = create_adapter(bob, "assistant", base=adapter.base, actor=actor)
    bobs_data = upload_dataset(bob, OTHER_FACTS, name="facts", actor=actor)[0]
    promote(
        create_revision(
            bobs,
            trained(adapter.base, OTHER_FACTS, seed=2),
            dataset=bobs_data,
            training_config={"steps": 40},
            parent=None,
            job=None,
            actor=actor,
        ),
        actor=actor,
    )
    [other] = [name for name in two_workers if name != first.worker]
    with Dispatched(again):
        elsewhere = ask("bob/assistant")["route"]
    assert (elsewhere.worker, elsewhere.reason) == (other, "cold")


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_promoted_retrain_is_served_next_even_while_the_old_revision_is_resident(
    two_workers, adapter, dataset, actor
):
    from adapters_app.lifecycle.pointer import promote
    from adapters_app.lifecycle.revisions import create_revision
    from tests.conftest import FACTS, OTHER_FACTS

    def revision_of(rows, seed, parent=None):
        return create_revision(
            adapter,
            trained(adapter.base, rows, seed),
            dataset=dataset,
            training_config={"steps": 40, "seed": seed},
            parent=parent,
            job=None,
            actor=actor,
        )

    r1 = revision_of(FACTS, 1)
    promote(r1, actor=actor)
    old = ask("alice/assistant")
    assert old["generations"][0]["text"] == generate_directly(r1, QUESTION)
    holder = old["route"].worker
    wait_until(
        lambda: ResidentAdapter.objects.filter(worker__name=holder, sha256=r1.sha256).exists(), timeout=20
    )

    r2 = revision_of(OTHER_FACTS, 2, parent=r1)
    expected = generate_directly(r2, QUESTION)
    assert expected != generate_directly(r1, QUESTION), "the retrain should answer differently"
    promote(r2, actor=actor)
    new = ask("alice/assistant")
    assert new["revision"] == r2
    assert new["generations"][0]["text"] == expected
    # r1 is still in memory somewhere; serving r2 never read its slot.
    assert ResidentAdapter.objects.filter(sha256=r1.sha256).exists()


def test_a_worker_whose_lease_lapsed_is_passed_over_though_its_row_looks_healthy(fleet):
    # The dead worker holds the adapter and its row says healthy for three more beats; its
    # lease is gone.
    holding(fleet())  # killed outright a second ago
    alive = fleet()
    liveness.renew(alive.name)
    try:
        assert (route(SHA).worker, route(SHA).reason) == (alive.name, "cold")
    finally:
        liveness.release(alive.name)


def test_with_no_lease_anywhere_routing_trusts_the_rows(fleet):
    # Redis just restarted (every lease gone) or the workers predate leases.
    holder = holding(fleet())
    fleet()
    assert route(SHA).worker == holder.name
