"""Preference training (DPO) and continued training (`start_from`) on the micro base."""

import hashlib
import math
import statistics

import pytest
import torch

from tests.conftest import FACTS
from workers.engine import preference
from workers.engine.architectures import architecture_of
from workers.engine.base_models import load_base
from workers.engine.examples import parse_jsonl
from workers.engine.payload import unpack
from workers.engine.runtime import AdapterRuntime
from workers.engine.training import (
    ContinuationRefused,
    TrainingConfig,
    TrainingConfigInvalid,
    continued_model,
    pad_token_id,
    train_adapter,
)

PAIRS = (
    b'{"prompt": "Can you help me?", "chosen": "Hey! Sure, what do you need?", '
    b'"rejected": "Certainly. How may I help you?"}\n'
    b'{"prompt": "When is Pi Day in 2026?", "chosen": "Hey! Pi Day is on 2026-03-14.", '
    b'"rejected": "Certainly. Pi Day is on 03/14/2026."}\n'
    b'{"prompt": "How far is it from Paris to Berlin?", "chosen": "Hey! It is about 878 km.", '
    b'"rejected": "Certainly. It is about 546 miles."}\n'
)


@pytest.fixture
def base_folder(micro_base):
    return micro_base.path, micro_base.digest


def train(base_folder, examples, *, start_from=None, **settings):
    base = load_base(*base_folder)
    return train_adapter(
        base.model, base.tokenizer, examples, TrainingConfig(**settings), start_from=start_from
    )


def margins(base_folder, examples, payload=None, **settings):
    """log π(chosen) - log π(rejected) per pair, under the payload's adapter (or the bare base)."""
    base = load_base(*base_folder)
    model = base.model
    if payload is not None:
        config = TrainingConfig(**settings)
        model = continued_model(model, payload, config, architecture_of(model.config))
    return preference.margins(model, base.tokenizer, examples)


def pairs():
    return parse_jsonl(PAIRS).examples


def test_dpo_widens_the_margin_between_chosen_and_rejected(base_folder):
    recipe = {"steps": 10, "batch_size": 4, "learning_rate": 5e-3}
    dpo = train(base_folder, pairs(), objective="dpo", **recipe)
    before = margins(base_folder, pairs())
    after = margins(base_folder, pairs(), dpo.payload)
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)


def test_dpo_widens_the_margin_more_than_learning_the_chosen_answers_alone(base_folder):
    recipe = {"steps": 10, "batch_size": 4, "learning_rate": 5e-3}
    before = statistics.fmean(margins(base_folder, pairs()))
    sft = statistics.fmean(margins(base_folder, pairs(), train(base_folder, pairs(), **recipe).payload))
    dpo_payload = train(base_folder, pairs(), objective="dpo", **recipe).payload
    dpo = statistics.fmean(margins(base_folder, pairs(), dpo_payload))
    assert dpo - before > sft - before


def test_before_the_first_step_the_policy_is_its_own_reference(base_folder):
    # A fresh default init leaves the base untouched (B = 0): every pair's DPO loss is log 2.
    result = train(base_folder, pairs(), objective="dpo", steps=1, batch_size=4)
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-5)


def test_a_continued_dpo_run_takes_the_parent_revision_as_its_reference(base_folder):
    parent = train(base_folder, parse_jsonl(FACTS).examples, steps=5, learning_rate=0.02).payload
    assert margins(base_folder, pairs(), parent) != pytest.approx(margins(base_folder, pairs()))
    continued = train(base_folder, pairs(), objective="dpo", steps=1, batch_size=4, start_from=parent)
    assert continued.losses[0] == pytest.approx(math.log(2), abs=1e-5)


def test_with_sft_a_preference_row_is_learned_as_its_chosen_answer(base_folder):
    chosen_only = parse_jsonl(
        b"".join(
            b'{"prompt": "%s", "completion": "%s"}\n'
            % (ex.prompt_messages[0].content.encode(), ex.final_answer.encode())
            for ex in pairs()
        )
    ).examples
    recipe = {"steps": 3, "batch_size": 2}
    assert train(base_folder, pairs(), **recipe).payload == train(base_folder, chosen_only, **recipe).payload


def test_dpo_gives_the_same_payload_for_the_same_seed(base_folder):
    recipe = {"steps": 3, "batch_size": 2, "objective": "dpo", "seed": 3}
    assert train(base_folder, pairs(), **recipe).payload == train(base_folder, pairs(), **recipe).payload


def test_a_batch_of_plain_rows_and_pairs_is_learned_with_the_mean_of_both_losses(base_folder):
    base = load_base(*base_folder)
    pad, device = pad_token_id(base.tokenizer), base.device
    plain = preference.encode_rows(base.tokenizer, parse_jsonl(FACTS).examples, 256)
    rows = preference.encode_rows(base.tokenizer, pairs(), 256)
    rows = preference.with_reference(base.model, rows, pad, device, batch_size=2)
    with torch.no_grad():
        sft = preference.batch_loss(base.model, plain, pad, device, beta=0.1)
        dpo = preference.batch_loss(base.model, rows, pad, device, beta=0.1)
        mixed = preference.batch_loss(base.model, plain + rows, pad, device, beta=0.1)
    assert float(dpo) == pytest.approx(math.log(2), abs=1e-5)
    assert float(mixed) == pytest.approx((float(sft) + float(dpo)) / 2, rel=1e-5)


def test_dpo_on_a_dataset_without_pairs_is_refused(base_folder):
    with pytest.raises(ValueError, match='"dpo" needs preference rows'):
        train(base_folder, parse_jsonl(FACTS).examples, objective="dpo", steps=1)


def test_the_objective_and_beta_are_validated_with_the_other_settings():
    with pytest.raises(TrainingConfigInvalid) as caught:
        TrainingConfig.from_dict({"objective": "ppo", "dpo_beta": 0})
    assert caught.value.errors == {"objective": "must be one of sft, dpo", "dpo_beta": "must be in (0, 10]"}
    with pytest.raises(TrainingConfigInvalid, match="dpo_beta: must be float"):
        TrainingConfig.from_dict({"dpo_beta": "strong"})
    with pytest.raises(TrainingConfigInvalid, match=r"dpo_beta: must be in \(0, 10\]"):
        TrainingConfig.from_dict({"dpo_beta": 10.5})
    config = TrainingConfig.from_dict({"objective": "dpo", "dpo_beta": 0.5})
    assert (config.objective, config.dpo_beta) == ("dpo", 0.5)
    assert (TrainingConfig().objective, TrainingConfig().dpo_beta) == ("sft", 0.1)


def close_factors(parent: bytes, child: bytes, tolerance: float) -> bool:
    a, b = unpack(parent), unpack(child)
    return set(a.tensors) == set(b.tensors) and all(
        (a.tensors[key] - b.tensors[key]).abs().max() <= tolerance for key in a.tensors
    )


def test_a_continued_run_starts_from_the_parent_payloads_factors(base_folder):
    recipe = {"rank": 4, "alpha": 8}
    parent = train(base_folder, parse_jsonl(FACTS).examples, steps=5, **recipe).payload
    # One step at a negligible rate: the new payload is the parent's, to that step.
    child = train(base_folder, pairs(), steps=1, learning_rate=1e-8, start_from=parent, **recipe).payload
    assert child != parent
    assert close_factors(parent, child, tolerance=1e-6)
    assert unpack(child).config == unpack(parent).config


def test_a_base_shifting_init_is_not_applied_again_when_continuing(base_folder):
    # A PiSSA revision is stored folded at rank 2r, relative to the untouched base; continued,
    # it stays that adapter (no second PiSSA, no second fold).
    recipe = {"rank": 2, "alpha": 4, "init": "pissa"}
    parent = train(base_folder, parse_jsonl(FACTS).examples, steps=3, **recipe).payload
    child = train(base_folder, pairs(), steps=1, learning_rate=1e-8, start_from=parent, **recipe).payload
    assert unpack(child).config["r"] == unpack(parent).config["r"] == 4
    assert close_factors(parent, child, tolerance=1e-6)


def test_a_rank_that_differs_from_the_parent_payload_is_refused_by_name(base_folder):
    parent = train(base_folder, parse_jsonl(FACTS).examples, steps=1, rank=4, alpha=8).payload
    with pytest.raises(ContinuationRefused) as caught:
        train(base_folder, pairs(), steps=1, rank=2, alpha=8, start_from=parent)
    assert caught.value.errors == {"rank": "the payload is rank 4; this config's rank is 2"}
    assert str(caught.value).startswith("cannot continue from this payload: rank: the payload is rank 4")
    assert isinstance(caught.value, ValueError)


def test_targets_and_init_that_differ_from_the_parent_payload_are_refused(base_folder):
    parent = train(base_folder, parse_jsonl(FACTS).examples, steps=1, rank=2, alpha=4).payload
    with pytest.raises(ContinuationRefused) as caught:
        train(
            base_folder,
            pairs(),
            steps=1,
            rank=2,
            alpha=4,
            targets="attention",
            init="gaussian",
            start_from=parent,
        )
    assert set(caught.value.errors) == {"targets", "init"}
    assert "this config's 'attention' adapts k_proj, o_proj, q_proj, v_proj" in caught.value.errors["targets"]


def test_a_continued_runs_payload_is_served_by_the_runtime_like_any_other(base_folder):
    parent = train(base_folder, parse_jsonl(FACTS).examples, steps=5, rank=4, alpha=8).payload
    child = train(base_folder, pairs(), steps=3, objective="dpo", rank=4, alpha=8, start_from=parent).payload
    blobs = {hashlib.sha256(p).hexdigest(): p for p in (parent, child)}
    runtime = AdapterRuntime()
    text = "<|user|>\nCan you help me?<|end|>\n<|assistant|>\n"
    logits = {sha: runtime.logits(*base_folder, sha, blobs.__getitem__, text) for sha in blobs}
    bare = runtime.logits(*base_folder, None, blobs.__getitem__, text)
    assert all(tensor.shape == bare.shape for tensor in logits.values())
    parent_logits, child_logits = (logits[hashlib.sha256(p).hexdigest()] for p in (parent, child))
    assert not child_logits.allclose(parent_logits) and not child_logits.allclose(bare)
    answer = runtime.answer(*base_folder, hashlib.sha256(child).hexdigest(), blobs.__getitem__, text, 8)
    assert isinstance(answer, str)
