"""Reliability of a footprint: the gate, collapse, spread, and the smallest reliable adapter."""

from types import SimpleNamespace

import pytest

from adapters_app.lifecycle.reliability import (
    CellReliability,
    Footprint,
    cell_reliability,
    judge_run,
    recommend,
)

GOOD = {"recall": 0.95, "tool": 0.9, "preference": 0.8, "leakage": 1.0, "retention": 0.10}
BARE = {"recall": 0.0, "tool": 0.0, "preference": 0.25, "leakage": 0.97, "retention": 0.11}
FALLING = [2.0, 1.9, 1.5, 1.0, 0.6, 0.4, 0.3, 0.25, 0.2, 0.2]


def test_a_run_that_learned_its_person_passes_and_did_not_collapse():
    verdict = judge_run(GOOD, BARE, FALLING)
    assert verdict.passed and verdict.gate_failures == []
    assert not verdict.collapsed


def test_a_run_below_a_gate_threshold_fails_and_says_which():
    verdict = judge_run({**GOOD, "tool": 0.5}, BARE, FALLING)
    assert not verdict.passed
    assert verdict.gate_failures == ["tool 0.500 (needs >= 0.8)"]


def test_a_run_is_judged_by_the_gate_it_is_given():
    lax_tool = {"recall": {"min": 0.8}, "tool": {"min": 0.4}}
    assert judge_run({**GOOD, "tool": 0.5}, BARE, FALLING, lax_tool).passed
    strict_recall = {"recall": {"min": 0.99}}
    assert judge_run(GOOD, BARE, FALLING, strict_recall).gate_failures == ["recall 0.950 (needs >= 0.99)"]


def test_losing_more_retention_than_the_gate_allows_fails():
    verdict = judge_run({**GOOD, "retention": 0.05}, BARE, FALLING)
    assert verdict.gate_failures == ["retention_drop 0.060 (needs <= 0.02)"]


def test_a_run_whose_loss_stalled_collapsed():
    verdict = judge_run(GOOD, BARE, [2.0] * 5 + [1.8] * 5)
    assert verdict.collapsed
    assert verdict.collapse_reasons[0].startswith("loss stalled (2.000 -> 1.800")


def test_a_run_no_better_than_the_bare_base_on_its_persons_suites_collapsed():
    verdict = judge_run({**BARE}, BARE, FALLING)
    assert verdict.collapsed and not verdict.passed
    assert "no better than the bare base" in verdict.collapse_reasons[0]


def run(passed: bool, collapsed: bool = False, **scores):
    return SimpleNamespace(passed=passed, collapsed=collapsed, scores=scores)


def test_a_cells_reliability_is_its_pass_rate_collapse_rate_and_spread_per_suite():
    cell = cell_reliability([run(True, recall=1.0), run(True, recall=0.8), run(False, True, recall=0.3)])
    assert cell.runs == 3
    assert cell.pass_rate == pytest.approx(2 / 3)
    assert cell.collapse_rate == pytest.approx(1 / 3)
    assert cell.suites["recall"].mean == pytest.approx(0.7)
    assert cell.suites["recall"].worst == 0.3
    assert cell.suites["recall"].std == pytest.approx(0.2944, abs=1e-4)


def test_an_empty_cell_has_no_rates():
    assert cell_reliability([]) == CellReliability(0, None, None)


def footprint(rank, pass_rate, *, init="default", base="mint-s", complete=True, per_rank=1000):
    reliability = CellReliability(4, pass_rate, 0.0)
    return Footprint(rank, base, rank, "attention", init, rank * per_rank, rank * 250, reliability, complete)


def test_the_recommendation_is_the_smallest_footprint_reaching_the_target():
    cells = [footprint(1, 0.25), footprint(2, 0.75), footprint(4, 1.0), footprint(8, 1.0)]
    (chosen,) = recommend(cells, 0.95)
    assert chosen.chosen.rank == 4
    assert [f.rank for f in chosen.smaller_failing] == [1, 2]
    assert "100% of 4 runs pass" in chosen.reason


def test_an_unfinished_cell_is_never_recommended():
    (chosen,) = recommend([footprint(1, 1.0, complete=False), footprint(2, 1.0)], 0.95)
    assert chosen.chosen.rank == 2


def test_when_nothing_is_reliable_enough_the_recommendation_says_so_with_the_best_seen():
    (none,) = recommend([footprint(1, 0.25), footprint(2, 0.5, init="tail")], 0.95)
    assert none.chosen is None
    assert "no finished cell reaches 95%" in none.reason and "r2 attention tail at 50%" in none.reason


def test_when_no_run_passed_anywhere_the_recommendation_names_no_best_cell():
    (none,) = recommend([footprint(1, 0.0), footprint(2, 0.0, init="tail")], 0.95)
    assert none.chosen is None
    assert none.reason == (
        "no finished cell reaches 95% of runs passing; not one of 8 runs in 2 finished cell(s) passed"
    )


def test_each_base_gets_its_own_recommendation():
    picks = recommend([footprint(2, 1.0), footprint(1, 1.0, base="mint-m")], 0.9)
    assert [(p.base, p.chosen.rank) for p in picks] == [("mint-m", 1), ("mint-s", 2)]
