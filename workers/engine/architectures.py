"""The causal-LM architectures the engine knows, and what each supports.

One table answers, for every path that depends on a base's architecture: may it be
imported at all, which modules a LoRA targets ("attention" and "all-linear"), and
whether the heterogeneous serving bank can batch it (else its adapters are served
one at a time by the runtime, and the base's page says so). An architecture not in
the table is refused at import with a message naming the ones that are.
"""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True, slots=True)
class Architecture:
    name: str  # the transformers class, as config.architectures names it
    family: str  # a short name for pages and tables
    attention_modules: tuple[str, ...] = ATTENTION_MODULES
    mlp_modules: tuple[str, ...] = MLP_MODULES
    # Whether BatchedLoraModel + BatchGenerator serve many adapters in one batch
    # exactly (checked against PEFT by tests); if not, why not.
    batched: bool = True
    unbatched_reason: str = ""

    @property
    def all_linear_modules(self) -> tuple[str, ...]:
        return self.attention_modules + self.mlp_modules

    def target_modules(self, targets: str) -> list[str]:
        """PEFT target_modules for a preset ("attention" or "all-linear")."""
        return list(self.attention_modules if targets == "attention" else self.all_linear_modules)

    @property
    def serving_mode(self) -> str:
        return "batched" if self.batched else "one adapter at a time"


KNOWN = {
    arch.name: arch
    for arch in (
        # our own base family, SmolLM2 (GQA), and any other Llama-shaped model
        Architecture("LlamaForCausalLM", "llama"),
        # Gemma 3 text models (gemma-3-270m): GQA, head_dim 256, q/k norms (not linear,
        # so never adapted), sliding-window layers between global ones, tied embeddings
        # scaled by sqrt(hidden). Batched: BatchGenerator merges and cuts the sliding
        # layers' caches (batch_generate.py), checked against PEFT in
        # tests/test_real_architectures.py.
        Architecture("Gemma3ForCausalLM", "gemma3"),
    )
}


class UnknownArchitecture(ValueError):
    pass


def architecture_of(config_or_name) -> Architecture:
    """The table's entry for a transformers config (or a class name); refuses others."""
    if isinstance(config_or_name, str):
        name = config_or_name
    else:
        names = getattr(config_or_name, "architectures", None) or []
        name = names[0] if names else _causal_lm_class(getattr(config_or_name, "model_type", ""))
    if name in KNOWN:
        return KNOWN[name]
    raise UnknownArchitecture(
        f"architecture {name or 'unknown'!r} is not one the engine can train and serve; "
        f"supported: {', '.join(sorted(KNOWN))}"
    )


def _causal_lm_class(model_type: str) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, "")
