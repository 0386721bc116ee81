"""`manage.py bench_serving`, tiny, on the micro base and on a tiny imported Llama with
grouped-query attention: it prints every table the issue asks for and writes the same
figures as JSON. (What it measures is `make bench-serving`'s business; here only that a run
is whole, says what it ran, and that its ratios are figures at all, never how fast.)"""

import json
import math

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.base_models import register_base_model
from tests.tiny_models import LLAMA, tiny_folder
from workers.engine import architectures

pytestmark = pytest.mark.django_db

TINY = {
    "batch": 4,
    "adapters": 2,
    "rank": 2,
    "new_tokens": 3,
    "rounds": 1,
    "loads": 2,
    "threads": 1,
    "zipf_requests": 2000,
    "bandwidth_mib": 8,
}


def bench(base: str, report, capsys, **options) -> tuple[str, dict]:
    call_command("bench_serving", base=base, json_path=str(report), **{**TINY, **options})
    return capsys.readouterr().out, json.loads(report.read_text())


@pytest.fixture
def tiny_llama_base(tmp_path):
    """A 2-layer Llama, 4 heads over 2 KV heads, ChatML template, registered as an import is."""
    folder = tiny_folder(LLAMA, tmp_path / "tiny-llama")
    return register_base_model("tiny-llama", folder, actor=Actor.system("test"))


@pytest.mark.parametrize("targets, modules", [("all-linear", 14), ("attention", 8)])
def test_a_tiny_run_prints_every_table_and_names_the_adapted_modules(
    micro_base, tmp_path, capsys, targets, modules
):
    out, figures = bench("micro", tmp_path / "bench.json", capsys, targets=targets)

    assert f"rank 2 on {modules} linear modules ({targets}: q_proj, k_proj" in out
    for line in ("ours / bare base", "ours / PEFT mixed batch", "Adapter cold load", "Belady"):
        assert line in out, line
    assert "ours 4/4" in out  # every row's greedy tokens equal that adapter run alone
    # The compiled CPU kernel serves "ours", and the torch-ops path runs beside it.
    assert "ours serves through the compiled CPU LoRA kernel (kernel on" in out
    assert "ours with torch ops 4/4" in out and "ours / ours with torch ops only" in out
    assert figures["conditions"]["targets"] == targets
    assert figures["conditions"]["adapted_modules"] == modules
    assert figures["throughput"]["rows_equal_to_alone"]["ours"] == 4
    assert figures["conditions"]["cpu_kernel"] is True and figures["throughput"]["cpu_kernel"] is True
    # The roofline: bandwidth measured in the run, each side's bytes, and the ratio it allows.
    assert "memory bandwidth, measured in this run" in out and "the roofline allows" in out
    roofline = figures["roofline"]
    assert roofline["pass_bytes"]["ours"] > roofline["pass_bytes"]["bare"] > 0
    allowed = roofline["ours_over_bare"]["roofline_allows"]
    assert allowed == pytest.approx(roofline["pass_bytes"]["bare"] / roofline["pass_bytes"]["ours"])
    assert all(value > 0 for value in roofline["achieved_fraction"].values())


def test_it_runs_on_an_imported_gqa_base_by_its_registered_name(tiny_llama_base, tmp_path, capsys):
    out, figures = bench("tiny-llama", tmp_path / "bench.json", capsys)

    conditions = figures["conditions"]
    assert "Serving benchmark on tiny-llama (LlamaForCausalLM" in out
    assert "2 layers, hidden 64, 4 heads / 2 KV heads, float32" in out
    assert (conditions["heads"], conditions["kv_heads"]) == (4, 2)
    # Two layers of q/k/v/o and gate/up/down, as the architecture table names Llama's.
    assert "rank 2 on 14 linear modules (all-linear: q_proj, k_proj, v_proj, o_proj, gate_proj" in out
    # Prompts in the base's ChatML template, and a row ends its turn at <|im_end|>.
    assert conditions["stop_tokens"] == ["<|im_end|>"]
    assert "a row stops at <|im_end|>" in out
    assert "batch 4, 2 distinct adapters" in out and "up to 3 new tokens a row" in out
    assert "1 timed round after a warm-up" in out and "torch threads 1" in out
    for row in ("bare base", "ours (heterogeneous batch)", "PEFT mixed batch", "PEFT per-request switching"):
        assert row in out, row
    assert "ours 4/4" in out and "PEFT mixed 4/4" in out  # every row exact, GQA included
    ratios = figures["throughput"]["ratios"]
    assert {"ours_over_bare", "ours_over_peft_mixed", "ours_over_peft_switch"} <= set(ratios)
    for name, ratio in ratios.items():
        assert math.isfinite(ratio["median"]) and 0 < ratio["min"] <= ratio["median"] <= ratio["max"], name
    for variant, produced in figures["throughput"]["tokens_per_pass"].items():
        assert all(0 < tokens <= 4 * 3 for tokens in produced), variant


def test_a_base_the_bank_does_not_batch_is_measured_without_ours_and_says_why(
    tiny_llama_base, tmp_path, capsys, monkeypatch
):
    unbatched = architectures.Architecture(
        "LlamaForCausalLM", "llama", batched=False, unbatched_reason="a test says so"
    )
    monkeypatch.setitem(architectures.KNOWN, "LlamaForCausalLM", unbatched)

    out, figures = bench("tiny-llama", tmp_path / "bench.json", capsys)

    assert "ours: not measured: the serving bank does not batch LlamaForCausalLM (a test says so)" in out
    assert "not batched on this architecture" in out
    assert "PEFT mixed 4/4" in out and "PEFT mixed batch / bare base" in out
    assert set(figures["throughput"]["seconds"]) == {"bare", "peft_mixed", "peft_switch"}
    assert figures["throughput"]["batched"] is False and "ours_ms" not in figures["cold_load"]


def test_a_packaged_base_whose_package_is_missing_names_make_real_bases(monkeypatch):
    import importlib.metadata

    def not_installed(dist):
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(CommandError, match="make real-bases"):
        call_command("bench_serving", base="smollm2-135m", threads=1)


def test_an_unknown_base_is_refused_with_the_choices():
    with pytest.raises(CommandError, match=r"no base 'nobody'.*smollm2-135m"):
        call_command("bench_serving", base="nobody", threads=1)


def test_the_sharing_table_spreads_the_rows_over_fewer_adapters_and_a_zipf_draw(micro_base, tmp_path, capsys):
    out, figures = bench("micro", tmp_path / "bench.json", capsys, sharing=True, switch_rows=2)

    spreads = list(figures["sharing"])
    assert spreads[:2] == ["1 distinct", "2 distinct"]  # 8 would need more than the 2 adapters loaded
    assert spreads[2].startswith("Zipf(1.0) over 10,000")
    # Fewer distinct adapters read fewer factors: the roofline allows more.
    allowed = [figures["sharing"][name]["roofline_allows"] for name in spreads[:2]]
    assert allowed[0] > allowed[1] and all(0 < a < 1 for a in allowed)
    assert "ours / bare, rows over" in out
    # Per-request switching sampled on two rows: the rows compared with it say so.
    assert "(the first 2 rows: switching was sampled): ours 2/2" in out
