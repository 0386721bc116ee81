"""The default base family: built offline, reproducibly, cached by spec."""

from itertools import pairwise

from workers.engine.base_family import FAMILY, SMALLEST, BaseSpec, build_base, is_built
from workers.engine.base_models import describe

MICRO = BaseSpec(
    "mint-test",
    hidden_size=32,
    layers=1,
    heads=2,
    intermediate_size=64,
    steps=4,
    batch_size=4,
    corpus_rows=32,
)
ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": f"{a + b}."},
        ]
    }
    for a in range(4)
    for b in range(4)
]


def test_the_same_spec_and_seed_build_the_same_digest(tmp_path):
    first = describe(build_base(MICRO, tmp_path / "a", corpus=ROWS))
    second = describe(build_base(MICRO, tmp_path / "b", corpus=ROWS))
    assert first["digest"] == second["digest"]


def test_another_seed_builds_another_base(tmp_path):
    from dataclasses import replace

    first = describe(build_base(MICRO, tmp_path / "a", corpus=ROWS))
    other = describe(build_base(replace(MICRO, seed=1), tmp_path / "b", corpus=ROWS))
    assert first["digest"] != other["digest"]


def test_a_built_folder_is_recognised_by_its_spec(tmp_path):
    from dataclasses import replace

    folder = build_base(MICRO, tmp_path / "a", corpus=ROWS)
    assert is_built(MICRO, folder)
    assert not is_built(replace(MICRO, steps=5), folder)
    assert not is_built(MICRO, tmp_path / "missing")


def test_progress_is_reported_every_step(tmp_path):
    seen = []
    build_base(
        MICRO, tmp_path / "a", corpus=ROWS, on_step=lambda step, total, loss: seen.append((step, total))
    )
    assert seen == [(step, 4) for step in range(1, 5)]


def test_the_family_spans_orders_of_magnitude():
    def parameters(spec):
        per_layer = 4 * spec.hidden_size**2 + 3 * spec.hidden_size * spec.intermediate_size
        return spec.layers * per_layer + 2 * 261 * spec.hidden_size

    sizes = sorted(parameters(spec) for spec in FAMILY.values())
    assert len(sizes) >= 3
    assert all(later / earlier >= 5 for earlier, later in pairwise(sizes))
    assert parameters(FAMILY[SMALLEST]) == sizes[0]


def test_a_family_base_is_registered_once_and_never_rebuilt_over_by_a_newer_recipe(
    db, settings, tmp_path, monkeypatch, actor
):
    from dataclasses import replace

    import pytest

    from adapters_app.lifecycle.base_models import ensure_family_base
    from adapters_app.lifecycle.errors import Conflict
    from workers.engine.base_models import weights_digest

    settings.MINT_BASES_DIR = tmp_path
    monkeypatch.setitem(FAMILY, MICRO.name, MICRO)
    base = ensure_family_base(MICRO.name, actor=actor)
    assert ensure_family_base(MICRO.name, actor=actor) == base

    monkeypatch.setitem(FAMILY, MICRO.name, replace(MICRO, recipe=MICRO.recipe + 1))
    with pytest.raises(Conflict, match="older recipe"):
        ensure_family_base(MICRO.name, actor=actor)
    assert weights_digest(base.path) == base.digest
