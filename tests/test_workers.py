"""Workers report their health and what their processes hold in memory; the console shows both.

The integration tests start real Celery worker processes (heartbeat every second) and
serve real requests through them; the rest write rows the way a worker would.
"""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from adapters_app.console.workers import fleet_summary
from adapters_app.lifecycle.fleet import sweep_silent_workers
from adapters_app.lifecycle.inference import complete
from adapters_app.lifecycle.routing import worker_queue
from adapters_app.lifecycle.storage import get_store
from adapters_app.models import AuditEvent, ResidencyStats, ResidentAdapter, Worker
from mintweb.version import code_version
from tests.conftest import FACTS, wait_until
from workers.engine.examples import parse_jsonl
from workers.engine.runtime import AdapterRuntime, SamplingParams
from workers.engine.training import TrainingConfig, train_adapter

SHORT = SamplingParams(max_tokens=4)


def start_worker(spawn_worker, settings, suffix: str):
    """A worker on its own queue, where this test's inference requests go; and its row."""
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-{suffix}"
    settings.CELERY_TASK_DEFAULT_QUEUE = queue
    process = spawn_worker(queue, MINT_WORKER_HEARTBEAT_SECONDS="1")
    row = wait_until(lambda: Worker.objects.filter(name__startswith=f"{queue}@").first(), timeout=10)
    return process, row


def resident_revision(worker: Worker, revision):
    """The revision's row in the worker's memory (the disk tier's copy, if any, is another row)."""
    return ResidentAdapter.objects.filter(
        worker=worker, revision=revision, tier__in=ResidentAdapter.MEMORY_TIERS
    ).first()


def a_worker(name: str, **fields) -> Worker:
    """A worker row as its heartbeat writes it: healthy unless `fields` say otherwise."""
    now = timezone.now()
    defaults = dict(
        hostname="host", pid=4242, queues=["mint"], device="cpu", code_version="test", started_at=now
    )
    return Worker.objects.create(name=name, **{**defaults, "last_seen_at": now, **fields})


def resident(worker: Worker, revision=None, *, kind=ResidentAdapter.ADAPTER, nbytes=1000, tier="cpu"):
    return ResidentAdapter.objects.create(
        worker=worker,
        pid=worker.pid,
        kind=kind,
        tier=tier,
        sha256=revision.sha256 if revision else f"{kind}-{worker.name}",
        revision=revision,
        bytes=nbytes,
        loaded_at=timezone.now(),
        uses=1,
    )


@pytest.fixture
def viewer(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("vera", password="pw-vera-12345"))
    return client


# --- real workers ----------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_running_worker_reports_itself_healthy_within_seconds_and_keeps_beating(spawn_worker, settings):
    process, worker = start_worker(spawn_worker, settings, "beat")

    assert worker.health == Worker.HEALTHY
    assert worker.pid == process.process.pid
    # The shared queue, and its own for requests routed to it (lifecycle.routing).
    assert worker.queues == sorted([process.queue, worker_queue(worker.name)])
    assert worker.concurrency == 1
    assert worker.device in ("cpu", "cuda")
    assert worker.code_version == code_version()
    assert worker.stopped_at is None
    first_seen = worker.last_seen_at
    wait_until(lambda: Worker.objects.get(pk=worker.pk).last_seen_at > first_seen, timeout=5)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_worker_presumed_dead_that_comes_back_announces_itself_again(spawn_worker, settings):
    _, worker = start_worker(spawn_worker, settings, "revenant")

    def presumed_dead() -> bool:
        # As if it had been wedged past the silence limit. Only this worker: the session's
        # worker keeps beating. Tried again if a heartbeat lands between the two steps.
        Worker.objects.filter(pk=worker.pk).update(last_seen_at=timezone.now() - timedelta(hours=2))
        return worker.name in sweep_silent_workers()

    wait_until(presumed_dead, timeout=5)
    assert Worker.objects.get(pk=worker.pk).health == Worker.STOPPED

    back = wait_until(lambda: Worker.objects.filter(pk=worker.pk, stopped_at=None).first(), timeout=5)
    assert back.health == Worker.HEALTHY


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_serving_a_revision_leaves_it_and_its_base_resident_on_the_worker(
    spawn_worker, settings, make_revision, micro_base
):
    revision = make_revision()
    process, worker = start_worker(spawn_worker, settings, "serve")

    complete(f"alice/assistant@{revision.label}", "hi", SHORT)

    row = resident_revision(worker, revision)
    assert row is not None, list(ResidentAdapter.objects.values())
    assert row.kind == ResidentAdapter.ADAPTER and row.sha256 == revision.sha256
    assert row.holder == ResidentAdapter.SERVING  # the batched server answered it
    assert row.bytes > 0
    assert row.tier == ("gpu" if worker.device == "cuda" else "cpu")
    assert row.pid == process.process.pid  # --pool solo: the main process serves
    assert row.uses == 1 and row.last_used_at is not None
    base = ResidentAdapter.objects.get(worker=worker, kind=ResidentAdapter.BASE)
    assert base.base == micro_base and base.sha256 == micro_base.digest and base.bytes > 0
    # A served adapter is counted as the bank slot it occupies (sized for the largest rank
    # served), at least its own tensors.
    from workers.engine.payload import unpack

    own = sum(t.numel() * t.element_size() for t in unpack(get_store().get(revision.sha256)).tensors.values())
    assert row.bytes >= own

    # Uses come in faster than they are written; the ones held back are written a moment later.
    complete(f"alice/assistant@{revision.label}", "hello", SHORT)
    complete(f"alice/assistant@{revision.label}", "hey", SHORT)
    # (by the writer's next round, every 2 s: give a loaded 2-core machine room)
    wait_until(lambda: resident_revision(worker, revision).uses == 3, timeout=15)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_stopped_worker_shows_as_stopped_and_holds_nothing(spawn_worker, settings, make_revision, viewer):
    revision = make_revision()
    process, worker = start_worker(spawn_worker, settings, "stop")
    complete(f"alice/assistant@{revision.label}", "hi", SHORT)
    assert ResidentAdapter.objects.filter(worker=worker).count() == 2  # the base and the adapter

    process.stop()  # SIGTERM: Celery's warm shutdown

    worker.refresh_from_db()
    assert worker.health == Worker.STOPPED and worker.stopped_at is not None
    assert not ResidentAdapter.objects.filter(worker=worker).exists()
    page = viewer.get(worker.get_absolute_url()).content.decode()
    assert "memory went with it" in page
    assert revision.get_absolute_url() not in page


# --- health, residency and the runtime's reports ----------------------------------------


def test_a_worker_that_missed_three_heartbeats_is_stale(db, settings):
    settings.MINT_WORKER_HEARTBEAT_SECONDS = 10
    worker = a_worker("w1@host")
    assert worker.health == Worker.HEALTHY

    worker.last_seen_at = timezone.now() - timedelta(seconds=31)
    worker.save()

    assert worker.health == Worker.STALE
    assert list(Worker.objects.with_health(Worker.STALE)) == [worker]
    assert not Worker.objects.with_health(Worker.HEALTHY).exists()


def test_a_stopped_worker_is_stopped_however_recently_it_was_seen(db):
    worker = a_worker("w1@host", stopped_at=timezone.now())
    assert worker.health == Worker.STOPPED
    assert list(Worker.objects.with_health(Worker.STOPPED)) == [worker]


def test_a_worker_silent_past_the_limit_is_marked_stopped_and_forgets_what_it_held(db, make_revision):
    revision = make_revision()
    an_hour_ago = timezone.now() - timedelta(hours=1, seconds=1)
    dead = a_worker("dead@host", last_seen_at=an_hour_ago)
    resident(dead, revision)
    ResidencyStats.objects.create(
        worker=dead, pid=dead.pid, base_digest="b" * 64, tier="cpu", memory="cpu", updated_at=an_hour_ago
    )
    merely_stale = a_worker("stale@host", last_seen_at=timezone.now() - timedelta(minutes=5))
    resident(merely_stale, revision)

    assert sweep_silent_workers() == ["dead@host"]

    dead.refresh_from_db()
    assert dead.health == Worker.STOPPED and dead.stopped_at == an_hour_ago
    assert not ResidentAdapter.objects.filter(worker=dead).exists()
    assert not ResidencyStats.objects.filter(worker=dead).exists()
    assert Worker.objects.get(name="stale@host").health == Worker.STALE
    assert ResidentAdapter.objects.filter(worker=merely_stale).exists()
    event = AuditEvent.objects.get(action="worker.presume_dead")
    assert (event.object_repr, event.actor_name) == ("dead@host", "mint-sweeper")
    assert event.after["resident_rows_removed"] == 1


def test_a_stopped_worker_is_not_swept_again(db):
    a_worker("gone@host", stopped_at=timezone.now(), last_seen_at=timezone.now() - timedelta(days=1))
    assert sweep_silent_workers() == []
    assert not AuditEvent.objects.filter(action="worker.presume_dead").exists()


def test_the_summary_counts_what_healthy_workers_hold_and_leaves_out_stale_ones(db, make_revision):
    revision = make_revision()
    fresh = a_worker("fresh@host")
    resident(fresh, revision, nbytes=1000)
    resident(fresh, kind=ResidentAdapter.BASE, nbytes=50_000)
    stale = a_worker("stale@host", pid=7, last_seen_at=timezone.now() - timedelta(hours=1))
    resident(stale, revision, nbytes=1000, tier="gpu")
    a_worker("gone@host", stopped_at=timezone.now())

    summary = fleet_summary()

    assert summary["health"] == {"healthy": 1, "stale": 1, "stopped": 1}
    assert (summary["adapters"], summary["revisions"], summary["adapter_bytes"]) == (1, 1, 1000)
    assert (summary["bases"], summary["base_bytes"]) == (1, 50_000)
    assert summary["unconfirmed"] == 1
    assert [(t["tier"], t["adapters"], t["bytes"]) for t in summary["tiers"]] == [("cpu", 1, 51_000)]


def test_the_runtime_tells_its_observer_what_it_loads_uses_and_evicts(db, micro_base, tiny_payload):
    store = get_store()
    other = train_adapter(
        *_base_of(micro_base), parse_jsonl(FACTS).examples, TrainingConfig(steps=1, seed=7)
    ).payload
    first, second = store.put(tiny_payload).sha256, store.put(other).sha256
    events = []
    runtime = AdapterRuntime(max_adapters=1, observer=events.append)

    runtime.generate(micro_base.path, micro_base.digest, first, store.get, "hi", SHORT)
    runtime.generate(micro_base.path, micro_base.digest, second, store.get, "hi", SHORT)

    seen = [(e.action, e.kind, e.sha256) for e in events]
    assert seen == [
        ("loaded", "base", micro_base.digest),
        ("used", "base", micro_base.digest),
        ("loaded", "adapter", first),
        ("used", "adapter", first),
        ("used", "base", micro_base.digest),
        ("loaded", "adapter", second),
        ("evicted", "adapter", first),
        ("used", "adapter", second),
    ]
    loaded = {e.sha256: e.bytes for e in events if e.action == "loaded"}
    assert loaded[micro_base.digest] > loaded[first] > 0


def test_the_runtime_and_the_batched_server_report_the_same_revision_apart(db, make_revision):
    # One process may hold a revision twice: an evaluation loaded it into the runtime, and
    # a request into the bank. Each reporter writes and removes only its own holder's row.
    from workers.engine.runtime import ResidencyEvent
    from workers.residency import ResidencyReporter

    revision, worker = make_revision(), a_worker("two-holders@host")
    runtime, bank = ResidencyReporter(ResidentAdapter.RUNTIME), ResidencyReporter(ResidentAdapter.SERVING)
    loaded = ResidencyEvent("loaded", "adapter", revision.sha256, revision.adapter.base.digest, "cpu", 1000)
    runtime.loaded(worker.name, loaded)
    bank.loaded(worker.name, loaded)
    holders = ResidentAdapter.objects.filter(worker=worker, sha256=revision.sha256)
    assert sorted(holders.values_list("holder", flat=True)) == ["runtime", "serving"]

    runtime.evicted(worker.name, revision.sha256, "cpu")
    assert list(holders.values_list("holder", flat=True)) == ["serving"]


def test_a_reporter_names_a_known_holder():
    from workers.residency import ResidencyReporter

    with pytest.raises(ValueError, match="unknown holder"):
        ResidencyReporter("evaluations")


def test_a_failing_observer_never_fails_the_request(db, micro_base):
    def broken(event):
        raise RuntimeError("database is down")

    runtime = AdapterRuntime(observer=broken)
    [generation] = runtime.generate(micro_base.path, micro_base.digest, None, get_store().get, "hi", SHORT)
    assert generation.completion_tokens > 0


def _base_of(base_row):
    from workers.engine.base_models import load_base

    loaded = load_base(base_row.path, base_row.digest)
    return loaded.model, loaded.tokenizer


# --- console ---------------------------------------------------------------------------


def test_the_workers_page_lists_each_worker_with_its_health_and_what_it_holds(db, viewer, make_revision):
    revision = make_revision()
    busy = a_worker("busy@host", queues=["mint", "mint-gpu"], concurrency=2)
    resident(busy, revision, nbytes=2048)
    a_worker("gone@host", stopped_at=timezone.now())

    page = viewer.get(reverse("console:workers")).content.decode()

    assert "busy@host" in page and "gone@host" in page
    assert "badge health-healthy" in page and "badge health-stopped" in page
    assert "<code>mint-gpu</code>" in page
    assert "2.0\xa0KB" in page
    stopped_only = viewer.get(reverse("console:workers"), {"health": "stopped"}).content.decode()
    assert "gone@host" in stopped_only and "busy@host" not in stopped_only
    # The list refreshes itself in place, keeping its filters.
    assert 'hx-get="/workers/?health=stopped" hx-trigger="every 5s" hx-select="#live-workers"' in stopped_only


def test_the_workers_page_says_how_to_start_one_when_none_has_reported(db, viewer):
    page = viewer.get(reverse("console:workers")).content.decode()
    assert "No worker has reported yet" in page and "make demo" in page


def test_the_worker_page_links_each_resident_revision(db, viewer, make_revision):
    revision = make_revision()
    worker = a_worker("busy@host")
    resident(worker, revision)

    response = viewer.get(reverse("console:worker", args=["busy@host"]))

    assert response.status_code == 200
    page = response.content.decode()
    assert f'href="{revision.get_absolute_url()}"' in page
    assert "CPU memory" in page
    assert 'hx-trigger="every 5s" hx-select="#live-worker"' in page
    assert viewer.get(reverse("console:worker", args=["ghost@host"])).status_code == 404


def test_the_overview_shows_the_workers_and_residency_cards(db, viewer, make_revision):
    empty = viewer.get(reverse("console:overview")).content.decode()
    assert "No worker has reported yet" in empty

    worker = a_worker("busy@host")
    resident(worker, make_revision())
    a_worker("stuck@host", last_seen_at=timezone.now() - timedelta(hours=1))
    page = viewer.get(reverse("console:overview")).content.decode()

    assert f'href="{reverse("console:workers")}?health=healthy"><strong>1</strong> healthy' in page
    assert f'href="{reverse("console:workers")}?health=stale"><strong>1</strong> stale' in page
    assert "<strong>1</strong> adapter attached" in page
    assert f'href="{reverse("console:workers")}?tier=cpu"' in page
