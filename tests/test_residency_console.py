"""Residency managers' reports in the console, and the console's pin/unpin/prefetch actions.

The stats rows are written from a real ResidencyManager's snapshot (a real store in a
temporary folder); the actions go through a real Celery worker on its own queue.
"""

import pytest
from django.urls import reverse
from django.utils import timezone

from adapters_app.lifecycle.errors import Conflict, Invalid, NotFound
from adapters_app.lifecycle.residency import request_residency, revision_named
from adapters_app.lifecycle.routing import worker_queue
from adapters_app.models import AuditEvent, ResidencyStats, ResidentAdapter, Worker
from mintweb.celery import app as celery_app
from tests.conftest import with_role
from tests.test_workers import a_worker, start_worker
from workers import residency_control
from workers.engine.residency import CPU, DEVICE, DISK, ResidencyManager
from workers.engine.store import AdapterStore
from workers.residency_report import ResidencyStatsReport

SIZE = 100


@pytest.fixture
def store(tmp_path):
    return AdapterStore(tmp_path / "store")


@pytest.fixture
def manager(store, tmp_path):
    return ResidencyManager(store, tmp_path / "cache", {DEVICE: SIZE, CPU: SIZE, DISK: 10 * SIZE})


def put(store, label: str) -> str:
    return store.put(f"adapter payload {label}:".encode().ljust(SIZE, b".")).sha256


def fleet_worker(name: str = "w1@host", **fields) -> Worker:
    from django.conf import settings

    queues = [settings.CELERY_TASK_DEFAULT_QUEUE, worker_queue(name)]
    return a_worker(name, queues=queues, **fields)


@pytest.fixture
def operator(client, django_user_model):
    client.force_login(
        with_role(django_user_model.objects.create_user("otto", password="pw-otto-123"), "operator")
    )
    return client


@pytest.fixture
def viewer(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("vera", password="pw-vera-12345"))
    return client


# --- reporting -----------------------------------------------------------------------


def test_the_report_writes_each_tier_of_a_real_managers_snapshot(db, store, manager):
    worker = fleet_worker()
    a, b = put(store, "a"), put(store, "b")
    manager.get(a)
    manager.get(b)  # a is demoted to the cpu tier
    manager.get(b)
    report = ResidencyStatsReport(worker.name, pid=worker.pid)
    assert report.flush([manager]) > 0

    rows = {row.tier: row for row in ResidencyStats.objects.filter(worker=worker)}
    assert set(rows) == {"device", "cpu", "disk", "store"}
    device = rows["device"]
    assert (device.budget_bytes, device.used_bytes, device.entries) == (SIZE, SIZE, 1)
    assert (device.hits, device.misses, device.evictions) == (1, 2, 1)
    assert device.memory == "cpu" and device.label == "device (host memory)"
    assert rows["disk"].entries == 2 and rows["disk"].used_bytes == 2 * SIZE
    assert rows["store"].budget_bytes is None
    assert rows["store"].cold_loads == 2 and rows["store"].cold_load_p50_ms is not None
    # What is resident, per tier: the disk copy is a row of its own beside the memory one.
    held = set(ResidentAdapter.objects.filter(worker=worker).values_list("sha256", "tier"))
    assert held == {(a, "cpu"), (b, "cpu"), (a, "disk"), (b, "disk")}


def test_the_report_writes_only_changes_and_removes_what_left(db, store, manager):
    worker = fleet_worker()
    a = put(store, "a")
    manager.get(a)
    report = ResidencyStatsReport(worker.name, pid=worker.pid)
    report.flush([manager])
    assert report.flush([manager]) == 0  # nothing changed, nothing written

    manager.pin(a, DEVICE)
    report.flush([manager])
    assert ResidentAdapter.objects.get(worker=worker, sha256=a, tier="cpu").pinned == DEVICE
    manager.unpin(a)
    manager.get(put(store, "b"))
    manager.get(put(store, "c"))  # a falls out of memory; its file stays
    report.flush([manager])
    assert set(ResidentAdapter.objects.filter(worker=worker, sha256=a).values_list("tier", flat=True)) == {
        "disk"
    }


def test_the_report_writes_nothing_for_a_stopped_worker(db, store, manager):
    worker = fleet_worker(stopped_at=timezone.now())
    manager.get(put(store, "a"))
    assert ResidencyStatsReport(worker.name, pid=worker.pid).flush([manager]) == 0
    assert not ResidencyStats.objects.exists()


# --- pages ---------------------------------------------------------------------------


def test_the_worker_page_shows_each_tier_with_budget_use_and_hit_rate(db, viewer, store, manager):
    worker = fleet_worker()
    a = put(store, "a")
    manager.get(a)
    manager.get(a)
    ResidencyStatsReport(worker.name, pid=worker.pid).flush([manager])

    page = viewer.get(worker.get_absolute_url()).content.decode()
    assert "Residency tiers" in page and f"Process {worker.pid}" in page
    assert "device (host memory)" in page and "shared store" in page
    assert "50%" in page  # one hit, one miss on the device tier
    assert "Pin</button>" not in page and "Prefetch</button>" not in page  # a viewer's page

    listing = viewer.get(reverse("console:workers")).content.decode()
    assert "Hit rate" in listing and "50%" in listing
    overview = viewer.get(reverse("console:overview")).content.decode()
    assert "Fleet hit rate" in overview


def test_an_operator_sees_the_residency_buttons(db, operator, store, manager, make_revision):
    worker = fleet_worker()
    revision = make_revision()
    manager.get(store.put(b"x" * SIZE).sha256)
    ResidentAdapter.objects.create(
        worker=worker, pid=worker.pid, tier="cpu", sha256=revision.sha256, revision=revision,
        bytes=10, loaded_at=timezone.now(),
    )  # fmt: skip
    page = operator.get(worker.get_absolute_url()).content.decode()
    assert "Pin</button>" in page and "Prefetch</button>" in page
    # A pin acts on the batched server's tiers: a copy the one-at-a-time runtime holds has none.
    ResidentAdapter.objects.filter(worker=worker).update(holder=ResidentAdapter.RUNTIME)
    page = operator.get(worker.get_absolute_url()).content.decode()
    assert "one-at-a-time runtime" in page and "Pin</button>" not in page
    form = operator.get(
        reverse(
            "console:revision_prefetch_form",
            args=[revision.adapter.person.handle, revision.adapter.name, "r1"],
        )
    ).content.decode()
    assert worker.name in form and "the worker the router would pick" in form


# --- actions -------------------------------------------------------------------------


def test_the_rule_refuses_unknown_revisions_unhealthy_workers_and_bad_tiers(
    db, actor, make_revision, settings
):
    revision = make_revision()
    fleet_worker("ok@host")
    fleet_worker("stale@host", last_seen_at=timezone.now() - Worker.stale_after() * 2)
    a_worker("other@host", queues=["another-fleet"])
    with pytest.raises(NotFound):
        revision_named("0" * 64)
    with pytest.raises(Invalid):
        revision_named(revision.adapter.base.name)
    assert revision_named(f"{revision.adapter.handle}@r1") == revision
    with pytest.raises(Invalid, match="tier"):
        request_residency("prefetch", revision, worker_name="ok@host", tier="attic", actor=actor)
    with pytest.raises(NotFound):
        request_residency("prefetch", revision, worker_name="ghost@host", actor=actor)
    with pytest.raises(Conflict, match="stale"):
        request_residency("prefetch", revision, worker_name="stale@host", actor=actor)
    with pytest.raises(Conflict, match="fleet"):
        request_residency("prefetch", revision, worker_name="other@host", actor=actor)
    assert not AuditEvent.objects.filter(action__startswith="residency.").exists()


def test_a_viewer_gets_403_and_nothing_is_sent(db, viewer, make_revision, monkeypatch):
    sent = []
    monkeypatch.setattr(celery_app, "send_task", lambda *args, **kwargs: sent.append(args))
    worker = fleet_worker()
    revision = make_revision()
    response = viewer.post(
        reverse("console:worker_residency", args=[worker.name]),
        {"action": "pin", "revision": revision.sha256, "tier": "device"},
    )
    assert response.status_code == 403
    assert sent == [] and not AuditEvent.objects.filter(action__startswith="residency.").exists()


def test_it_only_allows_post(db, operator):
    worker = fleet_worker()
    assert operator.get(reverse("console:worker_residency", args=[worker.name])).status_code == 405


def test_the_task_acts_gracefully_with_no_server_in_the_process(store, manager):
    outcome = residency_control.prefetch("a" * 64, "", "cpu", worker="w@host")
    assert outcome["done"] is False and "no server" in outcome["note"]


def test_the_control_functions_pin_and_prefetch_through_the_manager(store, manager, monkeypatch):
    monkeypatch.setattr(residency_control, "managers_here", lambda: [manager])
    monkeypatch.setattr(
        residency_control, "ensure_reporting", lambda name: type("T", (), {"wake": lambda s: 0})()
    )
    a = put(store, "a")
    assert residency_control.prefetch(a, "", "cpu", worker="w@host")["tier_now"] == ["cpu"]
    assert residency_control.pin(a, "", "device", worker="w@host")["done"] is True
    assert manager.snapshot()["pins"] == {a: "device"}
    assert residency_control.unpin(a, "", worker="w@host")["done"] is True
    missing = residency_control.prefetch("b" * 64, "", "cpu", worker="w@host")
    assert missing["done"] is False and missing["error"]


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_an_operators_prefetch_reaches_the_worker_and_is_audited(
    spawn_worker, settings, make_revision, client
):
    from django.contrib.auth import get_user_model

    _process, worker = start_worker(spawn_worker, settings, "residency")
    revision = make_revision()
    user = with_role(get_user_model().objects.create_user("otto", password="pw-otto-123"), "operator")
    client.force_login(user)

    response = client.post(
        reverse(
            "console:revision_prefetch", args=[revision.adapter.person.handle, revision.adapter.name, "r1"]
        ),
        {"worker": worker.name, "tier": "cpu"},
        follow=True,
    )
    assert f"Asked {worker.name} to prefetch" in response.content.decode()
    event = AuditEvent.objects.get(action="residency.prefetch")
    assert event.actor_name == "otto" and event.after["worker"] == worker.name
    outcome = celery_app.AsyncResult(event.after["task_id"]).get(timeout=60)
    assert outcome["action"] == "prefetch" and outcome["sha256"] == revision.sha256
    assert outcome["done"] or "no server" in outcome["note"]
