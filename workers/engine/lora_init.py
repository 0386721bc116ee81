"""How a LoRA adapter's factors start, and how an adapter whose start moved the base is stored.

Four initialisations (`TrainingConfig.init`):

  default  PEFT's: A Kaiming-uniform, B zero, so B·A = 0 and the base is untouched.
  pissa    PEFT's PiSSA: A, B from the r *largest* singular triplets of W, and the base
           weight becomes the residual W - s·B0·A0.
  olora    PEFT's OLoRA: B, A from the QR factors of W (first r columns / rows), residual
           likewise.
  tail     ours (MiLoRA-style): like PiSSA but from the r *smallest* singular triplets,
           the directions the base barely uses. The residual is W - s·B0·A0 as well.

The last three change the base weights while training. MinT never copies the shared base,
so such an adapter is stored as its update relative to the *original* weights:

    W - s·B0·A0 + s·B·A  =  W + s·[B | -B0]·[A ; A0]

a plain LoRA of rank 2r with the same scaling (alpha doubled with the rank). That is what
`fold_initial_factors` writes: the served payload needs no residual base and loads like
any other adapter, at twice the rank of what was trained. PEFT's own
`path_initial_model_for_weight_conversion` does the same conversion.

No Django imports.
"""

from __future__ import annotations

import math

import torch

# Inits whose start is not B·A = 0: the base weights move by -s·B0·A0 while training.
BASE_SHIFTING_INITS = ("pissa", "olora", "tail")


def lora_layers(model) -> list[tuple[str, object]]:
    """(module name, PEFT LoRA layer) of every adapted linear layer, in model order."""
    from peft.tuners.lora import LoraLayer

    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]


@torch.no_grad()
def tail_init_(layer, adapter_name: str = "default") -> None:
    """Start a PEFT LoRA layer from the base weight's r smallest singular triplets:
    A = sqrt(S/s)·Uᵀ, B = V·sqrt(S/s), so s·B·A is the weight's minor rank-r part,
    which moves out of the base into the adapter (the base keeps W - s·B·A)."""
    base = layer.get_base_layer()
    rank, scale = layer.r[adapter_name], layer.scaling[adapter_name]
    weight = base.weight.data.to(torch.float32)  # [out, in]
    left, singular, right_t = torch.linalg.svd(weight, full_matrices=False)
    tail = slice(singular.numel() - rank, singular.numel())
    root = torch.sqrt(singular[tail] / scale)
    lora_a = root[:, None] * right_t[tail]  # [r, in]
    lora_b = left[:, tail] * root[None, :]  # [out, r]
    layer.lora_A[adapter_name].weight.data = lora_a.contiguous()
    layer.lora_B[adapter_name].weight.data = lora_b.contiguous()
    base.weight.data = (weight - scale * lora_b @ lora_a).to(base.weight.dtype)


def apply_init_(model, init: str, adapter_name: str = "default") -> None:
    """Inits PEFT does not have are applied after `get_peft_model` built the layers."""
    if init == "tail":
        for _, layer in lora_layers(model):
            tail_init_(layer, adapter_name)


def initial_factors(model, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """A copy of the adapter's factors as they start, under PEFT's state-dict key names
    (what `get_peft_model_state_dict` returns), to fold into the payload after training."""
    from peft import get_peft_model_state_dict

    return {
        k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name=adapter_name).items()
    }


def fold_initial_factors(
    tensors: dict[str, torch.Tensor], initial: dict[str, torch.Tensor], config: dict
) -> tuple[dict[str, torch.Tensor], dict]:
    """Trained factors plus their starting point -> a rank-2r plain LoRA relative to the
    original base (see the module docstring). Returns (tensors, PEFT config)."""
    folded: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        start = initial[key]
        if ".lora_A." in key:
            folded[key] = torch.cat([tensor, start], dim=0).contiguous()
        elif ".lora_B." in key:
            folded[key] = torch.cat([tensor, -start], dim=1).contiguous()
        else:
            folded[key] = tensor
    config = dict(config)
    rank = int(config["r"])
    # Keep each module's scaling: alpha/r (or alpha/sqrt(r) with rsLoRA) at rank 2r.
    grow = math.sqrt(2) if config.get("use_rslora") else 2.0
    config["r"] = 2 * rank
    config["lora_alpha"] = config["lora_alpha"] * grow
    config["rank_pattern"] = {k: 2 * v for k, v in (config.get("rank_pattern") or {}).items()}
    config["alpha_pattern"] = {k: v * grow for k, v in (config.get("alpha_pattern") or {}).items()}
    config["init_lora_weights"] = True  # loading must never re-run an init that edits the base
    return folded, config
