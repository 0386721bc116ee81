"""The default base family: small Llama causal LMs pretrained here, offline, reproducibly.

No weights can be downloaded, so MinT builds its own foundation models: the
same byte-level tokenizer and chat format as the micro base, three sizes
roughly an order of magnitude apart in parameters, pretrained on the general
corpus of `persona_world` (general skills plus in-context persona dialogues,
so a base knows what personal questions mean before any adapter exists).
Same spec and seed give the same weight bytes, hence the same digest.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from workers.engine.base_models import save_model_folder
from workers.engine.examples import Example, Message
from workers.engine.persona_world import generate_world, jsonl
from workers.engine.prompting import encode_for_training
from workers.engine.training import collate, length_bucketed_batches

ProgressCallback = Callable[[int, int, float], None]


@dataclass(frozen=True, slots=True)
class BaseSpec:
    """Architecture and pretraining recipe of one family member."""

    name: str
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    steps: int
    batch_size: int = 32
    learning_rate: float = 3e-3
    corpus_rows: int = 20_000
    max_length: int = 192
    vocab_size: int = 1024  # byte-level BPE learned on the corpus: ~3x fewer tokens than bytes
    seed: int = 0
    # Bumped whenever the corpus generator or the pretraining loop changes what a spec
    # builds, so a cached folder from older code is not taken for this one.
    recipe: int = 2

    def fingerprint(self) -> str:
        """Identifies what a build of this spec produces (the cache key)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


FAMILY = {
    "mint-s": BaseSpec("mint-s", hidden_size=128, layers=4, heads=4, intermediate_size=384, steps=1500),
    "mint-m": BaseSpec("mint-m", hidden_size=320, layers=6, heads=5, intermediate_size=960, steps=2000),
    "mint-l": BaseSpec("mint-l", hidden_size=768, layers=8, heads=12, intermediate_size=2048, steps=6000),
}
SMALLEST = "mint-s"
# A sample of the pretraining corpus shipped beside the weights, for adapters
# that train with replay (see TrainingConfig.replay).
REPLAY_FILE = "replay.jsonl"
REPLAY_ROWS = 2000


def build_base(
    spec: BaseSpec,
    dest: str | os.PathLike,
    *,
    corpus: list[dict] | None = None,
    on_step: ProgressCallback | None = None,
    device: str = "cpu",
) -> Path:
    """Pretrain `spec` from scratch and save it as a HF folder at `dest` (replaced atomically).

    The digest is reproducible for one device kind and thread count; CPU is the
    default so that every machine here builds the same bytes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dest = Path(dest)
    rows = corpus if corpus is not None else default_corpus(spec)
    tokenizer = build_bpe_tokenizer(rows, spec.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config).to(device)
        encoded = [encode_for_training(tokenizer, _example(row), spec.max_length) for row in rows]
        _pretrain(model, tokenizer, encoded, spec, on_step, device)
    finally:
        torch.random.set_rng_state(rng_state)
    model.to("cpu").eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id

    marker = json.dumps({"spec": asdict(spec), "fingerprint": spec.fingerprint()}, indent=2, sort_keys=True)
    replay = random.Random(spec.seed).sample(rows, min(REPLAY_ROWS, len(rows)))
    return save_model_folder(
        model, tokenizer, dest, extra={"mint_base.json": marker, REPLAY_FILE: jsonl(replay).decode()}
    )


def is_built(spec: BaseSpec, dest: str | os.PathLike) -> bool:
    marker = Path(dest) / "mint_base.json"
    try:
        return json.loads(marker.read_text())["fingerprint"] == spec.fingerprint()
    except (OSError, ValueError, KeyError):
        return False


def build_bpe_tokenizer(rows: list[dict], vocab_size: int):
    """A byte-level BPE learned on the corpus, with MinT's chat specials.

    Byte-level, so any text still encodes; merges make common words one token,
    which shortens sequences (training and generation cost) about threefold."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from workers.engine.prompting import CHAT_TEMPLATE, END, PAD, SPECIAL_TOKENS, render_turn

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = ("".join(render_turn(_message(m)) for m in row["messages"]) for row in rows)
    core.train_from_iterator(texts, trainer=trainer, length=len(rows))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=END, pad_token=PAD, model_max_length=1024
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[2:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _message(raw: dict) -> Message:
    return Message(raw["role"], raw["content"])


def replay_examples(folder: str | os.PathLike) -> list[Example]:
    """The base's replay rows: a sample of its corpus for our own bases; for an imported
    base, its own answers to general requests, made on first need (self_replay.py); none
    for a folder that is neither."""
    from workers.engine.base_import import import_record
    from workers.engine.self_replay import ensure_self_replay

    path = Path(folder) / REPLAY_FILE
    if not path.exists() and import_record(folder):
        path = ensure_self_replay(folder)
    if not path.exists():
        return []
    return [_example(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def default_corpus(spec: BaseSpec) -> list[dict]:
    return generate_world(seed=spec.seed).general_corpus(spec.corpus_rows, seed=spec.seed)


def _example(row: dict) -> Example:
    return Example(tuple(_message(m) for m in row["messages"]))


def _pretrain(
    model, tokenizer, encoded, spec: BaseSpec, on_step: ProgressCallback | None, device: str
) -> None:
    import torch

    order = random.Random(spec.seed)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=spec.learning_rate, weight_decay=0.01, betas=(0.9, 0.98)
    )
    warmup = max(1, spec.steps // 20)

    def schedule(step: int) -> float:  # linear warm-up, cosine decay to 10 %
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, spec.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    batches = length_bucketed_batches(encoded, spec.batch_size, order)
    for step in range(1, spec.steps + 1):
        input_ids, labels, attention = collate(next(batches), tokenizer.pad_token_id, device)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step(step, spec.steps, float(loss.detach()))


class ConsoleProgress:
    """A progress bar on a terminal: step/total, loss, elapsed and ETA."""

    def __init__(self, label: str, write=print, every: float = 0.5, end: str = ""):
        self.label, self.write, self.every, self.end = label, write, every, end
        self.started = time.monotonic()
        self._last = 0.0

    def __call__(self, step: int, total: int, loss: float) -> None:
        now = time.monotonic()
        if step < total and now - self._last < self.every:
            return
        self._last = now
        elapsed = now - self.started
        eta = elapsed / step * (total - step)
        filled = int(30 * step / total)
        self.write(
            f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {step}/{total} "
            f"loss {loss:.3f} elapsed {elapsed:.0f}s eta {eta:.0f}s" + (self.end if step == total else ""),
        )
