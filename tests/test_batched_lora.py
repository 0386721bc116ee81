"""Heterogeneous batching: every row of a mixed batch is what its adapter gives alone in PEFT.

Real payloads trained on the micro base (ranks 8 and 4, all-linear, different seeds, one
with rsLoRA scaling); the reference is PEFT's own LoRA layers, loaded as the runtime does.
"""

from __future__ import annotations

import hashlib
import threading

import pytest
import torch

from tests.conftest import FACTS
from workers.engine.base_models import load_base, weights_digest
from workers.engine.batch_generate import BatchGenerator
from workers.engine.batched_lora import BatchedLoraError, BatchedLoraModel, UnsupportedAdapter
from workers.engine.examples import parse_jsonl
from workers.engine.micro_base import build_micro_base
from workers.engine.payload import pack, unpack
from workers.engine.runtime import SamplingParams, _lora_fields
from workers.engine.training import TrainingConfig, train_adapter

PROMPTS = [
    "<|user|>\nWhat is my dog called?<|end|>\n<|assistant|>\n",
    "Hello",
    "<|user|>\nWhere do I live?<|end|>\n<|assistant|>\n",
    "The quick brown fox jumps",
    "a",
    "<|user|>\nWhat's my dog's name?<|end|>\n<|assistant|>\n",
]


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> tuple[str, str]:
    """The micro base's folder and digest (built here: these tests need no database)."""
    folder = build_micro_base(tmp_path_factory.mktemp("bases") / "mint-micro")
    return str(folder), weights_digest(folder)


@pytest.fixture(scope="module")
def payloads(micro) -> dict[str, bytes]:
    """Three real adapters: rank 8, rank 4, and rank 8 served with rsLoRA scaling."""
    examples = parse_jsonl(FACTS).examples
    trained = []
    for seed, rank in [(0, 8), (1, 4), (2, 8)]:
        base = load_base(*micro)
        config = TrainingConfig(rank=rank, seed=seed, steps=4, learning_rate=2e-2, batch_size=3)
        trained.append(train_adapter(base.model, base.tokenizer, examples, config).payload)
    rslora = unpack(trained[2])
    trained[2] = pack(rslora.tensors, {**rslora.config, "use_rslora": True})
    return {hashlib.sha256(p).hexdigest(): p for p in trained}


@pytest.fixture(
    params=[(8, True), (32, True), (8, False)], ids=["bank-rank-8", "bank-rank-32", "bank-rank-8-torch-ops"]
)
def bank(micro, payloads, request):
    """A fresh micro base with every adapter loaded into its bank, and its tokenizer. A bank
    wider than the adapters' ranks gives the same results (only the rows' ranks are used).
    The first two serve through the compiled CPU kernel, the last through torch ops alone."""
    base = load_base(*micro)
    max_rank, cpu_kernel = request.param
    model = BatchedLoraModel(base.model, max_slots=4, max_rank=max_rank, cpu_kernel=cpu_kernel)
    # The kernel is built here (a C++ compiler is part of the set-up): a build that quietly
    # fell back to torch ops would leave the kernel untested.
    assert model.uses_cpu_kernel == cpu_kernel
    for sha, payload in payloads.items():
        model.load(sha, payload)
    return model, base.tokenizer


def peft_alone(micro, payloads, sha: str | None):
    """The base alone (sha None) or the base with one adapter through PEFT, as runtime.py loads it."""
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict

    base = load_base(*micro)
    if sha is None:
        return base.model
    payload = unpack(payloads[sha])
    model = PeftModel(base.model, LoraConfig(**_lora_fields(payload.config)), adapter_name="alone")
    set_peft_model_state_dict(model, payload.tensors, adapter_name="alone")
    return model.eval()


def greedy_alone(model, tokenizer, prompt: str, max_tokens: int) -> list[int]:
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
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    tokens = out[0, ids.shape[1] :].tolist()
    return tokens[: tokens.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in tokens else tokens


def mixed_rows(payloads) -> list[str | None]:
    """Different adapters, a repeated one, and bare-base rows, interleaved."""
    a, b, c = payloads
    return [a, None, b, a, c, None]


def test_each_row_of_a_mixed_batch_gives_the_logits_of_its_adapter_alone_in_peft(micro, payloads, bank):
    model, tokenizer = bank
    adapters = mixed_rows(payloads)
    encoded = [tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
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
    bare = None
    for row, (sha, tokens) in enumerate(zip(adapters, encoded, strict=True)):
        with torch.no_grad():
            alone = peft_alone(micro, payloads, sha)(input_ids=torch.tensor([tokens])).logits[0]
        torch.testing.assert_close(mixed[row, width - len(tokens) :], alone, atol=1e-4, rtol=1e-4)
        if sha is None and bare is None:
            bare = (row, alone)
    # The adapters really move the logits: rows agree with PEFT, not merely with the base.
    bare_row, bare_logits = bare
    same_prompt_adapted = peft_alone(micro, payloads, adapters[0])
    with torch.no_grad():
        adapted = same_prompt_adapted(input_ids=torch.tensor([encoded[bare_row]])).logits[0]
    assert (adapted - bare_logits).abs().max() > 1e-2


def test_a_bank_layer_adapts_rows_of_2d_and_3d_inputs_alike(bank, payloads):
    model, _ = bank
    layer = model.modules["model.layers.0.self_attn.q_proj"]
    model.set_rows(model.slot_ids(mixed_rows(payloads)))
    x = torch.randn(6, layer.in_features)
    with torch.no_grad():
        flat, seq = layer(x), layer(x.unsqueeze(1))[:, 0]
        by_hand = torch.stack(
            [
                layer.base(x[i]) + layer.scaling[s] * (x[i] @ layer.lora_a[s].T) @ layer.lora_b[s]
                for i, s in enumerate(model._rows.ids.tolist())
            ]
        )
    torch.testing.assert_close(flat, seq)
    torch.testing.assert_close(flat, by_hand, atol=1e-5, rtol=1e-5)


def test_each_row_of_a_mixed_batch_generates_the_greedy_tokens_of_its_adapter_alone(micro, payloads, bank):
    model, tokenizer = bank
    adapters = mixed_rows(payloads)
    generator = BatchGenerator(model, tokenizer, max_batch=8)
    params = SamplingParams(max_tokens=12)
    futures = [generator.submit(p, sha, params) for p, sha in zip(PROMPTS, adapters, strict=True)]
    generator.run_until_idle()
    for future, prompt, sha in zip(futures, PROMPTS, adapters, strict=True):
        result = future.result()
        expected = greedy_alone(peft_alone(micro, payloads, sha), tokenizer, prompt, 12)
        assert list(result.token_ids) == expected
        assert result.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))
        assert result.completion_tokens == len(expected)
        assert result.finish_reason == ("length" if len(expected) == 12 else "stop")
        assert result.adapter == sha


def test_requests_that_join_between_decode_steps_generate_as_if_alone(micro, payloads, bank):
    model, tokenizer = bank
    adapters = mixed_rows(payloads)
    generator = BatchGenerator(model, tokenizer, max_batch=4)
    first = [generator.submit(PROMPTS[i], adapters[i], SamplingParams(max_tokens=10)) for i in (0, 1)]
    generator.step()
    generator.step()
    assert generator.running == 2
    later = [generator.submit(PROMPTS[i], adapters[i], SamplingParams(max_tokens=6)) for i in (2, 3, 4, 5)]
    generator.step()
    assert generator.running == 4  # max_batch: two of the four wait for rows to finish
    generator.run_until_idle()
    for future, i, n in [
        (first[0], 0, 10),
        (first[1], 1, 10),
        *((f, i, 6) for f, i in zip(later, range(2, 6), strict=True)),
    ]:
        expected = greedy_alone(peft_alone(micro, payloads, adapters[i]), tokenizer, PROMPTS[i], n)
        assert list(future.result().token_ids) == expected


def test_stop_strings_and_max_tokens_finish_rows(bank):
    model, tokenizer = bank
    generator = BatchGenerator(model, tokenizer)
    free = generator.submit(PROMPTS[1], None, SamplingParams(max_tokens=8))
    generator.run_until_idle()
    full = free.result()
    assert full.finish_reason == "length" and full.completion_tokens == 8
    stop = full.text[3:5]
    pieces: list[str] = []
    stopped = generator.submit(
        PROMPTS[1], None, SamplingParams(max_tokens=8, stop=(stop,)), on_text=pieces.append
    )
    short = generator.submit(PROMPTS[1], None, SamplingParams(max_tokens=3))
    generator.run_until_idle()
    assert stopped.result().text == full.text[: full.text.index(stop)]
    assert stopped.result().finish_reason == "stop"
    assert stopped.result().completion_tokens < 8
    assert "".join(pieces) == stopped.result().text
    assert short.result().completion_tokens == 3 and short.result().finish_reason == "length"
    assert short.result().token_ids == full.token_ids[:3]


def test_a_seeded_sampled_row_does_not_depend_on_its_batch(bank, payloads):
    model, tokenizer = bank
    adapters = mixed_rows(payloads)
    params = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.9, seed=7)
    alone = BatchGenerator(model, tokenizer)
    solo = alone.submit(PROMPTS[0], adapters[0], params)
    alone.run_until_idle()
    crowd = BatchGenerator(model, tokenizer)
    others = [
        crowd.submit(p, sha, SamplingParams(max_tokens=10)) for p, sha in zip(PROMPTS, adapters, strict=True)
    ]
    crowded = crowd.submit(PROMPTS[0], adapters[0], params)
    crowd.run_until_idle()
    assert crowded.result().token_ids == solo.result().token_ids
    assert all(f.done() for f in others)


def test_slots_are_keyed_by_sha256_so_a_new_payload_never_reuses_a_stale_slot(micro, payloads):
    first, second, _ = payloads
    model = BatchedLoraModel(load_base(*micro).model, max_slots=1, max_rank=8)
    slot = model.load(first, payloads[first])
    assert model.load(first, payloads[first]) == slot  # the same revision keeps its slot
    assert model.slots == {first: slot}
    with pytest.raises(BatchedLoraError, match="slots are taken"):
        model.load(second, payloads[second])
    with pytest.raises(BatchedLoraError, match="hash"):
        model.load(second, payloads[first])  # bytes that are not that revision
    model.unload(first)
    assert model.load(second, payloads[second]) == slot
    assert model.slots == {second: slot}
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        served = model(input_ids=ids, rows=model.slot_ids([second])).logits
        reference = peft_alone(micro, payloads, second)(input_ids=ids).logits
    torch.testing.assert_close(served, reference, atol=1e-4, rtol=1e-4)
    with pytest.raises(KeyError, match="not loaded"):
        model.slot_ids([first])


def test_an_adapter_the_bank_cannot_serve_is_refused_clearly(micro, payloads):
    model = BatchedLoraModel(load_base(*micro).model, max_slots=2, max_rank=4)
    rank8, rank4, _ = payloads
    dora = unpack(payloads[rank4])
    dora_bytes = pack(dora.tensors, {**dora.config, "use_dora": True})
    with pytest.raises(UnsupportedAdapter, match="DoRA"):
        model.load(hashlib.sha256(dora_bytes).hexdigest(), dora_bytes)
    with pytest.raises(BatchedLoraError, match="rank 8"):
        model.load(rank8, payloads[rank8])
    with pytest.raises(UnsupportedAdapter, match="DoRA"):
        model.check(unpack(dora_bytes))  # the same refusal, asked before any load
    model.check(unpack(payloads[rank4]))  # servable: no error
    assert model.slots == {}  # nothing half-written


def test_a_serving_thread_answers_requests_submitted_from_other_threads(bank, payloads):
    model, tokenizer = bank
    generator = BatchGenerator(model, tokenizer, max_batch=4, max_wait=0.01)
    generator.serve_forever()
    try:
        results: list = []
        threads = [
            threading.Thread(
                target=lambda p=p, sha=sha: results.append(
                    generator.submit(p, sha, SamplingParams(max_tokens=4)).result(timeout=30)
                )
            )
            for p, sha in zip(PROMPTS, mixed_rows(payloads), strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        generator.stop(timeout=10)
    assert len(results) == len(PROMPTS)
    assert all(r.completion_tokens <= 4 for r in results)
