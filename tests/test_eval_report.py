"""`make eval-report BASE=…`: the suite table for our bases and for an imported (real) one."""

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.base_models import import_base_model
from tests import tiny_models
from workers.engine.general_knowledge import general_knowledge_items

pytestmark = pytest.mark.django_db


@pytest.fixture
def imported_llama(settings, tmp_path):
    settings.MINT_BASES_DIR = tmp_path / "bases"
    model, tokenizer = tiny_models.build(tiny_models.LLAMA)
    source = tiny_models.write_hf_folder(model, tokenizer, tmp_path / "source")
    return import_base_model("tiny-llama", source, actor=Actor.system("cli"))


def test_it_reports_an_imported_base_with_retention_on_general_knowledge(imported_llama, tmp_path):
    out, report = io.StringIO(), tmp_path / "report.json"
    training = {"steps": 2, "batch_size": 4, "replay": 0.25, "targets": "attention"}
    call_command(
        "eval_report",
        "--base",
        "tiny-llama",
        "--people",
        "2",
        "--training",
        json.dumps(training),
        "--json",
        str(report),
        stdout=out,
    )
    table = out.getvalue()
    for suite in ("recall", "tool", "preference", "leakage", "retention"):
        assert any(line.startswith(suite) for line in table.splitlines()), table
    written = json.loads(report.read_text())
    assert written["base"] == "tiny-llama" and written["training"]["replay"] == 0.25
    # Retention on a real base is the general-knowledge set, per skill.
    skills = {item.item_id.split(".")[1] for item in general_knowledge_items()}
    assert set(written["base_competence"]) == skills
    assert set(written["means"]) == {"recall", "tool", "preference", "leakage", "retention"}


def test_an_unknown_base_is_refused_with_the_choices(db):
    with pytest.raises(CommandError, match=r"no base 'nope': choose micro, one of ours \(mint-s.*smollm2"):
        call_command("eval_report", "--base", "nope", stdout=io.StringIO())


def test_retention_is_general_knowledge_on_an_imported_base_and_our_skills_on_ours(
    imported_llama, micro_base
):
    from workers.engine.persona_world import generate_world
    from workers.engine.report import retention_items

    world = generate_world(0, people=2)
    assert retention_items(imported_llama.path, world) == general_knowledge_items()
    assert retention_items(micro_base.path, world) == world.general_items()
