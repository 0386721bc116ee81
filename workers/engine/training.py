"""LoRA fine-tuning of a personal adapter on its base: supervised (SFT), or DPO on
preference pairs (`objective`, workers/engine/preference.py).

Deterministic for a seed (same data, config and seed give the same payload
bytes on the same machine and thread count), loss masked to the answer tokens,
and cooperative: `on_step` is called after every optimiser step and may raise
to stop the run (cancellation).

A run starts from a fresh adapter, or continues from a revision's payload
(`start_from`): its factors are the new adapter's start, so a retrain carries on
from the live revision instead of from scratch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from workers.engine.architectures import (
    ATTENTION_MODULES,  # noqa: F401 (bench_serving imports it from here)
    KNOWN,
    Architecture,
    architecture_of,
)
from workers.engine.examples import Example
from workers.engine.prompting import IGNORE_INDEX, encode_for_training

# init name -> PEFT's init_lora_weights. "tail" starts as PEFT's default and is then
# re-initialised by workers/engine/lora_init.py (PEFT has no such init).
INIT_METHODS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora", "tail": True}
TARGET_PRESETS = ("all-linear", "attention")
CHECKPOINTING = ("auto", "on", "off")
# "sft" learns each row's final answer; "dpo" learns preference rows (chosen and rejected)
# with the DPO loss and the other rows with SFT (workers/engine/preference.py).
OBJECTIVES = ("sft", "dpo")
# "auto" turns gradient checkpointing on when the decoder layers' activations for one
# batch would exceed this (estimated as below): recomputing each layer's forward in the
# backward costs about a third more compute per step, which is worth paying only once
# activations, not weights, are what fills memory. Our own bases (hidden 128, a few
# layers) stay far below it and train as fast as before; SmolLM2-135M (hidden 576, 30
# layers) and Gemma-3-270m (hidden 640, 18 layers) at batch 8 x 256 tokens come to about
# 2.4 and 1.6 GiB, and are checkpointed.
CHECKPOINTING_ABOVE_BYTES = 1 << 30
# Bytes of activations a decoder layer keeps per token and hidden unit for the backward:
# about 34 in 16-bit (Korthikanti et al., 2022), so 68 in float32.
ACTIVATION_BYTES_PER_TOKEN_UNIT = 68

StepCallback = Callable[[int, int, float], None]


class TrainingConfigInvalid(ValueError):
    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: str = "all-linear"
    learning_rate: float = 5e-3
    steps: int = 60
    batch_size: int = 8
    max_length: int = 256
    seed: int = 0
    init: str = "default"
    # Share of each batch drawn from the base's own general corpus (its replay set),
    # so learning a person does not erase what the shared base knows.
    replay: float = 0.0
    # Gradient checkpointing: "auto" (on where it pays, see CHECKPOINTING_ABOVE_BYTES), "on", "off".
    gradient_checkpointing: str = "auto"
    objective: str = "sft"
    # DPO's β: how far from the reference the policy may move to widen a pair's margin
    # (the DPO paper trains with 0.1 and 0.5). Only read with objective "dpo".
    dpo_beta: float = 0.1

    LIMITS = {
        "rank": (1, 256),
        "alpha": (1, 1024),
        "steps": (1, 100_000),
        "batch_size": (1, 512),
        "max_length": (8, 8192),
        "seed": (0, 2**31 - 1),
    }

    @classmethod
    def from_dict(cls, raw: dict | None) -> TrainingConfig:
        """Build from user input, collecting every problem before refusing."""
        raw = dict(raw or {})
        known = set(cls.__dataclass_fields__)
        errors = {k: "unknown setting" for k in raw if k not in known}
        values: dict = {}
        for name, spec in cls.__dataclass_fields__.items():
            if name not in raw:
                continue
            value, kind = raw[name], type(spec.default)
            try:
                if kind is int and (isinstance(value, bool) or float(value) != int(value)):
                    raise ValueError
                values[name] = kind(value)
            except (TypeError, ValueError):
                errors[name] = f"must be {kind.__name__}"
        config = cls(**values)
        for name, problem in config.problems().items():
            errors.setdefault(name, problem)
        if errors:
            raise TrainingConfigInvalid(errors)
        return config

    def problems(self) -> dict[str, str]:
        errors = {}
        for name, (low, high) in self.LIMITS.items():
            value = getattr(self, name)
            if not low <= value <= high:
                errors[name] = f"must be between {low} and {high}"
        if not 0.0 <= self.replay < 1.0:
            errors["replay"] = "must be in [0, 1)"
        if not 0.0 <= self.dropout < 1.0:
            errors["dropout"] = "must be in [0, 1)"
        if not 0.0 < self.learning_rate <= 1.0:
            errors["learning_rate"] = "must be in (0, 1]"
        if self.targets not in TARGET_PRESETS:
            errors["targets"] = f"must be one of {', '.join(TARGET_PRESETS)}"
        if self.init not in INIT_METHODS:
            errors["init"] = f"must be one of {', '.join(INIT_METHODS)}"
        if self.gradient_checkpointing not in CHECKPOINTING:
            errors["gradient_checkpointing"] = f"must be one of {', '.join(CHECKPOINTING)}"
        if self.objective not in OBJECTIVES:
            errors["objective"] = f"must be one of {', '.join(OBJECTIVES)}"
        if not 0.0 < self.dpo_beta <= 10.0:
            errors["dpo_beta"] = "must be in (0, 10]"
        return errors

    def as_dict(self) -> dict:
        return asdict(self)

    def lora_config(self, architecture: Architecture | None = None):
        """PEFT's config, targeting the modules the architecture table names for
        `targets` (Llama's when no architecture is given): linear layers only, never the
        output head or the embeddings, which tied models share."""
        from peft import LoraConfig

        architecture = architecture or KNOWN["LlamaForCausalLM"]
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=architecture.target_modules(self.targets),
            init_lora_weights=INIT_METHODS[self.init],
            task_type="CAUSAL_LM",
        )

    def checkpoints(self, model_config) -> bool:
        """Whether to train with gradient checkpointing on a base of this config."""
        if self.gradient_checkpointing != "auto":
            return self.gradient_checkpointing == "on"
        activations = (
            self.batch_size
            * self.max_length
            * model_config.hidden_size
            * model_config.num_hidden_layers
            * ACTIVATION_BYTES_PER_TOKEN_UNIT
        )
        return activations > CHECKPOINTING_ABOVE_BYTES


@dataclass(slots=True)
class TrainResult:
    payload: bytes
    losses: list[float] = field(default_factory=list)
    trainable_parameters: int = 0


def train_adapter(
    base_model,
    tokenizer,
    examples: Sequence[Example],
    config: TrainingConfig,
    *,
    on_step: StepCallback | None = None,
    replay: Sequence[Example] = (),
    start_from: bytes | None = None,
) -> TrainResult:
    """Train a LoRA adapter on a freshly loaded `base_model` (it is modified in place).

    With `config.replay` > 0, that share of every batch comes from `replay`
    (general rows from the base's pretraining corpus).

    `start_from` is a revision's payload (workers/engine/payload.py) to continue: its
    factors start the new adapter instead of a fresh init, and `config` must describe
    the same adapter (`ContinuationRefused` names what differs). The payload is already
    relative to the untouched base, so it is loaded onto a default-init adapter of its
    own shape and no base-shifting init (PiSSA, OLoRA, tail) runs again: the new payload
    is relative to the untouched base too, at the parent's rank.

    With `config.objective` "dpo", rows that carry a rejected answer are learned with the
    DPO loss against the model as it stands before the first step (the bare base for a
    fresh default init, the parent revision with `start_from`); the other rows, replay
    included, keep the SFT loss (workers/engine/preference.py)."""
    import torch
    from peft import get_peft_model, get_peft_model_state_dict

    from workers.engine import preference
    from workers.engine.lora_init import (
        BASE_SHIFTING_INITS,
        apply_init_,
        fold_initial_factors,
        initial_factors,
    )
    from workers.engine.payload import pack

    if not examples:
        raise ValueError("cannot train on an empty dataset")
    if config.replay and not replay:
        raise ValueError("replay is set but this base ships no replay rows")
    if config.objective == "dpo" and not any(example.rejected for example in examples):
        raise ValueError(
            'objective "dpo" needs preference rows ({"prompt", "chosen", "rejected"}); this dataset has none'
        )
    torch.manual_seed(config.seed)
    order = random.Random(config.seed)
    device = next(base_model.parameters()).device
    architecture = architecture_of(base_model.config)

    if start_from is None:
        model = get_peft_model(base_model, config.lora_config(architecture))
        apply_init_(model, config.init)
    else:
        model = continued_model(base_model, start_from, config, architecture)
    trainable_names = [name for name, p in model.named_parameters() if p.requires_grad]
    trainable_by_mistake = [name for name in trainable_names if ".lora_" not in name]
    if trainable_by_mistake:  # embeddings / head (tied on real bases) must stay the shared base's
        raise ValueError(
            f"only LoRA factors may train; also trainable: {', '.join(trainable_by_mistake[:3])}"
        )
    # PiSSA, OLoRA and tail move part of the base into the adapter; the payload is stored
    # relative to the untouched base, so keep where the factors started.
    shifted = start_from is None and config.init in BASE_SHIFTING_INITS
    start = initial_factors(model) if shifted else None
    pad_id = pad_token_id(tokenizer)
    if config.objective == "dpo":
        encoded = preference.encode_rows(tokenizer, examples, config.max_length)
        # π_ref is the model before any step: its log-probs of every pair, computed once.
        encoded = preference.with_reference(model, encoded, pad_id, device, config.batch_size)
    else:
        encoded = [encode_for_training(tokenizer, ex, config.max_length) for ex in examples]
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)

    losses: list[float] = []
    replay_size = round(config.batch_size * config.replay) if replay else 0
    own_size = min(config.batch_size - replay_size, len(encoded))
    batches = shuffled_batches(encoded, own_size, order)
    replayed = (
        shuffled_batches(
            [encode_for_training(tokenizer, ex, config.max_length) for ex in replay], replay_size, order
        )
        if replay_size
        else None
    )
    with checkpointing(base_model, config.checkpoints(base_model.config)):
        for step in range(1, config.steps + 1):
            batch = next(batches) + (next(replayed) if replayed else [])
            loss = preference.batch_loss(model, batch, pad_id, device, config.dpo_beta)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step, config.steps, losses[-1])

    model.eval()
    tensors = get_peft_model_state_dict(model)
    peft_config = peft_config_dict(model.peft_config["default"])
    if start is not None:
        tensors, peft_config = fold_initial_factors(tensors, start, peft_config)
    return TrainResult(
        payload=pack(tensors, peft_config),
        losses=losses,
        trainable_parameters=sum(p.numel() for p in trainable),
    )


class ContinuationRefused(TrainingConfigInvalid):
    """The training config does not describe the adapter in the payload it should continue."""

    def __str__(self) -> str:
        return f"cannot continue from this payload: {super().__str__()}"


def continuation_problems(config: TrainingConfig, payload_config: dict, architecture: Architecture) -> dict:
    """setting -> how `config` differs from the adapter a payload holds (empty: it continues).

    A base-shifting init's payload is folded to rank 2r with alpha doubled
    (lora_init.fold_initial_factors), so that is the shape such a config continues. A folded
    payload does not say which of PiSSA, OLoRA or tail made it: any of them continues it."""
    from workers.engine.lora_init import BASE_SHIFTING_INITS

    growth = 2 if config.init in BASE_SHIFTING_INITS else 1

    def ours(setting: str, value: int) -> str:
        if growth == 1:
            return f"this config's {setting} is {value}"
        folded = growth * value
        return f"this config's {config.init} adapter of {setting} {value} is stored folded, at {folded}"

    problems = {}
    rank = payload_config.get("r")
    if payload_config.get("rank_pattern"):
        problems["rank"] = "the payload has per-module ranks, which a training config cannot describe"
    elif rank != growth * config.rank:
        problems["rank"] = f"the payload is rank {rank}; {ours('rank', config.rank)}"
    alpha = payload_config.get("lora_alpha")
    if payload_config.get("alpha_pattern"):
        problems["alpha"] = "the payload has per-module alphas, which a training config cannot describe"
    elif not isinstance(alpha, int | float) or abs(alpha - growth * config.alpha) > 1e-9:
        shown = f"{alpha:g}" if isinstance(alpha, int | float) else repr(alpha)
        problems["alpha"] = f"the payload's alpha is {shown}; {ours('alpha', config.alpha)}"
    wanted = set(architecture.target_modules(config.targets))
    targets = payload_config.get("target_modules")
    adapted = {targets} if isinstance(targets, str) else set(targets or ())
    if adapted != wanted:
        problems["targets"] = (
            f"the payload adapts {', '.join(sorted(adapted)) or 'nothing'}; this config's "
            f"{config.targets!r} adapts {', '.join(sorted(wanted))}"
        )
    init = payload_config.get("init_lora_weights", True)
    if init != ("gaussian" if config.init == "gaussian" else True):
        shown = "default" if init is True else repr(init)
        problems["init"] = f"the payload's init is {shown}; this config's is {config.init!r}"
    return problems


def continued_model(base_model, payload: bytes, config: TrainingConfig, architecture: Architecture):
    """`base_model` wrapped by PEFT with one trainable adapter that starts as the payload's."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    from workers.engine.payload import unpack

    parent = unpack(payload)
    problems = continuation_problems(config, parent.config, architecture)
    if problems:
        raise ContinuationRefused(problems)
    allowed = set(LoraConfig.__dataclass_fields__) - {"peft_type"}
    fields = {key: value for key, value in parent.config.items() if key in allowed}
    # Built as the payload's own adapter; the init only draws factors the payload replaces,
    # and a base-shifting one never appears here (continuation_problems refuses it).
    fields.update(inference_mode=False, lora_dropout=config.dropout, base_model_name_or_path=None)
    model = get_peft_model(base_model, LoraConfig(**fields))
    expected = get_peft_model_state_dict(model)
    for key, tensor in parent.tensors.items():
        if key not in expected:
            raise ValueError(f"the payload has {key}, which this base has no place for")
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"the payload's {key} is {list(tensor.shape)}, this base's is {list(expected[key].shape)}: "
                "was it trained on another base?"
            )
    missing = sorted(set(expected) - set(parent.tensors))
    if missing:
        raise ValueError(f"the payload has no {missing[0]}")
    set_peft_model_state_dict(model, parent.tensors)
    return model


@contextmanager
def checkpointing(model, on: bool) -> Iterator[None]:
    """Gradient checkpointing of the decoder layers for the block, if `on`. Non-reentrant,
    so frozen embeddings (no input that requires grad) still give the LoRA factors their
    gradients."""
    if not on:
        yield
        return
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        model.activation_checkpointing_disable()


def pad_token_id(tokenizer) -> int:
    """The id training pads with (never labelled or attended): the pad token, else EOS."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return 0


def peft_config_dict(config) -> dict:
    """PEFT's config as plain JSON (sets become sorted lists), in inference mode."""
    raw = config.to_dict()
    clean = {}
    for key, value in raw.items():
        if isinstance(value, set):
            value = sorted(value)
        clean[key] = value
    clean["inference_mode"] = True
    clean["base_model_name_or_path"] = None
    return clean


def shuffled_batches(rows: Sequence, size: int, order: random.Random) -> Iterator[list]:
    """Endless batches of `size`, each epoch in a fresh seeded order."""
    queue: list[int] = []
    while True:
        batch = []
        while len(batch) < size:
            if not queue:
                queue = list(range(len(rows)))
                order.shuffle(queue)
            batch.append(rows[queue.pop()])
        yield batch


def length_bucketed_batches(
    rows: Sequence, size: int, order: random.Random, pool: int = 16
) -> Iterator[list]:
    """Endless seeded batches of rows of similar length: `pool` batches' worth of rows
    are drawn in shuffled order, sorted by length, cut into batches and yielded in
    shuffled order. Padding to the longest row then wastes little, which halves the
    cost of a pretraining step on a corpus whose lengths vary twofold."""
    stream = shuffled_batches(rows, size * pool, order)
    while True:
        drawn = sorted(next(stream), key=lambda row: len(row[0]))
        batches = [drawn[i : i + size] for i in range(0, len(drawn), size)]
        order.shuffle(batches)
        yield from batches


def collate(batch, pad_id: int, device):
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        attention[row, : len(ids)] = 1
    return input_ids.to(device), labels.to(device), attention.to(device)
