"""A micro base model built from a config in well under a second, offline.

It is a real transformers Llama causal LM (2 layers, hidden size 64) with a
byte-level tokenizer that needs no download, saved as a local HF folder. Tests
use it, and the demo uses it until the default base family exists. The same
seed gives the same bytes, hence the same digest.
"""

from __future__ import annotations

import os
from pathlib import Path

from workers.engine.base_models import save_model_folder
from workers.engine.prompting import CHAT_TEMPLATE, END, PAD, SPECIAL_TOKENS

MICRO_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=1024,
)


def build_byte_tokenizer():
    """A byte-level tokenizer: 256 byte symbols plus MinT's chat specials.

    Every string round-trips, so the base can read any person's data without a
    learned vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=END, pad_token=PAD, model_max_length=1024
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[2:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


# The shape of one Llama-2-7B decoder layer (hidden 4096, MLP 11008, 32 heads), two layers
# deep, with the byte tokenizer's small vocabulary: a base on which a decode step's bytes
# are what a 7B model's layers read, for the serving benchmark (`--base llama-7b-layer`).
# Random weights: throughput does not depend on what was learned. 405 M parameters, 1.6 GB.
LLAMA_7B_LAYER_CONFIG = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=2,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=1024,
)
SHAPED = {"llama-7b-layer": LLAMA_7B_LAYER_CONFIG}


def build_micro_base(dest: str | os.PathLike, *, seed: int = 0, shape: dict = MICRO_CONFIG) -> Path:
    """Build the micro base (or another `shape` of it: SHAPED) into `dest` (replaced
    atomically) and return its path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **shape,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id

    return save_model_folder(model, tokenizer, dest)
