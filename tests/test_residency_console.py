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
from adapters_app.models import AuditEvent, BaseModel, ResidencyStats, ResidentAdapter, Worker
from mintweb.celery import app as celery_app
from tests.conftest import with_role
from tests.test_workers import a_worker, start_worker
from workers import residency_control
from workers.engine.residency import CPU, DEVICE, DISK, ResidencyManager
from workers.engine.store import AdapterStore
from workers.residency_report import ResidencyStatsReport

SIZE = 100
# Two bases' digests: a worker process serving both has a manager for each.
BASE_X, BASE_Y = "a" * 64, "e" * 64
TIER_NAMES = ("device", "cpu", "disk", "store")


@pytest.fixture
def store(tmp_path):
    return AdapterStore(tmp_path / "store")


def a_manager(store, folder, base_digest: str = BASE_X) -> ResidencyManager:
    budgets = {DEVICE: SIZE, CPU: SIZE, DISK: 10 * SIZE}
    return ResidencyManager(store, folder, budgets, base_digest=base_digest)


@pytest.fixture
def manager(store, tmp_path):
    return a_manager(store, tmp_path / "cache")


def a_base(name: str, digest: str) -> BaseModel:
    return BaseModel.objects.create(name=name, path=f"/models/{name}", digest=digest, parameters=1000)


def acting_on(monkeypatch, *managers: ResidencyManager) -> None:
    """The control functions act on these managers, as if this process served their bases; the
    reporting thread they wake is the worker's, not this test process's."""
    monkeypatch.setattr(residency_control, "managers_here", lambda: list(managers))
    monkeypatch.setattr(
        residency_control, "ensure_reporting", lambda name: type("T", (), {"wake": lambda s: 0})()
    )


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


def test_two_managers_of_different_bases_in_one_process_keep_their_own_stats_rows(db, store, tmp_path):
    worker = fleet_worker()
    small, large = a_base("small", BASE_X), a_base("large", BASE_Y)
    x, y = a_manager(store, tmp_path / "x", BASE_X), a_manager(store, tmp_path / "y", BASE_Y)
    a, b = put(store, "a"), put(store, "b")
    x.get(a)
    x.get(a)  # a miss, then a hit
    y.get(b)  # a miss

    ResidencyStatsReport(worker.name, pid=worker.pid).flush([x, y])

    rows = ResidencyStats.objects.filter(worker=worker, pid=worker.pid)
    assert set(rows.values_list("base_digest", "tier")) == {
        (digest, tier) for digest in (BASE_X, BASE_Y) for tier in TIER_NAMES
    }
    device = {row.base_digest: row for row in rows.filter(tier="device")}
    assert (device[BASE_X].base, device[BASE_X].hits, device[BASE_X].misses) == (small, 1, 1)
    assert (device[BASE_Y].base, device[BASE_Y].hits, device[BASE_Y].misses) == (large, 0, 1)
    # What each manager holds is a row naming its base.
    held = ResidentAdapter.objects.filter(worker=worker, tier="cpu").select_related("base")
    assert {row.sha256: row.base for row in held} == {a: small, b: large}


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


def test_the_worker_page_names_the_base_of_each_managers_tiers(db, viewer, store, tmp_path):
    worker = fleet_worker()
    a_base("small", BASE_X)  # the other base is not registered here: its digest stands in
    x, y = a_manager(store, tmp_path / "x", BASE_X), a_manager(store, tmp_path / "y", BASE_Y)
    x.get(put(store, "a"))
    y.get(put(store, "b"))
    ResidencyStatsReport(worker.name, pid=worker.pid).flush([x, y])

    page = viewer.get(worker.get_absolute_url()).content.decode()

    assert f"Process {worker.pid} · small" in page
    assert f"Process {worker.pid} · base <code>{BASE_Y[:12]}</code>" in page
    assert '<span class="muted small">on small</span>' in page  # beside the adapter it holds


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
    outcome = residency_control.prefetch("a" * 64, BASE_X, "cpu", worker="w@host")
    assert outcome["done"] is False and "no server" in outcome["note"]


def test_the_control_functions_pin_and_prefetch_through_the_manager(store, manager, monkeypatch):
    acting_on(monkeypatch, manager)
    a = put(store, "a")
    assert residency_control.prefetch(a, BASE_X, "cpu", worker="w@host")["tier_now"] == ["cpu"]
    assert residency_control.pin(a, BASE_X, "device", worker="w@host")["done"] is True
    assert manager.snapshot()["pins"] == {a: "device"}
    assert residency_control.unpin(a, BASE_X, worker="w@host")["done"] is True
    missing = residency_control.prefetch("b" * 64, BASE_X, "cpu", worker="w@host")
    assert missing["done"] is False and missing["error"]


def test_a_pin_or_prefetch_reaches_only_the_manager_of_the_revisions_base(store, tmp_path, monkeypatch):
    x, y = a_manager(store, tmp_path / "x", BASE_X), a_manager(store, tmp_path / "y", BASE_Y)
    acting_on(monkeypatch, x, y)
    a, b = put(store, "a"), put(store, "b")

    pinned = residency_control.pin(a, BASE_X, "device", worker="w@host")
    assert (pinned["done"], pinned["managers"], pinned["tier_now"]) == (True, 1, ["device"])
    assert x.snapshot()["pins"] == {a: "device"}
    assert y.snapshot()["pins"] == {} and a not in y.held()

    assert residency_control.prefetch(b, BASE_Y, "cpu", worker="w@host")["tier_now"] == ["cpu"]
    assert y.tier_of(b) == CPU and b not in x.held()

    residency_control.unpin(a, BASE_Y, worker="w@host")  # base Y's manager never had it pinned
    assert x.snapshot()["pins"] == {a: "device"}
    unserved = residency_control.prefetch(a, "f" * 64, "cpu", worker="w@host")
    assert unserved["done"] is False and "no server" in unserved["note"]


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
