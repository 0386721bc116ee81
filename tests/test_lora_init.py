"""Initialisations: PiSSA, OLoRA and tail start where the base was, and their stored
payloads reproduce the trained model on the untouched shared base."""

import pytest
import torch

from tests.conftest import FACTS
from workers.engine.base_models import load_base
from workers.engine.examples import parse_jsonl
from workers.engine.lora_init import lora_layers, tail_init_
from workers.engine.payload import unpack
from workers.engine.runtime import _lora_fields
from workers.engine.training import TrainingConfig, train_adapter


@pytest.fixture
def base_folder(micro_base):
    return micro_base.path, micro_base.digest


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def served_on_original_base(base_folder, payload: bytes):
    """The adapter as a worker serves it: PEFT on a fresh, unmodified base."""
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict

    stored = unpack(payload)
    model = PeftModel(load_base(*base_folder).model, LoraConfig(**_lora_fields(stored.config)))
    set_peft_model_state_dict(model, stored.tensors)
    return model.eval()


@pytest.mark.parametrize("init", ["pissa", "olora", "tail"])
def test_a_base_shifting_init_starts_exactly_where_the_base_was(base_folder, init):
    from peft import get_peft_model

    from workers.engine.lora_init import apply_init_

    ids = torch.tensor([[5, 9, 13, 21, 34, 55]])
    before = logits(load_base(*base_folder).model, ids)
    model = get_peft_model(load_base(*base_folder).model, TrainingConfig(rank=2, init=init).lora_config())
    apply_init_(model, init)
    assert torch.allclose(logits(model, ids), before, atol=1e-4)


def test_the_tail_init_takes_the_smallest_singular_directions(base_folder):
    from peft import LoraConfig, get_peft_model

    original = load_base(*base_folder).model
    model = get_peft_model(
        load_base(*base_folder).model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"])
    )
    name, layer = lora_layers(model)[0]
    weight = dict(original.named_parameters())[name.removeprefix("base_model.model.") + ".weight"].detach()
    tail_init_(layer)
    update = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    smallest = torch.linalg.svdvals(weight)[-2:]
    assert torch.allclose(torch.linalg.svdvals(update)[:2], smallest, atol=1e-5)
    assert torch.allclose(layer.get_base_layer().weight + update, weight, atol=1e-5)


@pytest.mark.parametrize("init", ["pissa", "olora", "tail"])
def test_a_trained_base_shifting_adapter_is_stored_relative_to_the_untouched_base(base_folder, init):
    base = load_base(*base_folder)
    config = TrainingConfig(rank=2, steps=4, init=init, learning_rate=1e-2)
    result = train_adapter(base.model, base.tokenizer, parse_jsonl(FACTS).examples, config)
    trained = base.model  # PEFT wrapped it in place: residual weights + trained factors
    stored = unpack(result.payload)

    assert stored.config["r"] == 4 and stored.config["init_lora_weights"] is True
    assert result.trainable_parameters * 2 == stored.parameters
    ids = torch.tensor([[5, 9, 13, 21, 34, 55]])
    served = served_on_original_base(base_folder, result.payload)
    assert torch.allclose(logits(served, ids), logits(trained, ids), atol=1e-4)
    assert not torch.allclose(logits(served, ids), logits(load_base(*base_folder).model, ids), atol=1e-4)


def test_the_default_init_is_stored_at_the_rank_it_was_trained(base_folder):
    base = load_base(*base_folder)
    result = train_adapter(
        base.model, base.tokenizer, parse_jsonl(FACTS).examples, TrainingConfig(rank=2, steps=2)
    )
    assert unpack(result.payload).config["r"] == 2
    assert unpack(result.payload).parameters == result.trainable_parameters
