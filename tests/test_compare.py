"""Comparing two revisions: the weight-delta engine, the comparison service and the page.

The engine is checked on LoRA tensors built by hand; the service and the page on real
revisions (payloads trained on the micro base, evaluations recorded through
`record_suite_results`, blobs in a real store).
"""

import math
from types import SimpleNamespace

import pytest
import torch
from django.urls import reverse

from adapters_app.lifecycle.compare import compare_revisions
from adapters_app.lifecycle.datasets import upload_dataset
from adapters_app.lifecycle.evaluations import record_suite_results
from adapters_app.lifecycle.gates import configure_gate
from adapters_app.lifecycle.revisions import create_revision
from adapters_app.lifecycle.storage import get_store
from tests.conftest import OTHER_FACTS, with_role
from workers.engine.payload import AdapterPayload, unpack
from workers.engine.training import TrainingConfig
from workers.engine.weight_delta import WeightDeltaError, compare_weights

Q_PROJ = "model.layers.0.self_attn.q_proj"
K_PROJ = "model.layers.0.self_attn.k_proj"
# The second recipe: another seed and rank on other data, so the settings and weights differ.
OTHER_RECIPE = TrainingConfig(steps=2, seed=7, rank=4)


def lora(modules: dict[str, tuple[list, list]], *, alpha: float, rslora: bool = False) -> AdapterPayload:
    """A payload of hand-made factors: module -> (lora_A rows, lora_B rows), PEFT key names."""
    tensors = {}
    for module, (a, b) in modules.items():
        tensors[f"base_model.model.{module}.lora_A.weight"] = torch.tensor(a, dtype=torch.float32)
        tensors[f"base_model.model.{module}.lora_B.weight"] = torch.tensor(b, dtype=torch.float32)
    rank = len(next(iter(modules.values()))[0])
    return AdapterPayload(tensors, {"r": rank, "lora_alpha": alpha, "use_rslora": rslora})


# ΔW = (2 / 1) · [[3], [4]] @ [[1, 2]] = [[6, 12], [8, 16]]: norm sqrt(500).
RANK_ONE = ([[1.0, 2.0]], [[3.0], [4.0]])


# --- the engine -----------------------------------------------------------------------------


def test_it_reports_the_frobenius_norm_of_each_side_and_of_their_difference():
    before = lora({Q_PROJ: RANK_ONE}, alpha=2)
    # ΔW = 2 · [[0], [4]] @ [[1, 2]] = [[0, 0], [8, 16]]; the difference is [[-6, -12], [0, 0]].
    after = lora({Q_PROJ: ([[1.0, 2.0]], [[0.0], [4.0]])}, alpha=2)

    [module] = compare_weights(before, after).modules

    assert module.module == Q_PROJ and module.layer == 0 and module.name == "self_attn.q_proj"
    assert module.shape == (2, 2)
    assert module.norm_a == pytest.approx(math.sqrt(500))
    assert module.norm_b == pytest.approx(math.sqrt(320))
    assert module.norm_diff == pytest.approx(math.sqrt(180))
    assert module.relative_change == pytest.approx(0.6)


def test_it_scales_by_alpha_over_the_square_root_of_the_rank_with_rslora():
    factors = {Q_PROJ: ([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]], [[1.0, 0, 0, 0], [0, 1.0, 0, 0]])}
    plain = lora(factors, alpha=8)  # scaling 8 / 4 = 2: ΔW = 2 · identity
    rslora = lora(factors, alpha=8, rslora=True)  # scaling 8 / sqrt(4) = 4: ΔW = 4 · identity

    [module] = compare_weights(plain, rslora).modules

    assert module.norm_a == pytest.approx(2 * math.sqrt(2))
    assert module.norm_b == pytest.approx(4 * math.sqrt(2))
    assert module.norm_diff == pytest.approx(2 * math.sqrt(2))


def test_identical_payloads_differ_by_exactly_zero(tiny_payload):
    comparison = compare_weights(unpack(tiny_payload), unpack(tiny_payload))

    assert len(comparison.modules) == 14  # 7 linear modules in each of the micro base's 2 layers
    assert all(module.norm_diff == 0.0 for module in comparison.modules)
    assert comparison.norm_a > 0 and comparison.relative_change == 0.0


def test_different_ranks_compare_as_full_updates():
    rank_one = lora({Q_PROJ: RANK_ONE}, alpha=2)
    # The same ΔW from rank-2 factors (scaling 4 / 2 = 2): the updates are equal.
    rank_two = lora({Q_PROJ: ([[1.0, 2.0], [0.0, 0.0]], [[3.0, 0.0], [4.0, 0.0]])}, alpha=4)

    [module] = compare_weights(rank_one, rank_two).modules

    assert module.norm_a == pytest.approx(math.sqrt(500))
    assert module.norm_b == pytest.approx(math.sqrt(500))
    assert module.norm_diff == pytest.approx(0.0)


def test_a_module_adapted_on_one_side_only_counts_as_zero_on_the_other():
    both = lora({Q_PROJ: RANK_ONE, K_PROJ: RANK_ONE}, alpha=2)
    q_only = lora({Q_PROJ: RANK_ONE}, alpha=2)

    comparison = compare_weights(both, q_only)

    q_proj, k_proj = comparison.modules  # q before k: the order a layer runs them
    assert (q_proj.module, q_proj.in_a, q_proj.in_b, q_proj.norm_diff) == (Q_PROJ, True, True, 0.0)
    assert (k_proj.module, k_proj.in_a, k_proj.in_b) == (K_PROJ, True, False)
    assert k_proj.norm_b == 0.0
    assert k_proj.norm_diff == pytest.approx(math.sqrt(500))
    assert comparison.only_in_a == [k_proj] and comparison.only_in_b == []
    assert comparison.by_layer() == [("layer 0", [q_proj, k_proj])]


def test_it_refuses_a_payload_without_lora_factors():
    empty = AdapterPayload({"lm_head.weight": torch.zeros(2, 2)}, {"r": 1, "lora_alpha": 1})
    with pytest.raises(WeightDeltaError, match="no LoRA factors"):
        compare_weights(empty, lora({Q_PROJ: RANK_ONE}, alpha=2))


# --- the service ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_payload(django_db_setup, django_db_blocker):
    """A second real payload: another seed, rank 4, other data (trained once per module)."""
    from adapters_app.lifecycle.base_models import ensure_micro_base
    from workers.engine.base_models import load_base
    from workers.engine.examples import parse_jsonl
    from workers.engine.training import train_adapter

    with django_db_blocker.unblock():
        base_row = ensure_micro_base()
    base = load_base(base_row.path, base_row.digest)
    return train_adapter(base.model, base.tokenizer, parse_jsonl(OTHER_FACTS).examples, OTHER_RECIPE).payload


@pytest.fixture
def revisions(adapter, dataset, actor, tiny_payload, other_payload):
    """r1 (the default recipe) and r2 (OTHER_RECIPE, trained on r1's adapter as its child)."""
    first = create_revision(
        adapter,
        tiny_payload,
        dataset=dataset,
        training_config=TrainingConfig(steps=2).as_dict(),
        parent=None,
        job=None,
        actor=actor,
        final_loss=2.5,
    )
    second = create_revision(
        adapter,
        other_payload,
        dataset=dataset,
        training_config=OTHER_RECIPE.as_dict(),
        parent=first,
        job=None,
        actor=actor,
        final_loss=2.25,
    )
    return first, second


def scored(adapter, dataset, revision, **suites: tuple[int, int]) -> None:
    """Record `suite=(passed, total)` for a revision (or the bare base when None)."""
    results = [
        SimpleNamespace(
            item_id=f"{suite}.{i}",
            suite=suite,
            prompt="What is my dog called?",
            expected="Rex",
            got="Rex" if i < passed else "Biscuit",
            passed=i < passed,
            detail="",
        )
        for suite, (passed, total) in suites.items()
        for i in range(total)
    ]
    record_suite_results(base=adapter.base, revision=revision, dataset=dataset, results=results, job=None)


def test_it_lists_the_settings_that_differ_and_folds_the_ones_that_match(revisions):
    first, second = revisions

    comparison = compare_revisions(first, second)

    differing = {(row.group, row.setting): (row.a, row.b) for row in comparison.differing}
    assert differing[("training config", "seed")] == ("0", "7")
    assert differing[("training config", "rank")] == ("8", "4")
    assert differing[("provenance", "rank")] == ("8", "4")
    assert differing[("provenance", "seed")] == ("0", "7")
    assert differing[("provenance", "parent")] == ("none (bare base)", "r1")
    assert differing[("provenance", "final training loss")] == ("2.50000", "2.25000")
    matching = {row.setting for row in comparison.matching}
    assert {"steps", "learning_rate", "dataset", "base digest", "code version"} <= matching


def test_it_compares_the_weights_of_real_revisions_of_different_ranks(revisions):
    comparison = compare_revisions(*revisions)

    assert comparison.weights_error == ""
    assert len(comparison.weights.modules) == 14
    assert all(module.in_a and module.in_b for module in comparison.weights.modules)
    assert comparison.weights.norm_diff > 0
    assert [layer for layer, _ in comparison.weights.by_layer()] == ["layer 0", "layer 1"]


def test_it_gives_suite_deltas_only_on_sets_both_revisions_were_scored_on(
    adapter, revisions, eval_set, actor
):
    first, second = revisions
    only_second = upload_dataset(
        adapter.person,
        eval_set_bytes("recall"),
        name="only-r2",
        purpose="eval",
        actor=actor,
    )[0]
    scored(adapter, eval_set, None, recall=(0, 4))
    scored(adapter, eval_set, first, recall=(1, 4), retention=(4, 4))
    scored(adapter, eval_set, second, recall=(3, 4), retention=(3, 4))
    scored(adapter, only_second, second, recall=(4, 4))

    [common] = compare_revisions(first, second).suite_sets

    assert (common.name, common.dataset_sha256) == ("alice-eval", eval_set.sha256)
    rows = [(row.suite, row.a, row.b, row.delta, row.base) for row in common.suites]
    assert rows == [("recall", 0.25, 0.75, 0.5, 0.0), ("retention", 1.0, 0.75, -0.25, None)]


def test_the_adapters_evaluation_set_comes_first(adapter, revisions, eval_set, actor):
    first, second = revisions
    gate_set = upload_dataset(
        adapter.person, eval_set_bytes("recall"), name="zz-gate", purpose="eval", actor=actor
    )[0]
    configure_gate(adapter, actor=actor, eval_dataset=gate_set)
    for dataset in (eval_set, gate_set):
        for revision in revisions:
            scored(adapter, dataset, revision, recall=(2, 4))

    sets = compare_revisions(first, second).suite_sets

    assert [(s.name, s.is_gate_set) for s in sets] == [("zz-gate", True), ("alice-eval", False)]


def test_a_missing_payload_leaves_the_weights_out_with_the_reason(revisions):
    first, second = revisions
    get_store().delete(first.sha256)

    comparison = compare_revisions(first, second)

    assert comparison.weights is None
    assert comparison.weights_error.startswith("r1: ") and "not in the store" in comparison.weights_error
    assert comparison.differing  # settings are still compared


def test_a_corrupted_payload_is_refused_not_compared(revisions):
    first, second = revisions
    path = get_store().path_for(second.sha256)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")

    comparison = compare_revisions(first, second)

    assert comparison.weights is None
    assert comparison.weights_error.startswith("r2: ") and "corrupted" in comparison.weights_error


def eval_set_bytes(suite: str) -> bytes:
    import json

    item = {
        "suite": suite,
        "item_id": f"{suite}.city",
        "messages": [{"role": "user", "content": "Where do I live?"}],
        "expected": "Lisbon",
        "check": {"kind": "contains", "value": "Lisbon"},
    }
    return json.dumps(item).encode() + b"\n"


# --- the page ----------------------------------------------------------------------------------


def url(rev: str, other: str | None = None) -> str:
    path = reverse("console:compare", args=["alice", "assistant", rev])
    return f"{path}?with={other}" if other is not None else path


@pytest.fixture
def operator_client(client, django_user_model, actor):
    client.force_login(django_user_model.objects.get(pk=actor.user_id))
    return client


@pytest.fixture
def viewer_client(client, django_user_model):
    client.force_login(
        with_role(django_user_model.objects.create_user("vera", password="pw-vera-123"), "viewer")
    )
    return client


def test_it_compares_a_revision_with_its_parent_by_default(operator_client, revisions):
    response = operator_client.get(url("r2"))

    assert response.status_code == 200
    assert response.context["comparison"].a.label == "r1"
    page = response.content.decode()
    assert "compared with r1 (its parent)" in page
    assert '<label for="compare-with">' in page and 'id="compare-with"' in page
    assert 'id="weight-chart-data"' in page and "plotly.min.js" in page
    assert "self_attn.q_proj" in page and "layer 1" in page


def test_a_viewer_can_read_the_comparison(viewer_client, revisions):
    response = viewer_client.get(url("r1", "r2"))
    assert response.status_code == 200
    assert response.context["comparison"].a.label == "r2"


def test_without_a_parent_it_compares_with_the_previous_revision(operator_client, make_revision):
    make_revision()
    make_revision()
    make_revision()  # r3 has no parent: the previous number, r2, is the default

    response = operator_client.get(url("r3"))

    assert response.context["comparison"].a.label == "r2"


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ("r9", "has no revision"),
        ("banana", "is not a revision reference"),
        ("r2", "is r2 itself"),
    ],
)
def test_a_bad_with_shows_a_message_on_the_page(operator_client, revisions, other, message):
    response = operator_client.get(url("r2", other))

    assert response.status_code == 200
    assert response.context["comparison"] is None
    page = response.content.decode()
    assert f"Cannot compare with {other}" in page and message in page
    assert 'id="compare-with"' in page  # the picker is still there to choose another


def test_a_lone_revision_has_nothing_to_compare_with(operator_client, make_revision):
    make_revision()
    page = operator_client.get(url("r1")).content.decode()
    assert "r1 is the only revision of alice/assistant" in page


def test_a_revision_whose_blob_is_missing_still_shows_settings_and_scores(
    operator_client, adapter, revisions, eval_set
):
    first, second = revisions
    scored(adapter, eval_set, first, recall=(1, 4))
    scored(adapter, eval_set, second, recall=(3, 4))
    get_store().delete(second.sha256)

    response = operator_client.get(url("r2"))

    assert response.status_code == 200
    page = response.content.decode()
    assert "Could not read the weights" in page and "not in the store" in page
    assert "+0.500" in page  # the recall delta
    assert 'id="weight-chart-data"' not in page
    assert response.context["comparison"].differing


def test_the_suite_section_says_what_to_do_without_a_common_set(operator_client, revisions):
    page = operator_client.get(url("r2")).content.decode()
    assert "have no suite scores on a common evaluation set" in page
    assert "Evaluate both on the same set" in page


def test_the_revision_and_adapter_pages_link_to_the_comparison(operator_client, revisions):
    revision_page = operator_client.get(reverse("console:revision", args=["alice", "assistant", "r2"]))
    adapter_page = operator_client.get(reverse("console:adapter", args=["alice", "assistant"]))

    compare_r2 = reverse("console:compare", args=["alice", "assistant", "r2"])
    assert f'action="{compare_r2}"' in revision_page.content.decode()
    assert '<option value="r1" selected>r1 (parent)</option>' in revision_page.content.decode()
    assert f'href="{compare_r2}?with=r1">compare with parent</a>' in adapter_page.content.decode()
