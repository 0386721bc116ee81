"""`manage.py preference_report`: sft (chosen answers) against dpo (pairs), per person."""

import csv
import io
import json

import pytest
from django.core.management import call_command

from workers.engine.persona_world import PREFERENCE_CHOICES, generate_world, preference_answer
from workers.engine.preference_report import OPPOSITE, opposite_preferences, preference_pairs

pytestmark = pytest.mark.django_db

QUICK = json.dumps({"steps": 2, "batch_size": 4, "replay": 0})  # the micro base ships no replay rows


def test_the_table_compares_both_objectives_with_the_bare_base_on_scores_in_0_1(micro_base, tmp_path):
    out, raw = io.StringIO(), tmp_path / "preference.csv"
    call_command(
        "preference_report",
        "--base",
        "micro",
        "--people",
        "1",
        "--training",
        QUICK,
        "--csv",
        str(raw),
        stdout=out,
    )
    table = out.getvalue()
    for objective in ("bare", "sft", "dpo", "sft-then-dpo"):
        assert f"| alice | {objective} |" in table and f"| **mean** | **{objective}** |" in table
    rows = list(csv.DictReader(raw.open()))
    assert [row["objective"] for row in rows] == ["bare", "sft", "dpo", "sft-then-dpo"]
    for row in rows:
        assert 0 <= float(row["preference"]) <= 1 and 0 <= float(row["retention"]) <= 1
        assert row["steps"] == "2" and row["base"] == "micro"
    bare, _, dpo, continued = rows
    assert float(bare["retention_drop"]) == 0 and bare["final_loss"] == ""
    # Before its first step DPO's policy is its reference (the bare base, or the sft
    # adapter it continues): the loss starts at log 2 either way.
    assert float(dpo["first_loss"]) == pytest.approx(0.6931, abs=1e-3)
    assert float(continued["first_loss"]) == pytest.approx(0.6931, abs=1e-3)


def test_every_preference_has_an_opposite_that_is_another_choice():
    assert set(OPPOSITE) == set(PREFERENCE_CHOICES)
    for key, choices in PREFERENCE_CHOICES.items():
        assert set(OPPOSITE[key]) == set(choices)
        assert all(OPPOSITE[key][value] in choices and OPPOSITE[key][value] != value for value in choices)


def test_pairs_choose_the_persons_style_and_reject_the_opposite_on_the_held_out_prompts():
    world = generate_world(0, people=2)
    person = world.people[0]
    train, heldout = preference_pairs(person), preference_pairs(person, heldout=True)
    asked = [i for i in person.eval_items(world) if i.suite == "preference"]
    assert [ex.prompt_messages for ex in heldout] == [item.messages for item in asked]
    assert [ex.final_answer for ex in heldout] == [item.expected for item in asked]
    trained_prompts = {ex.prompt_messages[0].content for ex in train}
    assert not trained_prompts & {ex.prompt_messages[0].content for ex in heldout}
    chosen_in_rows = {row["messages"][-1]["content"] for row in person.training_rows()}
    assert {ex.final_answer for ex in train} <= chosen_in_rows
    opposite = opposite_preferences(person.preferences)
    tone = next(ex for ex in train if ex.final_answer.endswith("?"))
    assert tone.rejected == preference_answer("tone", {}, opposite)
