"""`manage.py sweep_learning_rate`: one adapter per rate for one person, graded together."""

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.test_eval_report import imported_llama  # noqa: F401 (a fixture)
from workers.engine.lr_sweep import PERSONAL, Sweep, SweepPoint
from workers.engine.training import TrainingConfig

pytestmark = pytest.mark.django_db

QUICK = json.dumps({"steps": 3, "batch_size": 4, "replay": 0.25})


def test_each_rate_is_trained_graded_beside_the_bare_base_and_one_is_chosen(
    imported_llama,  # noqa: F811
    tmp_path,
):
    out, report = io.StringIO(), tmp_path / "sweep.json"
    call_command(
        "sweep_learning_rate",
        "--base",
        "tiny-llama",
        "--rates",
        "0.001,0.05",
        "--training",
        QUICK,
        "--rank",
        "2",
        "--json",
        str(report),
        stdout=out,
    )
    written = json.loads(report.read_text())
    assert [p["learning_rate"] for p in written["points"]] == [0.001, 0.05]
    assert written["training"]["steps"] == 3 and written["training"]["rank"] == 2
    assert written["training"]["targets"] == "attention"  # a study's default target set
    assert written["chosen"] in (0.001, 0.05)
    for point in written["points"]:
        assert set(point["scores"]) >= {*PERSONAL, "retention"} and point["first_loss"] > 0
    # The same rows in the same order: the two runs start from the same loss.
    first = [p["first_loss"] for p in written["points"]]
    assert first[0] == pytest.approx(first[1], rel=1e-4)
    table = out.getvalue()
    assert "| bare base |" in table and f"chosen: {written['chosen']:g}" in table


def test_the_chosen_rate_weighs_learning_and_forgetting_the_same():
    bare = {"recall": 0.0, "tool": 0.0, "preference": 0.3, "retention": 1.0}
    eager = SweepPoint(0.02, 2.0, 0.1, scores(recall=0.9, tool=1.0, preference=0.8, retention=0.2), 1.0)
    careful = SweepPoint(0.005, 2.0, 0.4, scores(recall=0.7, tool=1.0, preference=0.6, retention=0.8), 1.0)
    sweep = Sweep("b", "alice", TrainingConfig(), [eager, careful], bare)
    # eager: 0.90 personal - 0.80 forgotten; careful: 0.77 - 0.20.
    assert sweep.chosen() is careful
    assert "0.005 **chosen**" in sweep.table()


def test_a_rate_whose_loss_rose_is_not_chosen_whatever_it_scored():
    bare = {"recall": 0.0, "tool": 0.0, "preference": 0.0, "retention": 0.02}
    diverged = SweepPoint(0.05, 1.07, 5.52, scores(recall=0.0, tool=0.0, preference=0.25, retention=0.0), 1.0)
    slow = SweepPoint(0.02, 1.07, 1.02, scores(recall=0.0, tool=0.0, preference=0.17, retention=0.02), 1.0)
    assert Sweep("b", "alice", TrainingConfig(), [slow, diverged], bare).chosen() is slow


def scores(**by_suite: float) -> dict[str, float]:
    return by_suite


@pytest.mark.parametrize("rates", ["fast", "0,0.01", ""])
def test_rates_that_are_not_positive_numbers_are_refused(rates):
    with pytest.raises(CommandError, match="--rates"):
        call_command("sweep_learning_rate", "--rates", rates, stdout=io.StringIO())
