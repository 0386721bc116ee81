"""`manage.py update_report` on the micro base: every arm graded on the gate set after the
update, side by side, with a CSV of each person's scores."""

import csv
from io import StringIO

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_the_update_report_prints_each_arm_and_writes_each_persons_scores(micro_base, tmp_path):
    out = StringIO()
    path = tmp_path / "update.csv"
    call_command(
        "update_report",
        base="mint-micro",
        people=1,
        training='{"steps": 2, "targets": "attention"}',
        csv_path=str(path),
        stdout=out,
    )
    printed = out.getvalue()
    for arm in ("bare base", "r1 (before)", "r2 continued", "r2 fresh start"):
        assert arm in printed
    assert "5 rows teaching the old name dropped per person" in printed
    rows = list(csv.DictReader(path.open()))
    assert [row["arm"] for row in rows] == ["bare base", "r1 (before)", "r2 continued", "r2 fresh start"]
    assert {row["old"] for row in rows} == {"Biscuit"} and rows[0]["new"] not in ("", "Biscuit")
    assert all(0 <= float(row["update"]) <= 1 and 0 <= float(row["retention"]) <= 1 for row in rows)


def test_an_unknown_training_setting_is_refused_before_any_work(micro_base):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match=r"--training: .*rnak: unknown setting"):
        call_command("update_report", base="mint-micro", training='{"rnak": 4}')
