"""How far apart two LoRA adapters on the same base are, module by module.

A LoRA module adds ΔW = scaling · B @ A to its base weight, with scaling =
lora_alpha / r (or lora_alpha / sqrt(r) for rsLoRA). Comparing the factors A and B
of two adapters says little: different ranks, seeds or inits give unrelated factors
for the same update. So this compares the effective updates: ‖ΔW_a‖, ‖ΔW_b‖ and
‖ΔW_b - ΔW_a‖ (Frobenius norms), in float32 on the CPU. ΔW is only as large as the
module's own weight (hidden ≤ 512 here), built one module at a time.

Payloads are read by `payload.unpack`, which uses safetensors only (never pickle).
No Django imports.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from workers.engine.payload import AdapterPayload

# PEFT's state-dict keys: `base_model.model.<module>.lora_A.weight` (and lora_embedding_A
# for embeddings, whose ΔW is the transpose: the same norms).
FACTOR_KEY_RE = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?:embedding_)?(?P<factor>[AB])(?:\.weight)?$"
)
LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# Modules of a decoder layer in the order the layer runs them; others follow by name.
MODULE_ORDER = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class WeightDeltaError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ModuleDelta:
    """One adapted module: the norms of each side's update and of their difference.

    A module adapted on one side only counts as a zero update on the other."""

    module: str  # e.g. "model.layers.0.self_attn.q_proj"
    shape: tuple[int, int]  # (out, in) of ΔW
    norm_a: float  # ‖ΔW_a‖_F
    norm_b: float  # ‖ΔW_b‖_F
    norm_diff: float  # ‖ΔW_b - ΔW_a‖_F
    in_a: bool = True
    in_b: bool = True

    @property
    def layer(self) -> int | None:
        match = LAYER_RE.search(self.module)
        return int(match.group(1)) if match else None

    @property
    def name(self) -> str:
        """The module within its layer (`self_attn.q_proj`), or the whole name outside layers."""
        match = LAYER_RE.search(self.module)
        return self.module[match.end() :] if match else self.module

    @property
    def relative_change(self) -> float | None:
        """‖ΔW_b - ΔW_a‖ / ‖ΔW_a‖; None when side a has no update to be relative to."""
        return self.norm_diff / self.norm_a if self.norm_a > 0 else None


@dataclass(frozen=True, slots=True)
class WeightComparison:
    modules: list[ModuleDelta]

    @property
    def norm_a(self) -> float:
        """‖ΔW_a‖ over every adapted module together."""
        return math.sqrt(sum(m.norm_a**2 for m in self.modules))

    @property
    def norm_b(self) -> float:
        return math.sqrt(sum(m.norm_b**2 for m in self.modules))

    @property
    def norm_diff(self) -> float:
        return math.sqrt(sum(m.norm_diff**2 for m in self.modules))

    @property
    def relative_change(self) -> float | None:
        return self.norm_diff / self.norm_a if self.norm_a > 0 else None

    def by_layer(self) -> list[tuple[str, list[ModuleDelta]]]:
        """[("layer 0", modules), ...], then ("outside the layers", ...) for e.g. lm_head."""
        groups: dict[str, list[ModuleDelta]] = {}
        for module in self.modules:
            title = "outside the layers" if module.layer is None else f"layer {module.layer}"
            groups.setdefault(title, []).append(module)
        return list(groups.items())

    @property
    def only_in_a(self) -> list[ModuleDelta]:
        return [m for m in self.modules if not m.in_b]

    @property
    def only_in_b(self) -> list[ModuleDelta]:
        return [m for m in self.modules if not m.in_a]


@dataclass(frozen=True, slots=True)
class LoraFactors:
    a: object  # torch.Tensor (r, in)
    b: object  # torch.Tensor (out, r)
    scaling: float

    def delta(self):
        """ΔW = scaling · B @ A in float32 (out, in)."""
        import torch

        update = self.b.to(torch.float32) @ self.a.to(torch.float32)
        return update.mul_(self.scaling)


def lora_factors(payload: AdapterPayload) -> dict[str, LoraFactors]:
    """module name -> its LoRA factors and scaling, from a payload's tensors and config."""
    config = payload.config
    if config.get("use_dora"):
        raise WeightDeltaError(
            "a DoRA adapter's update depends on the base weights; it cannot be compared here"
        )
    pairs: dict[str, dict[str, object]] = {}
    for key, tensor in payload.tensors.items():
        match = FACTOR_KEY_RE.match(key)
        if match is None:
            continue  # biases, modules_to_save copies: not a low-rank update
        pairs.setdefault(match.group("module"), {})[match.group("factor")] = tensor
    factors = {}
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise WeightDeltaError(f"{module} has lora_{''.join(pair)} but not both LoRA factors")
        a, b = pair["A"], pair["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise WeightDeltaError(
                f"{module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not multiply"
            )
        factors[module] = LoraFactors(a, b, scaling(config, module, rank=a.shape[0]))
    if not factors:
        raise WeightDeltaError("the payload holds no LoRA factors (lora_A / lora_B tensors)")
    return factors


def scaling(config: dict, module: str, *, rank: int) -> float:
    """lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA; `alpha_pattern` overrides
    lora_alpha for the modules it names. The rank is the factor's own (it already
    reflects any `rank_pattern`)."""
    alpha = float(config.get("lora_alpha", 8))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        # PEFT's rule: a pattern matches the module name or a dotted suffix of it.
        try:
            matched = re.match(rf"(.*\.)?({pattern})$", module)
        except re.error as exc:
            raise WeightDeltaError(f"alpha_pattern {pattern!r} is not a valid pattern: {exc}") from None
        if matched:
            alpha = float(value)
            break
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def compare_weights(a: AdapterPayload, b: AdapterPayload) -> WeightComparison:
    """Per-module norms of ΔW_a, ΔW_b and ΔW_b - ΔW_a, ordered by layer, then module."""
    import torch

    factors_a, factors_b = lora_factors(a), lora_factors(b)
    modules = []
    with torch.no_grad():
        for module in sorted(factors_a.keys() | factors_b.keys(), key=_module_order):
            side_a, side_b = factors_a.get(module), factors_b.get(module)
            delta_a = side_a.delta() if side_a else None
            delta_b = side_b.delta() if side_b else None
            if delta_a is not None and delta_b is not None and delta_a.shape != delta_b.shape:
                raise WeightDeltaError(
                    f"{module}: updates of shape {tuple(delta_a.shape)} and {tuple(delta_b.shape)} "
                    "(adapters of different bases?)"
                )
            norm_a = _norm(delta_a)
            norm_b = _norm(delta_b)
            if delta_a is None:
                norm_diff = norm_b
            elif delta_b is None:
                norm_diff = norm_a
            else:
                norm_diff = _norm(delta_b.sub_(delta_a))  # in place: no third matrix
            shape = tuple((delta_a if delta_a is not None else delta_b).shape)
            modules.append(
                ModuleDelta(
                    module, shape, norm_a, norm_b, norm_diff, in_a=side_a is not None, in_b=side_b is not None
                )
            )
    return WeightComparison(modules)


def _norm(delta) -> float:
    if delta is None:
        return 0.0
    import torch

    return float(torch.linalg.matrix_norm(delta, ord="fro"))


def _module_order(module: str) -> tuple:
    match = LAYER_RE.search(module)
    layer = int(match.group(1)) if match else math.inf
    leaf = module.rsplit(".", 1)[-1]
    rank = MODULE_ORDER.index(leaf) if leaf in MODULE_ORDER else len(MODULE_ORDER)
    return (layer, rank, module)
