from workers.engine.base_models import describe, load_base
from workers.engine.micro_base import build_micro_base


def test_the_micro_base_builds_reproducibly(tmp_path):
    first = describe(build_micro_base(tmp_path / "a", seed=0))
    second = describe(build_micro_base(tmp_path / "b", seed=0))
    other_seed = describe(build_micro_base(tmp_path / "c", seed=1))
    assert first["digest"] == second["digest"]
    assert other_seed["digest"] != first["digest"]
    assert first["architecture"] == "LlamaForCausalLM"
    assert 10_000 < first["parameters"] < 1_000_000


def test_its_tokenizer_round_trips_any_text_and_knows_the_chat_template(tmp_path):
    folder = build_micro_base(tmp_path / "m")
    base = load_base(folder, describe(folder)["digest"])
    text = "Olá, Zoë! 日本 🐕 <|end|>"
    ids = base.tokenizer.encode(text, add_special_tokens=False)
    assert base.tokenizer.decode(ids) == text
    rendered = base.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|user|>\nhi<|end|>\n<|assistant|>\n"
