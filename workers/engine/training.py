"""LoRA supervised fine-tuning of a personal adapter on its base.

Deterministic for a seed (same data, config and seed give the same payload
bytes on the same machine and thread count), loss masked to the answer tokens,
and cooperative: `on_step` is called after every optimiser step and may raise
to stop the run (cancellation).
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
) -> TrainResult:
    """Train a LoRA adapter on a freshly loaded `base_model` (it is modified in place).

    With `config.replay` > 0, that share of every batch comes from `replay`
    (general rows from the base's pretraining corpus)."""
    import torch
    from peft import get_peft_model, get_peft_model_state_dict

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
    torch.manual_seed(config.seed)
    order = random.Random(config.seed)
    device = next(base_model.parameters()).device

    model = get_peft_model(base_model, config.lora_config(architecture_of(base_model.config)))
    apply_init_(model, config.init)
    trainable_names = [name for name, p in model.named_parameters() if p.requires_grad]
    trainable_by_mistake = [name for name in trainable_names if ".lora_" not in name]
    if trainable_by_mistake:  # embeddings / head (tied on real bases) must stay the shared base's
        raise ValueError(
            f"only LoRA factors may train; also trainable: {', '.join(trainable_by_mistake[:3])}"
        )
    # PiSSA, OLoRA and tail move part of the base into the adapter; the payload is stored
    # relative to the untouched base, so keep where the factors started.
    start = initial_factors(model) if config.init in BASE_SHIFTING_INITS else None
    model.train()
    encoded = [encode_for_training(tokenizer, ex, config.max_length) for ex in examples]
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
    pad_id = pad_token_id(tokenizer)
    with checkpointing(base_model, config.checkpoints(base_model.config)):
        for step in range(1, config.steps + 1):
            batch = next(batches) + (next(replayed) if replayed else [])
            input_ids, labels, attention = collate(batch, pad_id, device)
            loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
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
