"""Many adapters in one shared training pass give what separate train_adapter runs give."""

import pytest
import torch

from tests.conftest import FACTS, OTHER_FACTS
from workers.engine.base_models import load_base
from workers.engine.examples import parse_jsonl
from workers.engine.multi_training import AdapterData, LoraTrainingBank, train_adapters
from workers.engine.payload import unpack
from workers.engine.persona_world import generate_world, jsonl
from workers.engine.training import TrainingConfig, train_adapter

# The shared pass sums in a different order (one wide batch, padding to the step's longest
# row), so it agrees with the separate runs to float32 rounding grown over a few Adam steps.
LOSS_RTOL = 1e-4
FACTOR_TOL = 1e-4  # relative to the largest magnitude in the tensor


@pytest.fixture
def base_folder(micro_base):
    return micro_base.path, micro_base.digest


@pytest.fixture(scope="module")
def people():
    world = generate_world(0, 3)
    datasets = [FACTS] + [jsonl(person.training_rows()[:5]) for person in world.people[1:]]
    return [
        AdapterData(parse_jsonl(data).examples, seed)
        for data, seed in zip(datasets, (3, 11, 29), strict=True)
    ]


REPLAY = parse_jsonl(OTHER_FACTS).examples


def separately(base_folder, person, config, replay):
    base = load_base(*base_folder)
    alone = TrainingConfig(**{**config.as_dict(), "seed": person.seed})
    return train_adapter(base.model, base.tokenizer, person.examples, alone, replay=replay)


def assert_same_adapter(multi, alone):
    assert multi.losses == pytest.approx(alone.losses, rel=LOSS_RTOL)
    assert multi.trainable_parameters == alone.trainable_parameters
    ours, theirs = unpack(multi.payload), unpack(alone.payload)
    assert ours.config == theirs.config
    assert ours.tensors.keys() == theirs.tensors.keys()
    for key, expected in theirs.tensors.items():
        scale = float(expected.abs().max()) or 1.0
        assert torch.allclose(ours.tensors[key], expected, rtol=0, atol=FACTOR_TOL * scale), key


@pytest.mark.parametrize(
    "init, targets, replay, rows_per_forward",
    # every adapter's rows in one forward, and one adapter's rows per forward
    [("default", "all-linear", REPLAY, 1000), ("tail", "attention", (), 4)],
)
def test_each_adapter_of_a_shared_pass_matches_its_separate_run(
    base_folder, people, init, targets, replay, rows_per_forward
):
    config = TrainingConfig(
        rank=4,
        steps=5,
        batch_size=4,
        learning_rate=1e-2,
        init=init,
        targets=targets,
        replay=0.5 if replay else 0.0,
    )
    base = load_base(*base_folder)
    results = train_adapters(
        base.model, base.tokenizer, people, config, replay=replay, rows_per_forward=rows_per_forward
    )

    assert len(results) == len(people)
    for person, multi in zip(people, results, strict=True):
        assert_same_adapter(multi, separately(base_folder, person, config, replay))
    assert results[0].payload != results[1].payload


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_a_bank_row_group_computes_its_own_adapter_on_the_residual_base(dropout):
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5, bias=False)
    a, b, a0, b0 = torch.randn(3, 2, 6), torch.randn(3, 5, 2), torch.randn(3, 2, 6), torch.randn(3, 5, 2)
    bank = LoraTrainingBank(base, a.clone(), b.clone(), 0.5, dropout, start=(a0, b0)).eval()
    x = torch.randn(3 * 2, 4, 6)  # 3 adapters x 2 rows, adapter-major

    with torch.no_grad():
        got = bank(x)
    for n in range(3):
        residual = base.weight - 0.5 * b0[n] @ a0[n]  # what train_adapter's base holds
        expected = x[2 * n : 2 * n + 2] @ (residual + 0.5 * b[n] @ a[n]).T
        assert torch.allclose(got[2 * n : 2 * n + 2], expected, atol=1e-5)


def test_a_shared_pass_with_a_base_shifting_init_leaves_the_base_untouched(base_folder, people):
    base = load_base(*base_folder)
    before = {name: p.detach().clone() for name, p in base.model.named_parameters()}
    modules = [name for name, _ in base.model.named_modules()]
    config = TrainingConfig(rank=2, steps=2, batch_size=4, init="pissa", targets="attention")

    train_adapters(base.model, base.tokenizer, people[:2], config)

    assert [name for name, _ in base.model.named_modules()] == modules
    for name, parameter in base.model.named_parameters():
        assert torch.equal(parameter, before[name]), name
        assert parameter.requires_grad


def test_progress_is_reported_every_step_and_can_stop_the_pass(base_folder, people):
    base = load_base(*base_folder)
    modules = [name for name, _ in base.model.named_modules()]
    seen = []

    class Stop(Exception):
        pass

    def on_step(step, total, loss):
        seen.append((step, total))
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        train_adapters(base.model, base.tokenizer, people, TrainingConfig(steps=50), on_step=on_step)
    assert seen == [(1, 50), (2, 50)]
    assert [name for name, _ in base.model.named_modules()] == modules  # banks taken out again


def test_a_pass_without_adapters_is_refused(base_folder):
    base = load_base(*base_folder)
    with pytest.raises(ValueError, match="at least one adapter"):
        train_adapters(base.model, base.tokenizer, [], TrainingConfig(steps=1))


def test_an_adapter_with_an_empty_dataset_is_refused(base_folder, people):
    base = load_base(*base_folder)
    with pytest.raises(ValueError, match=r"adapter 1 \(seed 5\) on an empty dataset"):
        train_adapters(base.model, base.tokenizer, [people[0], AdapterData((), 5)], TrainingConfig(steps=1))


def test_replay_without_replay_rows_is_refused(base_folder, people):
    base = load_base(*base_folder)
    with pytest.raises(ValueError, match="no replay rows"):
        train_adapters(base.model, base.tokenizer, people, TrainingConfig(steps=1, replay=0.5))
