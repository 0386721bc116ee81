import json
import os

import pytest

from workers.engine.cache_sim import simulate, zipf_trace
from workers.engine.residency import (
    CPU,
    DEVICE,
    DISK,
    STORE,
    AgedLFUPolicy,
    LRUPolicy,
    ResidencyError,
    ResidencyManager,
    tensor_transfers,
)
from workers.engine.store import AdapterStore

SIZE = 100  # every payload below is this many bytes unless said otherwise
BASE = "b" * 64  # the digest of the base the managers below serve


@pytest.fixture
def store(tmp_path):
    return AdapterStore(tmp_path / "store")


@pytest.fixture
def make_manager(store, tmp_path):
    def make(device=SIZE, cpu=SIZE, disk=10 * SIZE, compute_device="cpu", **options):
        budgets = {DEVICE: device, CPU: cpu, DISK: disk}
        return ResidencyManager(
            store, tmp_path / "local-cache", budgets, base_digest=BASE, device=compute_device, **options
        )

    return make


def payload(label: str, size: int = SIZE) -> bytes:
    return f"adapter payload {label}:".encode().ljust(size, b".")


def put(store, label: str, size: int = SIZE) -> str:
    return store.put(payload(label, size)).sha256


def tier_stats(manager, name: str) -> dict:
    return next(tier for tier in manager.snapshot()["tiers"] if tier["tier"] == name)


def counts(manager) -> dict:
    return {
        tier["tier"]: (tier["hits"], tier["misses"])
        for tier in manager.snapshot()["tiers"]
        if tier["hits"] or tier["misses"]
    }


def test_a_manager_knows_the_base_it_serves_and_says_so_in_its_snapshot(store, tmp_path):
    other = "c" * 64
    budgets = {DEVICE: SIZE, CPU: SIZE, DISK: SIZE}
    manager = ResidencyManager(store, tmp_path / "cache", budgets, base_digest=other)
    assert manager.base_digest == other
    assert manager.snapshot()["base_digest"] == other
    with pytest.raises(ValueError, match="base"):
        ResidencyManager(store, tmp_path / "cache", budgets, base_digest="")


def test_a_cold_get_comes_from_the_store_through_every_tier_to_the_device(store, make_manager):
    manager = make_manager()
    sha = put(store, "a")
    assert manager.get(sha) == payload("a")
    assert manager.tier_of(sha) == DEVICE
    assert counts(manager) == {DEVICE: (0, 1), CPU: (0, 1), DISK: (0, 1), STORE: (1, 0)}
    assert manager.local.get(sha) == payload("a")  # the disk tier kept a verified copy

    assert manager.get(sha) == payload("a")
    assert counts(manager)[DEVICE] == (1, 1)
    assert counts(manager)[STORE] == (1, 0)


def test_a_device_eviction_demotes_to_cpu_and_a_cpu_hit_promotes_back(store, make_manager):
    manager = make_manager(device=SIZE, cpu=SIZE)
    a, b = put(store, "a"), put(store, "b")
    manager.get(a)
    manager.get(b)
    assert (manager.tier_of(a), manager.tier_of(b)) == (CPU, DEVICE)
    assert tier_stats(manager, DEVICE)["evictions"] == 1

    assert manager.get(a) == payload("a")
    assert (manager.tier_of(a), manager.tier_of(b)) == (DEVICE, CPU)
    assert counts(manager)[CPU] == (1, 2)
    assert counts(manager)[STORE] == (2, 0)


def test_a_cpu_eviction_leaves_the_local_file_for_a_disk_hit(store, make_manager):
    manager = make_manager(device=SIZE, cpu=SIZE)
    a, b, c = put(store, "a"), put(store, "b"), put(store, "c")
    for sha in (a, b, c):
        manager.get(sha)
    assert manager.tier_of(a) == DISK  # device → cpu → dropped from memory, its file stays

    assert manager.get(a) == payload("a")
    assert counts(manager)[DISK] == (1, 3)
    assert counts(manager)[STORE] == (3, 0)
    assert manager.snapshot()["cold_loads"][DISK]["count"] == 1
    assert manager.snapshot()["cold_loads"][STORE]["count"] == 3


def test_no_tier_ever_holds_more_than_its_budget(store, make_manager):
    sizes = [40, 90, 150, 60, 120, 75, 30, 200]
    shas = [put(store, f"p{i}", size) for i, size in enumerate(sizes)]
    manager = make_manager(device=250, cpu=300, disk=600)
    for i in zip_indices(len(shas), 300):
        assert manager.get(shas[i]) == payload(f"p{i}", sizes[i])
        for name in (DEVICE, CPU, DISK):
            tier = tier_stats(manager, name)
            assert tier["bytes_used"] <= tier["budget"]
            assert tier["bytes_used"] == sum(entry["bytes"] for entry in tier["resident"])
        on_disk = sum(manager.local.path_for(sha).stat().st_size for sha in manager.local.all_keys())
        assert on_disk == tier_stats(manager, DISK)["bytes_used"]
    memory = {e["sha256"] for name in (DEVICE, CPU) for e in tier_stats(manager, name)["resident"]}
    assert len(memory) == len(tier_stats(manager, DEVICE)["resident"]) + len(
        tier_stats(manager, CPU)["resident"]
    )


def zip_indices(count: int, requests: int) -> list[int]:
    return zipf_trace(count, requests, alpha=1.0, seed=7)


def test_the_device_tier_caps_its_slots_as_well_as_its_bytes(store, make_manager):
    manager = make_manager(device=10 * SIZE, cpu=10 * SIZE, device_slots=2)
    for label in "abc":
        manager.get(put(store, label))
    assert tier_stats(manager, DEVICE)["entries"] == 2


def test_an_lru_tier_evicts_the_least_recently_used_adapter(store, make_manager):
    manager = make_manager(device=2 * SIZE, cpu=0, policy=LRUPolicy)
    a, b, c = put(store, "a"), put(store, "b"), put(store, "c")
    for sha in (a, b, a, c):
        manager.get(sha)
    assert manager.tier_of(b) == DISK
    assert {manager.tier_of(a), manager.tier_of(c)} == {DEVICE}


def test_the_default_policy_keeps_a_hot_adapter_that_lru_would_evict(store, make_manager):
    hot, once, twice = put(store, "hot"), put(store, "once"), put(store, "twice")
    trace = [hot, hot, hot, once, twice, hot]
    frequency_aware = make_manager(device=2 * SIZE, cpu=0)
    lru = make_manager(device=2 * SIZE, cpu=0, policy=LRUPolicy)
    for sha in trace:
        frequency_aware.get(sha)
        lru.get(sha)
    assert tier_stats(frequency_aware, DEVICE)["hits"] == 3
    assert tier_stats(lru, DEVICE)["hits"] == 2
    assert frequency_aware.snapshot()["policy"] == AgedLFUPolicy.name


def test_the_device_tier_hits_what_the_simulator_predicts(store, make_manager):
    trace = zipf_trace(40, 1500, alpha=1.0, seed=3)
    shas = [put(store, f"z{i}") for i in range(40)]
    for policy, name in ((AgedLFUPolicy, "ours"), (LRUPolicy, "lru")):
        manager = make_manager(device=100 * SIZE, cpu=100 * SIZE, device_slots=8, policy=policy)
        for i in trace:
            manager.get(shas[i])
        assert tier_stats(manager, DEVICE)["hits"] == simulate(trace, 8, name).hits


def test_a_pinned_adapter_survives_pressure_until_unpinned(store, make_manager):
    manager = make_manager(device=2 * SIZE, cpu=SIZE, disk=3 * SIZE)
    pinned = put(store, "pinned")
    manager.pin(pinned, DEVICE)
    others = [put(store, f"other {i}") for i in range(20)]
    for sha in others * 3:
        manager.get(sha)
    assert manager.tier_of(pinned) == DEVICE
    assert manager.local.exists(pinned)  # a pin keeps the local file too
    assert manager.snapshot()["pins"] == {pinned: DEVICE}

    assert manager.unpin(pinned)
    for sha in others:
        manager.get(sha)
    assert manager.tier_of(pinned) != DEVICE


def test_an_adapter_pinned_to_cpu_may_leave_the_device_but_not_the_cpu_tier(store, make_manager):
    manager = make_manager(device=SIZE, cpu=SIZE)
    kept = put(store, "kept")
    manager.get(kept)
    manager.pin(kept, CPU)
    for i in range(5):
        manager.get(put(store, f"other {i}"))
    assert manager.tier_of(kept) == CPU


def test_pins_that_would_not_fit_their_tier_are_refused(store, make_manager):
    manager = make_manager(device=2 * SIZE)
    manager.pin(put(store, "first"), DEVICE)
    manager.pin(put(store, "second"), DEVICE)
    with pytest.raises(ResidencyError, match="taken by pinned adapters"):
        manager.pin(put(store, "third"), DEVICE)


def test_a_pin_to_cpu_is_refused_when_the_cpu_tier_could_not_take_it_back(store, make_manager):
    manager = make_manager(device=SIZE, cpu=SIZE)
    manager.pin(put(store, "parked"), CPU)
    on_device = put(store, "on the device")
    manager.get(on_device)
    with pytest.raises(ResidencyError, match=r"cannot pin \w+ to cpu"):
        manager.pin(on_device, CPU)
    assert manager.snapshot()["pins"] == {put(store, "parked"): CPU}


def test_a_device_full_of_pins_refuses_other_requests(store, make_manager):
    manager = make_manager(device=SIZE)
    manager.pin(put(store, "pinned"), DEVICE)
    other = put(store, "other")
    manager.prefetch(other, CPU)
    with pytest.raises(ResidencyError, match="pinned adapters"):
        manager.get(other)
    assert manager.tier_of(other) == CPU  # still parked, not lost


def test_a_prefetch_loads_without_counting_as_a_hit_or_a_miss(store, make_manager):
    manager = make_manager()
    sha = put(store, "a")
    manager.prefetch(sha, CPU)
    assert manager.tier_of(sha) == CPU
    assert counts(manager) == {}
    assert manager.snapshot()["cold_loads"][STORE]["count"] == 1

    manager.get(sha)
    assert counts(manager) == {DEVICE: (0, 1), CPU: (1, 0)}


def test_a_prefetch_to_disk_only_writes_the_local_file(store, make_manager):
    manager = make_manager()
    sha = put(store, "a")
    manager.prefetch(sha, DISK)
    assert manager.tier_of(sha) == DISK
    assert manager.local.get(sha) == payload("a")


def test_a_corrupted_local_file_is_dropped_and_fetched_again_from_the_store(store, make_manager):
    sha = put(store, "a")
    make_manager().prefetch(sha, DISK)
    path = make_manager().local.path_for(sha)
    os.chmod(path, 0o644)
    path.write_bytes(payload("tampered"))

    restarted = make_manager()  # a new process finds the file in its local cache
    assert restarted.tier_of(sha) == DISK
    assert restarted.get(sha) == payload("a")
    assert restarted.snapshot()["corrupt_files_dropped"] == 1
    assert counts(restarted) == {DEVICE: (0, 1), CPU: (0, 1), DISK: (0, 1), STORE: (1, 0)}
    assert path.read_bytes() == payload("a")


def test_a_restarted_manager_serves_from_its_local_cache(store, make_manager):
    sha = put(store, "a")
    make_manager().get(sha)
    restarted = make_manager()
    assert restarted.get(sha) == payload("a")
    assert counts(restarted)[DISK] == (1, 0)
    assert STORE not in counts(restarted)


def test_two_revisions_of_one_adapter_never_share_an_entry(store, make_manager):
    torch = pytest.importorskip("torch")
    from workers.engine.payload import pack

    config = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}  # the same adapter, retrained
    first = store.put(pack({"base_model.q.lora_A.weight": torch.zeros(2, 4)}, config)).sha256
    second = store.put(pack({"base_model.q.lora_A.weight": torch.ones(2, 4)}, config)).sha256
    manager = make_manager(device=10_000, cpu=10_000, disk=10_000, transfers=tensor_transfers("cpu"))

    assert manager.get(first).tensors["base_model.q.lora_A.weight"].sum() == 0
    assert manager.get(second).tensors["base_model.q.lora_A.weight"].sum() == 8
    assert tier_stats(manager, DEVICE)["entries"] == 2
    assert tier_stats(manager, DEVICE)["bytes_used"] == 2 * 2 * 4 * 4


def test_it_refuses_keys_that_are_not_a_revision_sha256(make_manager):
    with pytest.raises(ValueError, match="keyed by a revision's sha256"):
        make_manager().get("alice/assistant")


def test_its_snapshot_is_plain_data_for_the_report(store, make_manager):
    manager = make_manager(compute_device="cuda:0")
    manager.get(put(store, "a"))
    snapshot = json.loads(json.dumps(manager.snapshot()))
    device = snapshot["tiers"][0]
    assert (device["tier"], device["memory"], device["bytes_used"], device["budget"]) == (
        DEVICE,
        "gpu",
        SIZE,
        SIZE,
    )
    assert snapshot["cold_loads"][STORE]["p50_ms"] >= 0
    assert snapshot["cold_loads"][DISK] == {"count": 0, "p50_ms": None, "p95_ms": None}


def test_on_a_cpu_worker_the_device_and_cpu_tiers_are_separate_budgets_of_host_memory(make_manager):
    tiers = make_manager(device=SIZE, cpu=3 * SIZE).snapshot()["tiers"]
    assert [(t["tier"], t["memory"], t.get("budget")) for t in tiers] == [
        (DEVICE, "cpu", SIZE),
        (CPU, "cpu", 3 * SIZE),
        (DISK, "disk", 10 * SIZE),
        (STORE, "store", None),
    ]


def test_its_observer_hears_every_move_between_tiers(store, make_manager):
    changes = []
    manager = make_manager(observer=changes.append)
    a, b = put(store, "a"), put(store, "b")
    manager.get(a)
    manager.get(b)
    assert [(c.action, c.tier, c.sha256) for c in changes] == [
        ("added", DISK, a),
        ("added", DEVICE, a),
        ("added", DISK, b),
        ("removed", DEVICE, a),
        ("added", CPU, a),
        ("added", DEVICE, b),
    ]


# --- erasure ------------------------------------------------------------------------------


def test_a_forgotten_adapter_leaves_every_tier_with_its_pin_and_local_file(store, make_manager):
    manager = make_manager()
    on_device, parked = put(store, "a"), put(store, "b")
    manager.get(parked)
    manager.get(on_device)  # the device holds one: `parked` moves down to the cpu tier
    manager.pin(on_device, DEVICE)

    assert manager.forget(on_device) == [DEVICE, DISK]
    assert manager.forget(parked) == [CPU, DISK]

    assert manager.held() == set()
    assert manager.tier_of(on_device) == manager.tier_of(parked) == STORE
    assert not manager.local.exists(on_device) and not manager.local.exists(parked)
    assert manager.snapshot()["pins"] == {}
    assert tier_stats(manager, DEVICE)["evictions"] == 1  # the demotion above; forgetting is not one


def test_an_adapter_a_running_request_uses_is_kept_until_asked_again(store, make_manager):
    manager = make_manager()
    sha = put(store, "busy")
    manager.get(sha)

    assert manager.forget(sha, unless_in=lambda: {sha}) is None
    assert manager.tier_of(sha) == DEVICE and manager.local.exists(sha)

    assert manager.forget(sha, unless_in=set) == [DEVICE, DISK]


def test_forgetting_what_a_manager_never_held_changes_nothing(store, make_manager):
    manager = make_manager()
    kept = put(store, "kept")
    manager.get(kept)

    assert manager.forget(put(store, "other")) == []
    assert manager.held() == {kept}
