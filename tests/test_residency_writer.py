"""One writer per worker process for the rows that say what it holds (`ResidentAdapter`,
`ResidencyStats`): the holders' reports, the heartbeat's and the erasure sweep's changes and
the managers' snapshots all go to `workers/residency_report.py:ResidencyWriter`, which
applies them in the order they happened. Real rows, a real manager and store, the real
heartbeat and erasure sweep; and a real worker process for the whole path."""

import os
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.fleet import sweep_silent_workers
from adapters_app.lifecycle.inference import complete
from adapters_app.lifecycle.people import erase_person
from adapters_app.lifecycle.storage import get_store
from adapters_app.models import ResidencyStats, ResidentAdapter, Worker
from tests.conftest import wait_until
from tests.test_residency_console import BASE_X, TIER_NAMES, a_manager, put
from tests.test_workers import SHORT, a_worker, start_worker
from workers.engine.store import AdapterStore
from workers.heartbeat import WorkerHeartbeat
from workers.residency_report import Evicted, Forgotten, Loaded, Used, process_writer, stop_reporting

RUNTIME, SERVING = ResidentAdapter.RUNTIME, ResidentAdapter.SERVING
DEPARTED_PID = 999_999  # a pool process that is gone


@pytest.fixture
def store(tmp_path):
    return AdapterStore(tmp_path / "store")


@pytest.fixture
def writer_of():
    """This process's writer, for a worker name; dropped (its thread stopped) afterwards."""
    yield process_writer
    stop_reporting()


def loaded(worker: Worker, sha256: str, holder: str = RUNTIME, base_digest: str = BASE_X) -> Loaded:
    return Loaded(holder, worker.name, ResidentAdapter.ADAPTER, sha256, base_digest, "cpu", 1000)


def held(worker: Worker) -> set[tuple[str, str]]:
    return set(ResidentAdapter.objects.filter(worker=worker).values_list("sha256", "holder"))


def celery_consumer(name: str, pids: list[int]) -> SimpleNamespace:
    """What the heartbeat reads of Celery's consumer: its node name, queues and pool."""
    return SimpleNamespace(
        hostname=name,
        task_consumer=SimpleNamespace(queues=[SimpleNamespace(name="mint")]),
        pool=SimpleNamespace(num_processes=1, info={"processes": pids}),
    )


@pytest.mark.django_db
def test_events_are_applied_in_the_order_they_happened(writer_of):
    worker = a_worker("w@host", pid=os.getpid())
    writer = writer_of(worker.name)
    first, second = "1" * 64, "2" * 64

    # A copy loaded just before the erasure sweep dropped it: the drop comes after, and wins.
    writer.submit(loaded(worker, first))
    writer.submit(Forgotten(worker.name, frozenset({first})))
    writer.submit(loaded(worker, second))
    assert writer.write_pending()
    assert held(worker) == {(second, RUNTIME)}

    # Uses count on the row loaded before them; an eviction and a new load start afresh.
    writer.submit(Used(RUNTIME, worker.name, second, timezone.now()))
    writer.submit(Evicted(RUNTIME, worker.name, second, "cpu"))
    writer.submit(loaded(worker, second, SERVING))
    writer.submit(Used(SERVING, worker.name, second, timezone.now()))
    assert writer.write_pending()
    assert held(worker) == {(second, SERVING)}
    assert ResidentAdapter.objects.get(worker=worker, sha256=second).uses == 1


@pytest.mark.django_db
def test_the_heartbeat_hands_departed_processes_and_a_fresh_start_to_the_writer(writer_of, store, tmp_path):
    worker = a_worker("beating@host", pid=os.getpid())
    heartbeat = WorkerHeartbeat(celery_consumer(worker.name, [os.getpid()]), interval=1)
    manager = a_manager(store, tmp_path / "cache")
    manager.get(put(store, "a"))
    writer = writer_of(worker.name)
    writer.write_round([manager])
    ResidentAdapter.objects.create(
        worker=worker, pid=DEPARTED_PID, sha256="3" * 64, tier="cpu", bytes=10, loaded_at=timezone.now()
    )

    heartbeat.beat()  # the departed process's row goes; this process's stay

    assert set(ResidentAdapter.objects.filter(worker=worker).values_list("pid", flat=True)) == {os.getpid()}
    assert ResidencyStats.objects.filter(worker=worker).count() == len(TIER_NAMES)

    # A fresh start (after the sweep presumed the worker dead) wipes what it reported, after
    # what was handed over before it; and the writer's next round writes what its manager
    # holds again, though nothing changed there.
    writer.submit(loaded(worker, "4" * 64))
    heartbeat.announce()
    assert writer.waiting() == 0
    assert not ResidentAdapter.objects.filter(worker=worker).exists()
    assert not ResidencyStats.objects.filter(worker=worker).exists()
    writer.write_round([manager])
    stats = ResidencyStats.objects.filter(worker=worker, pid=os.getpid(), base_digest=BASE_X)
    assert stats.count() == len(TIER_NAMES)
    assert ResidentAdapter.objects.filter(worker=worker, holder=SERVING).exists()


@pytest.mark.django_db
def test_the_erasure_sweep_hands_what_it_dropped_to_the_writer_after_what_came_before(
    writer_of, micro_base, make_revision
):
    from workers.forgetting import forget_erased
    from workers.runs import runtime

    worker = a_worker("sweeping@host", pid=os.getpid())
    revision = make_revision()
    runtime().answer(micro_base.path, micro_base.digest, revision.sha256, get_store().get, "hi", 4)
    writer = writer_of(worker.name)
    # The runtime's load, handed to the writer and not written yet (say the database was busy).
    writer.submit(loaded(worker, revision.sha256, base_digest=micro_base.digest))

    erase_person(revision.adapter.person, actor=Actor.system("test"), reason="asked to be forgotten")
    forgotten, still_in_use = forget_erased(worker.name)

    # (Revisions an earlier test left in this process's runtime are swept too: no row names them.)
    assert revision.sha256 in forgotten and still_in_use == set()
    assert revision.sha256 not in runtime().held()
    assert held(worker) == set()  # the load was written first, then dropped


# --- a real worker ------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_worker_presumed_dead_that_comes_back_reports_its_residency_per_base_again(
    spawn_worker, settings, make_revision, micro_base
):
    revision = make_revision()
    _, worker = start_worker(spawn_worker, settings, "writer")
    complete(f"alice/assistant@{revision.label}", "hi", SHORT)

    def stats() -> set[tuple]:
        rows = ResidencyStats.objects.filter(worker=worker)
        return set(rows.values_list("base_digest", "base", "tier"))

    expected = {(micro_base.digest, micro_base.pk, tier) for tier in TIER_NAMES}
    wait_until(lambda: stats() == expected, timeout=10)

    def presumed_dead() -> bool:
        # As if it had been wedged past the silence limit: the sweep removes its rows.
        Worker.objects.filter(pk=worker.pk).update(last_seen_at=timezone.now() - timedelta(hours=2))
        return worker.name in sweep_silent_workers()

    wait_until(presumed_dead, timeout=5)

    # Its heartbeat finds it stopped and announces a fresh start; the process's writer then
    # writes what its manager holds again, though nothing changed there since.
    wait_until(lambda: stats() == expected, timeout=15)
    wait_until(lambda: (revision.sha256, SERVING) in held(worker), timeout=5)
