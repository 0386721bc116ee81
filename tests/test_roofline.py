"""The roofline's arithmetic (workers/engine/roofline.py): what a decode step must read,
counted from the model's own modules, and the bandwidth figure it is divided by."""

import pytest

from workers.engine.base_models import load_base, weights_digest
from workers.engine.micro_base import MICRO_CONFIG, build_micro_base
from workers.engine.roofline import factor_bytes, kv_cache_bytes, measure_bandwidth, step_bytes


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    folder = build_micro_base(tmp_path_factory.mktemp("roofline") / "micro")
    return load_base(folder, weights_digest(folder)).model


def test_a_step_reads_every_weight_once_but_only_the_looked_up_rows_of_the_embedding(micro):
    embedding = micro.get_input_embeddings().weight
    everything = sum(p.numel() * 4 for p in micro.parameters())
    rows = 3
    expected = everything - embedding.numel() * 4 + rows * embedding.shape[1] * 4
    assert step_bytes(micro, rows=rows, context=1).base == expected


def test_the_kv_cache_grows_with_rows_and_context_in_every_layer(micro):
    hidden, layers = MICRO_CONFIG["hidden_size"], MICRO_CONFIG["num_hidden_layers"]
    assert kv_cache_bytes(micro.config, rows=2, context=10) == 2 * layers * 2 * 10 * hidden * 4
    assert (
        step_bytes(micro, rows=2, context=20).kv_cache == 2 * step_bytes(micro, rows=2, context=10).kv_cache
    )


def test_each_distinct_adapter_adds_its_factors_once_however_many_rows_share_it():
    shapes = {"q_proj": (4096, 4096), "down_proj": (11008, 4096)}
    one = factor_bytes(shapes, rank=8, distinct=1)
    assert one == 8 * ((4096 + 4096) + (11008 + 4096)) * 4
    assert factor_bytes(shapes, rank=8, distinct=64) == 64 * one
    assert factor_bytes(shapes, rank=16, distinct=1) == 2 * one


def test_a_batch_of_adapters_reads_the_base_plus_their_factors(micro):
    shapes = {"model.layers.0.self_attn.q_proj": (64, 64)}
    bare = step_bytes(micro, rows=4, context=8)
    adapted = step_bytes(micro, rows=4, context=8, module_shapes=shapes, rank=8, distinct=2)
    assert adapted.total - bare.total == factor_bytes(shapes, rank=8, distinct=2)
    assert bare.seconds_at(bare.total) == pytest.approx(1.0)


def test_bandwidth_is_measured_with_the_threads_asked_and_refuses_tiny_arrays():
    measured = measure_bandwidth(array_bytes=8 << 20, repeats=2, threads=1)
    assert measured.threads == 1 and measured.array_bytes == 8 << 20
    assert measured.copy > 0 and measured.triad > 0 and measured.best == max(measured.copy, measured.triad)
    with pytest.raises(ValueError, match="at least 1 MiB"):
        measure_bandwidth(array_bytes=1024)
