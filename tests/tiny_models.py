"""Tiny real causal LMs, and GGUF files of them, for tests that need a model from outside.

`tiny_llama()` (GQA: 4 heads, 2 KV heads) and `tiny_gemma3()` (GQA, head_dim 32, sliding
layers around a global one, tied embeddings) are randomly initialised transformers models
with a small byte-level BPE tokenizer that carries a ChatML chat template. `write_hf_folder`
saves one as a local HF folder; `write_gguf` writes it as a float32 GGUF the way llama.cpp's
converter does (q/k rows in llama.cpp's head order for Llama, Gemma's norms stored as
weight + 1), so transformers' GGUF loader reads back the same model. Everything is built
offline in well under a second.
"""

from __future__ import annotations

import os
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>")
# A few merges, so the vocabulary is a real BPE one and not only bytes.
MERGES = (("h", "e"), ("l", "l"), ("Ġ", "t"), ("Ġt", "he"), ("o", "u"))
SAMPLE = "<|im_start|>user\nHello there, tell me about the house.<|im_end|>\n"
LLAMA = "llama"
GEMMA3 = "gemma3"


def tiny_tokenizer():
    """Byte-level BPE: the 256 byte symbols, a few merges, ChatML specials and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = sorted(pre_tokenizers.ByteLevel.alphabet()) + ["".join(pair) for pair in MERGES]
    core = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=list(MERGES)))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=SPECIALS[1],
        eos_token=SPECIALS[2],
        pad_token=SPECIALS[0],
        unk_token=SPECIALS[3],
        model_max_length=256,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIALS)})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def tiny_llama(seed: int = 0):
    """(model, tokenizer): a 2-layer Llama with grouped-query attention, untied head."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        **_special_ids(tokenizer),
    )
    return _seeded(LlamaForCausalLM, config, seed), tokenizer


def tiny_gemma3(seed: int = 0):
    """(model, tokenizer): a 6-layer Gemma 3 text model, layers 0-4 sliding (window 4) and
    layer 5 global: the pattern llama.cpp and transformers assume for a Gemma 3 GGUF,
    which stores the window but not the pattern. Tied embeddings, 4 heads over 1 KV head."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = tiny_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=256,
        sliding_window=4,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        **_special_ids(tokenizer),
    )
    model = _seeded(Gemma3ForCausalLM, config, seed)
    # Fresh Gemma norms are zeros (the layer multiplies by 1 + weight); give them values so a
    # lost or doubled "+ 1" on the way through GGUF shows in the logits.
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model, tokenizer


def build(arch: str, seed: int = 0):
    return {LLAMA: tiny_llama, GEMMA3: tiny_gemma3}[arch](seed)


def tiny_folder(arch: str, dest: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny model of `arch` (LLAMA or GEMMA3) saved as a HF folder at `dest`."""
    return write_hf_folder(*build(arch, seed), dest)


def tiny_gguf(arch: str, path: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny model of `arch` (LLAMA or GEMMA3) written as a GGUF file at `path`."""
    return write_gguf(*build(arch, seed), path)


def write_hf_folder(model, tokenizer, dest: str | os.PathLike) -> Path:
    dest = Path(dest)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest


def write_gguf(model, tokenizer, path: str | os.PathLike, *, license: str = "apache-2.0") -> Path:
    """Write `model` as a float32 GGUF with its tokenizer, as llama.cpp's converter would."""
    import gguf
    import numpy as np

    config = model.config
    arch = {"llama": LLAMA, "gemma3_text": GEMMA3}[config.model_type]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"tiny {arch}")
    writer.add_license(license)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(config))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if arch == LLAMA:
        writer.add_rope_dimension_count(head_dim)
    else:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_sliding_window(config.sliding_window)
    writer.add_vocab_size(config.vocab_size)
    _add_tokenizer(writer, tokenizer)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if config.tie_word_embeddings and hf_name == "lm_head.weight":
            continue  # a tied head is the embedding; GGUF marks that by leaving output.weight out
        stem = hf_name.removesuffix(".weight")
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        data = tensor.detach().float().numpy().copy()
        if arch == LLAMA and stem.endswith("q_proj"):
            data = _llama_cpp_head_order(data, config.num_attention_heads)
        elif arch == LLAMA and stem.endswith("k_proj"):
            data = _llama_cpp_head_order(data, config.num_key_value_heads)
        elif arch == GEMMA3 and hf_name.endswith("norm.weight"):
            data = data + 1  # llama.cpp stores Gemma's norms as the factor they apply
        writer.add_tensor(f"{gguf_name}.weight", data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def _add_tokenizer(writer, tokenizer) -> None:
    import gguf

    vocab = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges([" ".join(pair) for pair in MERGES])
    writer.add_token_types(
        [gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL for token in tokens]
    )
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)


def _llama_cpp_head_order(w, n_head: int):
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_theta(config) -> float:
    parameters = getattr(config, "rope_parameters", None) or {}
    if "full_attention" in parameters:
        parameters = parameters["full_attention"]
    return float(parameters.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def _special_ids(tokenizer) -> dict:
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _seeded(model_class, config, seed: int):
    import torch

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        return model_class(config).eval()
    finally:
        torch.random.set_rng_state(state)


def logits(model, tokenizer, text: str = SAMPLE):
    import torch

    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits
