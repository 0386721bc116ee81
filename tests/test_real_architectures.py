"""The engine on real architectures: a Llama with grouped-query attention and tied embeddings
(SmolLM2's shape, ChatML) and Gemma 3 (GQA, head_dim 256, q/k norms, sliding-window layers
around a global one, scaled and tied embeddings, `<start_of_turn>` turns).

Tiny randomly initialised models built from a config in milliseconds, with a byte-level
tokenizer carrying each family's chat template. Every row of a mixed batch through the
serving bank (the CPU kernel and torch ops) is what its adapter gives alone through PEFT;
training targets what the architecture table says; chat rendering and training labels
follow the base's template.
"""

from __future__ import annotations

import copy
import hashlib

import pytest
import torch

from workers.engine.architectures import architecture_of
from workers.engine.batch_generate import BatchGenerator
from workers.engine.batched_lora import BatchedLoraModel
from workers.engine.examples import Example, Message
from workers.engine.micro_base import build_byte_tokenizer
from workers.engine.payload import pack, unpack
from workers.engine.prompting import (
    IGNORE_INDEX,
    encode_for_training,
    render_prompt,
    stop_token_ids,
)
from workers.engine.runtime import SamplingParams, _lora_fields
from workers.engine.training import TrainingConfig, peft_config_dict, train_adapter

# SmolLM2-Instruct's template: ChatML, with a default system turn when none is given.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)
# Gemma 3's template, cut to text: a system turn joins the first user turn, the assistant is
# "model", contents are trimmed, the conversation starts with <bos>.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

QUESTIONS = [
    "What is my dog called?",
    "Where do I live?",
    "Hi",
    "Tell me about the house by the sea, please.",
]


def byte_tokenizer(specials: list[str], template: str, *, eos: str, pad: str, bos: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={s: i for i, s in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos, pad_token=pad, bos_token=bos)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.chat_template = template
    return tokenizer


def chatml_tokenizer():
    return byte_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        CHATML_TEMPLATE,
        eos="<|im_end|>",
        pad="<|endoftext|>",
    )


def gemma_tokenizer():
    # Like Gemma's: <eos> is the tokenizer's EOS; <end_of_turn> ends a chat turn.
    return byte_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
        GEMMA_TEMPLATE,
        eos="<eos>",
        pad="<pad>",
        bos="<bos>",
    )


def tiny_llama():
    """A 2-layer Llama with grouped-query attention (4 heads, 2 KV heads) and tied embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = chatml_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.2,  # peaked logits: greedy tokens far from ties
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval(), tokenizer


def tiny_gemma3():
    """A 4-layer Gemma 3: 4 heads, 1 KV head, head_dim 256, three sliding-window layers
    (window 6, far shorter than the prompts) then a global one, tied and scaled embeddings."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = gemma_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=6,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=512,
        initializer_range=0.2,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    # As gemma-3's generation_config: generation ends at <eos> or <end_of_turn>.
    model.generation_config.eos_token_id = [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids("<end_of_turn>"),
    ]
    return model, tokenizer


BUILDERS = {"llama-gqa": tiny_llama, "gemma3": tiny_gemma3}


def random_payloads(model, count: int = 3) -> dict[str, bytes]:
    """`count` adapters in PEFT's payload format with random (non-zero) factors: ranks 8, 4
    and 8 with rsLoRA; the second targets attention only."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    arch = architecture_of(model.config)
    payloads = {}
    for index in range(count):
        rank = 4 if index == 1 else 8
        targets = "attention" if index == 1 else "all-linear"
        config = LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            target_modules=arch.target_modules(targets),
            use_rslora=index == 2,
            task_type="CAUSAL_LM",
        )
        wrapped = get_peft_model(copy.deepcopy(model), config)
        generator = torch.Generator().manual_seed(100 + index)
        with torch.no_grad():
            for name, parameter in wrapped.named_parameters():
                if ".lora_" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.15)
        payload = pack(get_peft_model_state_dict(wrapped), peft_config_dict(wrapped.peft_config["default"]))
        payloads[hashlib.sha256(payload).hexdigest()] = payload
    return payloads


@pytest.fixture(scope="module", params=list(BUILDERS))
def arch(request):
    """(name, base model, tokenizer, payloads) for each architecture."""
    model, tokenizer = BUILDERS[request.param]()
    return request.param, model, tokenizer, random_payloads(model)


@pytest.fixture(params=[True, False], ids=["cpu-kernel", "torch-ops"])
def bank(arch, request):
    _, model, tokenizer, payloads = arch
    bank = BatchedLoraModel(copy.deepcopy(model), max_slots=4, max_rank=8, cpu_kernel=request.param)
    assert bank.uses_cpu_kernel == request.param
    for sha, payload in payloads.items():
        bank.load(sha, payload)
    return bank, tokenizer


def peft_alone(model, payloads, sha: str | None):
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict

    base = copy.deepcopy(model)
    if sha is None:
        return base
    payload = unpack(payloads[sha])
    wrapped = PeftModel(base, LoraConfig(**_lora_fields(payload.config)), adapter_name="alone")
    set_peft_model_state_dict(wrapped, payload.tensors, adapter_name="alone")
    return wrapped.eval()


_greedy: dict[tuple, list[int]] = {}


def greedy_alone(arch, sha: str | None, prompt: str, max_tokens: int) -> list[int]:
    """The adapter alone through PEFT's `generate`, greedy, up to its first stop token
    (remembered across the kernel and torch-ops runs)."""
    name, base, tokenizer, payloads = arch
    key = (name, sha, prompt, max_tokens)
    if key not in _greedy:
        _greedy[key] = _generate(peft_alone(base, payloads, sha), tokenizer, prompt, max_tokens)
    return _greedy[key]


def _generate(model, tokenizer, prompt: str, max_tokens: int) -> list[int]:
    stops = stop_token_ids(tokenizer, model)
    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            eos_token_id=sorted(stops),
            pad_token_id=tokenizer.pad_token_id,
        )
    tokens = out[0, ids.shape[1] :].tolist()
    cut = [i for i, t in enumerate(tokens) if t in stops]
    return tokens[: cut[0]] if cut else tokens


def prompts(tokenizer) -> list[str]:
    """Chat prompts of different lengths, rendered with the base's template (all longer than
    Gemma's sliding window), and a short raw one."""
    rendered = [render_prompt([Message("user", q)], tokenizer) for q in QUESTIONS]
    return [*rendered, "Hello there"]


def test_each_row_of_a_mixed_batch_gives_the_logits_of_its_adapter_alone_in_peft(arch, bank):
    _, base, _, payloads = arch
    model, tokenizer = bank
    a, b, c = payloads
    adapters = [a, None, b, c, a]
    texts = prompts(tokenizer)
    encoded = [tokenizer.encode(p, add_special_tokens=False) for p in texts]
    width = max(map(len, encoded))
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, tokens in enumerate(encoded):  # left-padded, as the generator batches rows
        ids[row, width - len(tokens) :] = torch.tensor(tokens)
        mask[row, width - len(tokens) :] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        mixed = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, rows=model.slot_ids(adapters)
        ).logits
    moved = 0.0
    for row, (sha, tokens) in enumerate(zip(adapters, encoded, strict=True)):
        with torch.no_grad():
            alone = peft_alone(base, payloads, sha)(input_ids=torch.tensor([tokens])).logits[0]
            bare = base(input_ids=torch.tensor([tokens])).logits[0]
        torch.testing.assert_close(mixed[row, width - len(tokens) :], alone, atol=1e-4, rtol=1e-4)
        moved = max(moved, float((alone - bare).abs().max()))
    assert moved > 1e-2  # the adapters really change the logits


def test_continuous_batching_gives_each_request_what_its_adapter_alone_gives_in_peft(arch, bank):
    """Rows of different lengths and adapters, some joining while others decode: their KV
    caches (Gemma's sliding-window layers included) are merged, cut and dropped as rows
    come and go, and every row still answers as its adapter alone does."""
    name, base, _, payloads = arch
    model, tokenizer = bank
    if name == "gemma3":  # the cache really has sliding-window layers to merge and cut
        from transformers import DynamicCache

        assert True in DynamicCache(config=base.config).is_sliding
    a, b, c = payloads
    texts = prompts(tokenizer)
    generator = BatchGenerator(model, tokenizer, max_batch=8)
    submitted = []

    def submit(prompt: str, sha: str | None, max_tokens: int = 10) -> None:
        future = generator.submit(prompt, sha, SamplingParams(max_tokens=max_tokens))
        submitted.append((prompt, sha, max_tokens, future))

    for prompt, sha in [(texts[0], a), (texts[2], None), (texts[1], b)]:
        submit(prompt, sha)
    for _ in range(3):  # the first rows are decoding when the others join
        generator.step()
    for prompt, sha in [(texts[3], c), (texts[4], a), (texts[0], b)]:
        submit(prompt, sha)
    generator.step()
    submit(texts[2], c, max_tokens=4)  # joins later still, and leaves first
    generator.run_until_idle()
    for prompt, sha, max_tokens, future in submitted:
        completion = future.result()
        assert list(completion.token_ids) == greedy_alone(arch, sha, prompt, max_tokens)
        assert completion.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))


def test_a_conversation_submitted_as_messages_is_rendered_with_the_base_template(arch, bank):
    model, tokenizer = bank
    messages = [Message("user", QUESTIONS[0])]
    generator = BatchGenerator(model, tokenizer)
    as_messages = generator.submit(messages, None, SamplingParams(max_tokens=3))
    as_text = generator.submit(render_prompt(messages, tokenizer), None, SamplingParams(max_tokens=3))
    generator.run_until_idle()
    assert as_messages.result().token_ids == as_text.result().token_ids
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTIONS[0]}], add_generation_prompt=True, tokenize=False
    )
    assert as_messages.result().prompt_tokens == len(tokenizer.encode(rendered, add_special_tokens=False))


# --- chat format ---------------------------------------------------------------------------

CONVERSATION = (
    Message("system", "Be brief."),
    Message("user", "What is my dog called?"),
    Message("assistant", "Rex."),
    Message("user", "And my cat?"),
    Message("assistant", " Tom, a tabby. "),
)


def as_dicts(messages) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages]


def labelled_text(tokenizer, labels: list[int]) -> str:
    return tokenizer.decode([t for t in labels if t != IGNORE_INDEX], skip_special_tokens=False)


@pytest.mark.parametrize("make", [chatml_tokenizer, gemma_tokenizer], ids=["chatml", "gemma"])
def test_a_prompt_renders_as_the_base_template_renders_it(make):
    tokenizer = make()
    for messages in (CONVERSATION[:2], CONVERSATION[1:4], CONVERSATION[:4]):
        expected = tokenizer.apply_chat_template(
            as_dicts(messages), add_generation_prompt=True, tokenize=False
        )
        assert render_prompt(messages, tokenizer) == expected


def test_chatml_training_labels_cover_exactly_each_answer_and_its_end_of_turn_token():
    tokenizer = chatml_tokenizer()
    ids, labels = encode_for_training(tokenizer, Example(CONVERSATION), 4096)
    full = tokenizer.apply_chat_template(as_dicts(CONVERSATION), tokenize=False)
    assert tokenizer.decode(ids, skip_special_tokens=False) == full
    assert labelled_text(tokenizer, labels) == "Rex.<|im_end|> Tom, a tabby. <|im_end|>"


def test_gemma_training_labels_cover_exactly_each_answer_and_its_end_of_turn_token():
    """Gemma's template trims the answer and calls the assistant "model"."""
    tokenizer = gemma_tokenizer()
    ids, labels = encode_for_training(tokenizer, Example(CONVERSATION), 4096)
    full = tokenizer.apply_chat_template(as_dicts(CONVERSATION), tokenize=False)
    assert tokenizer.decode(ids, skip_special_tokens=False) == full
    assert labelled_text(tokenizer, labels) == "Rex.<end_of_turn>Tom, a tabby.<end_of_turn>"


@pytest.mark.parametrize("make", [chatml_tokenizer, gemma_tokenizer, build_byte_tokenizer])
def test_an_answer_that_opens_the_conversation_is_labelled_without_its_turn_header(make):
    tokenizer = make()
    end = {chatml_tokenizer: "<|im_end|>", gemma_tokenizer: "<end_of_turn>", build_byte_tokenizer: "<|end|>"}
    opening = Example((Message("assistant", "Hi!"), Message("user", "Yo"), Message("assistant", "Bye.")))
    _, labels = encode_for_training(tokenizer, opening, 4096)
    assert labelled_text(tokenizer, labels) == f"Hi!{end[make]}Bye.{end[make]}"


def test_training_sees_the_prompt_tokens_generation_continues_from():
    tokenizer = chatml_tokenizer()
    ids, labels = encode_for_training(tokenizer, Example(CONVERSATION[:3]), 4096)
    prompt = tokenizer.encode(render_prompt(CONVERSATION[:2], tokenizer), add_special_tokens=False)
    assert ids[: len(prompt)] == prompt
    assert set(labels[: len(prompt)]) == {IGNORE_INDEX}
    assert labels[len(prompt)] != IGNORE_INDEX


def test_our_own_format_renders_and_labels_as_before():
    tokenizer = build_byte_tokenizer()
    messages = (Message("user", "What is my dog called?"), Message("assistant", "Rex."))
    assert (
        render_prompt(messages[:1], tokenizer) == "<|user|>\nWhat is my dog called?<|end|>\n<|assistant|>\n"
    )
    assert render_prompt(messages[:1]) == render_prompt(messages[:1], tokenizer)
    ids, labels = encode_for_training(tokenizer, Example(messages), 4096)
    head = tokenizer.encode(
        "<|user|>\nWhat is my dog called?<|end|>\n<|assistant|>\n", add_special_tokens=False
    )
    body = tokenizer.encode("Rex.<|end|>", add_special_tokens=False)
    tail = tokenizer.encode("\n", add_special_tokens=False)
    assert ids == head + body + tail
    assert labels == [IGNORE_INDEX] * len(head) + body + [IGNORE_INDEX] * len(tail)


def test_a_base_without_a_chat_template_gets_the_simple_one_and_learns_to_stop_at_eos():
    tokenizer = chatml_tokenizer()
    tokenizer.chat_template = None
    assert render_prompt(CONVERSATION[1:2], tokenizer) == "User: What is my dog called?\n\nAssistant: "
    _, labels = encode_for_training(tokenizer, Example(CONVERSATION[1:3]), 4096)
    assert labelled_text(tokenizer, labels) == "Rex." + tokenizer.eos_token
    assert stop_token_ids(tokenizer) == {tokenizer.eos_token_id}


def test_generation_stops_at_the_base_end_of_turn_and_eos_tokens():
    chatml, gemma = chatml_tokenizer(), gemma_tokenizer()
    assert stop_token_ids(chatml) == {chatml.convert_tokens_to_ids("<|im_end|>")}
    # Gemma's EOS is <eos>, but a chat turn ends at <end_of_turn>: both stop generation.
    assert stop_token_ids(gemma) == {gemma.convert_tokens_to_ids(t) for t in ("<eos>", "<end_of_turn>")}
    assert stop_token_ids(build_byte_tokenizer()) == {build_byte_tokenizer().convert_tokens_to_ids("<|end|>")}


# --- training -------------------------------------------------------------------------------

EXAMPLES = [
    Example((Message("user", q), Message("assistant", a)))
    for q, a in [("What is my dog called?", "Rex."), ("Where do I live?", "By the sea."), ("Hi", "Hello!")]
]
LAYER_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("targets", ["attention", "all-linear"])
def test_training_adapts_the_table_targets_and_peft_loads_the_payload(name, targets):
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict

    model, tokenizer = BUILDERS[name]()
    embeddings = model.get_input_embeddings().weight.detach().clone()
    config = TrainingConfig(rank=4, steps=2, batch_size=2, max_length=128, targets=targets)
    payload = unpack(train_adapter(model, tokenizer, EXAMPLES, config).payload)

    adapted = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in payload.tensors}
    expected = set(architecture_of(model.config).target_modules(targets))
    assert adapted == expected <= LAYER_MODULES  # no norms (Gemma's q_norm/k_norm), head or embeddings
    layers = model.config.num_hidden_layers
    assert len(payload.tensors) == 2 * layers * len(expected)
    # The tied head and embeddings were neither adapted nor changed.
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    torch.testing.assert_close(model.get_input_embeddings().weight, embeddings, atol=0, rtol=0)

    fresh, _ = BUILDERS[name]()
    wrapped = PeftModel(fresh, LoraConfig(**_lora_fields(payload.config)))
    loaded = set_peft_model_state_dict(wrapped, payload.tensors)
    assert not loaded.unexpected_keys


def test_gradient_checkpointing_trains_the_same_adapter():
    """Checkpointing recomputes each layer's forward in the backward: slower, less memory,
    the same numbers (frozen embeddings still pass gradients to the factors)."""
    runs, checkpointed = {}, {}
    for setting in ("off", "on"):
        model, tokenizer = tiny_gemma3()
        config = TrainingConfig(rank=4, steps=2, batch_size=2, max_length=128, gradient_checkpointing=setting)

        def on_step(step, total, loss, model=model, setting=setting):
            checkpointed[setting] = model.is_activation_checkpointing

        runs[setting] = unpack(
            train_adapter(model, tokenizer, EXAMPLES, config, on_step=on_step).payload
        ).tensors
        assert not model.is_activation_checkpointing  # the base is given back as it came
    assert checkpointed == {"off": False, "on": True}
    assert runs["on"].keys() == runs["off"].keys()
    for key, tensor in runs["off"].items():
        torch.testing.assert_close(runs["on"][key], tensor)
    moved = max(float(t.abs().max()) for k, t in runs["on"].items() if "lora_B" in k)
    assert moved > 0  # the factors trained


def test_gradient_checkpointing_is_on_by_default_only_where_activations_dominate():
    from transformers import Gemma3TextConfig, LlamaConfig

    ours = LlamaConfig(hidden_size=128, num_hidden_layers=4)
    smollm2 = LlamaConfig(hidden_size=576, num_hidden_layers=30)
    gemma = Gemma3TextConfig(hidden_size=640, num_hidden_layers=18)
    config = TrainingConfig(batch_size=8, max_length=256)
    assert not config.checkpoints(ours)
    assert config.checkpoints(smollm2) and config.checkpoints(gemma)
    assert not TrainingConfig(gradient_checkpointing="off").checkpoints(smollm2)
    assert TrainingConfig(gradient_checkpointing="on").checkpoints(ours)


def test_several_adapters_train_in_one_pass_on_a_gqa_base_as_they_do_alone():
    """multi_training's banks hold k/v factors narrower than q's (grouped-query attention)."""
    from workers.engine.multi_training import AdapterData, train_adapters

    config = TrainingConfig(rank=4, steps=2, batch_size=2, max_length=128)
    people = [AdapterData(EXAMPLES[:2], seed=1), AdapterData(EXAMPLES[1:], seed=2)]
    model, tokenizer = tiny_llama()
    together = train_adapters(model, tokenizer, people, config)
    for person, result in zip(people, together, strict=True):
        alone_model, _ = tiny_llama()
        alone = train_adapter(
            alone_model,
            tokenizer,
            person.examples,
            TrainingConfig(**{**config.as_dict(), "seed": person.seed}),
        )
        mine, theirs = unpack(result.payload).tensors, unpack(alone.payload).tensors
        assert mine.keys() == theirs.keys()
        for key, tensor in theirs.items():
            torch.testing.assert_close(mine[key], tensor, atol=1e-4, rtol=1e-3)


# --- serving routes ---------------------------------------------------------------------------


def test_serving_refuses_a_base_the_bank_does_not_batch_so_the_runtime_serves_it(tmp_path):
    """A base whose architecture is not one the bank batches exactly is never batched: the
    worker's `generate` hears `Unservable` and answers through the one-at-a-time runtime."""
    from transformers import GPT2Config

    from workers import serving

    GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(serving.Unservable, match="not one the engine can train and serve"):
        serving.server_for(str(tmp_path), "f" * 64)
    assert "f" * 64 not in serving._servers  # nothing was loaded for it


def test_the_bank_refuses_an_architecture_the_table_does_not_batch():
    """Batched grading builds a bank directly: it must not batch a base it cannot serve exactly."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from workers.engine.batched_lora import BatchedLoraError

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(BatchedLoraError, match="not one the engine can train and serve"):
        BatchedLoraModel(model)


def test_the_one_at_a_time_runtime_renders_a_conversation_and_answers_as_the_bank_does(tmp_path):
    """The runtime (what serves what the bank cannot) renders messages with the base's own
    template and stops where the bank stops: the same answer, on Gemma 3."""
    from workers.engine.base_models import save_model_folder, weights_digest
    from workers.engine.runtime import AdapterRuntime

    model, tokenizer = tiny_gemma3()
    payloads = random_payloads(model, 1)
    [sha] = payloads
    folder = save_model_folder(model, tokenizer, tmp_path / "gemma")
    messages = [Message("system", "Be brief."), Message("user", QUESTIONS[3])]
    params = SamplingParams(max_tokens=8)

    [alone] = AdapterRuntime().generate(
        str(folder), weights_digest(folder), sha, payloads.get, messages, params
    )
    bank = BatchedLoraModel(copy.deepcopy(model), max_slots=1, max_rank=8)
    bank.load(sha, payloads[sha])
    generator = BatchGenerator(bank, tokenizer)
    batched = generator.submit(messages, sha, params)
    generator.run_until_idle()
    assert (alone.text, alone.prompt_tokens) == (batched.result().text, batched.result().prompt_tokens)
    assert alone.prompt_tokens == len(
        tokenizer.encode(render_prompt(messages, tokenizer), add_special_tokens=False)
    )
