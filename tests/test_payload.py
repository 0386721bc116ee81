import torch
from safetensors.torch import load

from workers.engine.payload import header_metadata, pack, unpack

CONFIG = {"r": 2, "lora_alpha": 4, "peft_type": "LORA"}


def tensors():
    generator = torch.Generator().manual_seed(0)
    return {
        "layer.lora_B.weight": torch.randn(3, 2, generator=generator),
        "layer.lora_A.weight": torch.randn(2, 3, generator=generator).to(torch.bfloat16),
    }


def test_a_payload_is_plain_safetensors_with_the_config_in_its_header():
    data = pack(tensors(), CONFIG)
    loaded = load(data)
    for name, tensor in tensors().items():
        assert torch.equal(loaded[name], tensor)
    assert loaded["layer.lora_A.weight"].dtype == torch.bfloat16
    assert header_metadata(data)["format"] == "pt"
    assert unpack(data).config == CONFIG


def test_the_same_tensors_always_give_the_same_bytes():
    forward = tensors()
    backward = dict(reversed(list(forward.items())))
    assert pack(forward, CONFIG) == pack(backward, dict(reversed(list(CONFIG.items()))))
