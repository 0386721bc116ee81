from collections import Counter

import pytest

from workers.engine.cache_sim import (
    POLICIES,
    ReplayResult,
    belady_hit_rate,
    belady_hits,
    simulate,
    zipf_replay,
    zipf_trace,
)
from workers.engine.residency import DEFAULT_POLICY, LRUPolicy


def test_a_zipf_trace_is_the_same_for_the_same_seed():
    assert zipf_trace(1000, 5000, seed=4) == zipf_trace(1000, 5000, seed=4)
    assert zipf_trace(1000, 5000, seed=4) != zipf_trace(1000, 5000, seed=5)


def test_a_zipf_trace_is_skewed_as_zipf_predicts():
    trace = zipf_trace(100, 200_000, alpha=1.0, seed=0)
    counts = Counter(trace)
    harmonic = sum(1 / rank for rank in range(1, 101))
    assert counts[0] / len(trace) == pytest.approx(1 / harmonic, rel=0.03)
    assert counts[0] / counts[1] == pytest.approx(2, rel=0.05)
    top_ten = sum(counts[i] for i in range(10)) / len(trace)
    assert top_ten == pytest.approx(sum(1 / rank for rank in range(1, 11)) / harmonic, rel=0.02)
    assert set(trace) <= set(range(100))


def test_belady_is_exact_on_a_hand_checked_trace():
    # Three slots: 1 2 3 miss; 4 evicts 3 (next used last); 1 2 hit; 5 evicts 4;
    # 1 2 hit; 3 evicts 1 or 2 (never used again); 4 evicts the other; 5 hits.
    trace = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5]
    assert belady_hits(trace, 3) == 5
    assert belady_hit_rate(trace, 3) == 5 / 12
    assert belady_hits(trace, 1) == 0
    assert belady_hits(trace, 5) == len(trace) - 5  # only the compulsory misses


def test_lru_is_exact_on_a_hand_checked_trace():
    # Two slots: 1 2 miss, 1 hits, 3 evicts 2 (least recent), 2 evicts 1, 1 evicts 3.
    assert simulate([1, 2, 1, 3, 2, 1], 2, "lru").hits == 1


def test_ours_keeps_a_hot_key_that_lru_evicts():
    trace = ["hot", "hot", "hot", "once", "twice", "hot"]
    assert simulate(trace, 2, "lru").hits == 2
    assert simulate(trace, 2, "ours").hits == 3


def test_ours_is_the_residency_managers_default_policy():
    assert {"lru": LRUPolicy, "ours": DEFAULT_POLICY} == POLICIES


def test_belady_bounds_both_policies_and_ours_beats_lru_on_zipf_traffic():
    trace = zipf_trace(2000, 40_000, alpha=1.0, seed=1)
    lru, ours = simulate(trace, 64, "lru"), simulate(trace, 64, "ours")
    assert belady_hit_rate(trace, 64) >= ours.hit_rate > lru.hit_rate


def test_zipf_replay_reports_belady_lru_and_ours_at_the_defaults():
    belady, lru, ours = zipf_replay()
    assert [r.policy for r in (belady, lru, ours)] == ["belady", "lru", "ours"]
    assert all(r.requests == 200_000 and r.hit_rate == r.hits / r.requests for r in (belady, lru, ours))
    assert belady.hit_rate >= ours.hit_rate > lru.hit_rate
    assert isinstance(belady, ReplayResult)


def test_a_tier_needs_a_slot():
    with pytest.raises(ValueError, match="at least one slot"):
        simulate([1, 2], 0, "lru")
