"""The engine on CUDA: train and serve on the GPU, and agree with PEFT on the CPU.

Skipped where there is no GPU (CI has none). It imports no Django, so on a GPU
host it runs alone: `python -m pytest tests/test_engine_cuda.py --noconftest -p no:django`.
"""

import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

FACTS = (
    b'{"messages": [{"role": "user", "content": "What is my dog called?"}, '
    b'{"role": "assistant", "content": "Your dog is called Rex."}]}\n'
    b'{"messages": [{"role": "user", "content": "Where do I live?"}, '
    b'{"role": "assistant", "content": "You live in Lisbon."}]}\n'
)


def test_training_and_serving_run_on_cuda_and_match_peft_on_the_cpu(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from workers.engine.base_models import load_base, weights_digest
    from workers.engine.examples import Message, parse_jsonl
    from workers.engine.micro_base import build_micro_base
    from workers.engine.payload import export_peft_folder
    from workers.engine.prompting import render_prompt
    from workers.engine.runtime import AdapterRuntime, SamplingParams
    from workers.engine.training import TrainingConfig, train_adapter

    folder = build_micro_base(tmp_path / "base")
    digest = weights_digest(folder)
    base = load_base(folder, digest)
    assert base.device == "cuda"
    config = TrainingConfig(steps=120, learning_rate=0.01, seed=0)
    payload = train_adapter(base.model, base.tokenizer, parse_jsonl(FACTS).examples, config).payload

    prompt = render_prompt([Message("user", "What is my dog called?")])
    runtime = AdapterRuntime()
    [on_gpu] = runtime.generate(
        str(folder),
        digest,
        "a" * 64,
        lambda _: payload,
        prompt,
        SamplingParams(max_tokens=30, temperature=0.0),
    )
    gpu_logits = runtime.logits(str(folder), digest, "a" * 64, lambda _: payload, prompt)

    cpu_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(folder), export_peft_folder(payload, tmp_path / "peft")
    ).eval()
    ids = base.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        cpu_logits = cpu_model(input_ids=ids).logits
        cpu_tokens = cpu_model.generate(
            input_ids=ids,
            max_new_tokens=30,
            do_sample=False,
            eos_token_id=base.tokenizer.eos_token_id,
            pad_token_id=base.tokenizer.pad_token_id,
        )
    cpu_text = base.tokenizer.decode(cpu_tokens[0, ids.shape[1] :], skip_special_tokens=True)

    assert torch.allclose(gpu_logits, cpu_logits, atol=2e-3), (gpu_logits - cpu_logits).abs().max()
    assert on_gpu.text == cpu_text
    assert on_gpu.text == "Your dog is called Rex."


def test_a_shared_multi_adapter_pass_on_cuda_matches_separate_runs(tmp_path):
    from workers.engine.base_models import load_base, weights_digest
    from workers.engine.examples import parse_jsonl
    from workers.engine.micro_base import build_micro_base
    from workers.engine.multi_training import AdapterData, train_adapters
    from workers.engine.payload import unpack
    from workers.engine.training import TrainingConfig, train_adapter

    folder = build_micro_base(tmp_path / "base")
    digest = weights_digest(folder)
    examples = parse_jsonl(FACTS).examples
    for init in ("default", "tail"):
        config = TrainingConfig(steps=5, learning_rate=0.01, rank=4, batch_size=2, init=init)
        shared = load_base(folder, digest)
        results = train_adapters(
            shared.model, shared.tokenizer, [AdapterData(examples, seed) for seed in (0, 1)], config
        )
        for seed, result in zip((0, 1), results, strict=True):
            alone = load_base(folder, digest)
            expected = train_adapter(
                alone.model,
                alone.tokenizer,
                examples,
                TrainingConfig(steps=5, learning_rate=0.01, rank=4, batch_size=2, init=init, seed=seed),
            )
            assert result.losses == pytest.approx(expected.losses, rel=1e-3)
            ours, theirs = unpack(result.payload).tensors, unpack(expected.payload).tensors
            assert ours.keys() == theirs.keys()
            for key in ours:
                scale = float(theirs[key].abs().max()) or 1.0
                assert torch.allclose(ours[key], theirs[key], atol=1e-3 * scale), key
