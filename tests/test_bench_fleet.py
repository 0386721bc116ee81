"""The fleet simulation (adapters_app/fleet_sim/, `make bench-fleet`): it drives routing.py's
decision and the real residency managers, is deterministic, and shows what it should."""

from __future__ import annotations

import json
from io import StringIO

from django.core.management import call_command

from adapters_app.fleet_sim import fleet as fleet_module
from adapters_app.fleet_sim.fleet import AFFINITY, RANDOM, Fleet
from adapters_app.fleet_sim.simulation import POLICIES, FleetSpec, _p99_with_zeros, simulate
from adapters_app.fleet_sim.trace import DriftingZipf, revision_sha
from adapters_app.lifecycle import routing
from workers.engine.residency import AgedLFUPolicy, ResidencyManager

TINY = FleetSpec(
    adapters=2_000,
    workers=8,
    gpu_slots=8,
    cpu_slots=16,
    disk_slots=64,
    zipf=1.2,
    requests=20_000,
    seconds=3_600,
    popular=200,
    retrain_fraction=0.02,
)
MINT, LRU, RANDOM_ROUTING = POLICIES


def small_fleet(routing_kind=AFFINITY) -> Fleet:
    return Fleet(
        workers=3, gpu_slots=1, cpu_slots=0, disk_slots=10, policy=AgedLFUPolicy, routing=routing_kind
    )


def test_the_simulation_decides_with_routing_pys_own_function():
    assert fleet_module.choose is routing.choose


def test_the_simulated_workers_are_real_residency_managers():
    fleet = small_fleet()
    assert all(type(manager) is ResidencyManager for manager in fleet.managers.values())
    fleet.close()


def test_a_request_goes_where_the_adapter_is_in_memory_then_on_disk_then_to_the_least_loaded():
    fleet = small_fleet()
    a, b, c = (revision_sha(n, 0) for n in range(3))
    fleet.managers["w002"].get(a)  # on w002's GPU
    fleet.managers["w001"].get(b)
    fleet.managers["w001"].get(a)  # b leaves w001's one GPU slot; no cpu tier: its local file stays
    fleet.loads.update(w000=2, w001=1, w002=1)

    assert fleet.route(a) == ("w001", "resident")  # both hold it in memory: the less loaded, by name
    assert fleet.route(b) == ("w001", "disk")
    assert fleet.route(c) == ("w001", "cold")
    for sha in (a, b, c):
        in_memory, on_disk = fleet.in_memory.get(sha, set()), fleet.on_disk.get(sha, set())
        assert fleet.route(sha) == routing.choose(fleet.names, in_memory, on_disk, fleet.loads)
    fleet.close()


def test_random_routing_picks_any_worker():
    fleet = small_fleet(RANDOM)
    chosen = {fleet.route(revision_sha(0, 0))[0] for _ in range(100)}
    assert chosen == set(fleet.names)
    fleet.close()


def test_a_tiny_run_is_the_same_for_the_same_seed_and_differs_for_another():
    first, again = simulate(TINY, MINT).as_dict(), simulate(TINY, MINT).as_dict()
    other = simulate(TINY.with_(seed=1), MINT).as_dict()
    for run in (first, again, other):
        run.pop("wall_seconds")
        run.pop("spec")

    assert first == again
    assert first["served"] != other["served"]


def test_affinity_routing_beats_random_routing_on_hits_for_a_skewed_trace():
    affinity, scattered = simulate(TINY, MINT), simulate(TINY, RANDOM_ROUTING)

    in_memory = {r.policy: r.share("device") + r.share("cpu") for r in (affinity, scattered)}
    assert in_memory[MINT.name] > in_memory[RANDOM_ROUTING.name] + 0.1
    assert affinity.store_egress_bytes_per_s < scattered.store_egress_bytes_per_s


def test_retrains_cause_cold_loads_of_the_new_revisions():
    steady = simulate(TINY.with_(retrain_fraction=0.0), MINT)
    retrained = simulate(TINY.with_(retrain_fraction=0.5), MINT)

    assert retrained.retrains == 1_000 and steady.retrains == 0
    assert retrained.served["store"] > steady.served["store"]


def test_a_retrained_adapter_is_asked_for_by_its_new_revision():
    trace = DriftingZipf(
        adapters=50, requests=5_000, seconds=100, zipf=1.0, popular=10, drift=0, retrain_fraction=0.5
    )
    shas = {sha for _, sha in trace.requests()}
    assert any(sha.endswith("00000001") for sha in shas)
    assert not any(sha.endswith("00000002") for sha in shas)  # once a day at most
    assert trace.counts.retrains == 25


def test_the_popular_set_drifts_only_when_told_to():
    def top_at_end(drift: float) -> list[int]:
        trace = DriftingZipf(
            adapters=1_000, requests=100, seconds=100, zipf=1.0, popular=50, drift=drift, retrain_fraction=0
        )
        for _ in trace.requests():
            pass
        return trace.order[:50]

    start = DriftingZipf(
        adapters=1_000, requests=100, seconds=100, zipf=1.0, popular=50, drift=0, retrain_fraction=0
    ).order[:50]
    assert top_at_end(0.0) == start
    assert len(set(top_at_end(1.0)) & set(start)) < 40


def test_requests_arrive_in_time_order_within_the_day():
    trace = DriftingZipf(
        adapters=100, requests=2_000, seconds=60, zipf=1.0, popular=10, drift=0.5, retrain_fraction=0.1
    )
    times = [at for at, _ in trace.requests()]
    assert len(times) == 2_000
    assert times == sorted(times) and times[0] >= 0 and times[-1] <= 60


def test_p99_counts_the_requests_that_needed_no_load():
    assert _p99_with_zeros([5.0], 100) == 0.0
    assert _p99_with_zeros([1.0, 2.0], 100) == 1.0
    assert _p99_with_zeros([3.0, 1.0, 2.0], 3) == 3.0


def test_the_command_prints_its_tables_and_writes_json(tmp_path):
    out = StringIO()
    call_command(
        "bench_fleet",
        "--adapters=1000",
        "--workers=4",
        "--requests=3000",
        "--sweep-requests=1000",
        "--sweep-workers=2,4",
        "--sweep-zipf=0.8",
        "--sweep-seconds=60",
        "--popular=50",
        "--gpu-slots=4",
        "--cpu-slots=8",
        "--disk-slots=32",
        "--jobs=1",
        f"--json={tmp_path / 'fleet.json'}",
        stdout=out,
    )
    text = out.getvalue()

    assert "1,000 adapters, 4 workers, Zipf(1)" in text
    assert "By workers" in text and "By Zipf exponent" in text and "By requests/s" in text
    for policy in POLICIES:
        assert policy.name in text
    assert "docs/results/bench-serving-smollm2-135m.txt" in text
    report = json.loads((tmp_path / "fleet.json").read_text())
    assert [len(report[t]) for t in ("main", "workers", "zipf", "rate")] == [3, 6, 3, 3]
