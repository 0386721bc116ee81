"""The training engine: answer-only loss, seeded determinism, validated settings."""

import pytest

from tests.conftest import FACTS
from workers.engine.base_models import load_base
from workers.engine.examples import parse_jsonl
from workers.engine.prompting import IGNORE_INDEX, encode_for_training
from workers.engine.training import TrainingConfig, TrainingConfigInvalid, train_adapter


@pytest.fixture
def base_folder(micro_base):
    return micro_base.path, micro_base.digest


def train(base_folder, **settings) -> bytes:
    base = load_base(*base_folder)
    config = TrainingConfig(steps=3, **settings)
    return train_adapter(base.model, base.tokenizer, parse_jsonl(FACTS).examples, config).payload


def test_the_loss_covers_only_the_answer_tokens(base_folder):
    tokenizer = load_base(*base_folder).tokenizer
    example = parse_jsonl(FACTS).examples[0]
    ids, labels = encode_for_training(tokenizer, example, max_length=512)
    learned = tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])
    assert learned == "Your dog is called Rex.<|end|>"
    assert tokenizer.decode(ids).startswith("<|user|>\nWhat is my dog called?<|end|>\n<|assistant|>\n")


def test_the_same_seed_gives_the_same_payload_bytes(base_folder):
    assert train(base_folder, seed=7) == train(base_folder, seed=7)


def test_a_different_seed_gives_a_different_adapter(base_folder):
    assert train(base_folder, seed=7) != train(base_folder, seed=8)


def test_training_progress_is_reported_every_step_and_can_stop_the_run(base_folder):
    base = load_base(*base_folder)
    seen = []

    class Stop(Exception):
        pass

    def on_step(step, total, loss):
        seen.append((step, total))
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        train_adapter(
            base.model, base.tokenizer, parse_jsonl(FACTS).examples, TrainingConfig(steps=50), on_step=on_step
        )
    assert seen == [(1, 50), (2, 50)]


def test_settings_are_validated_field_by_field():
    with pytest.raises(TrainingConfigInvalid) as caught:
        TrainingConfig.from_dict({"rank": 0, "steps": "many", "learning_rate": 3, "targets": "everything"})
    assert set(caught.value.errors) == {"rank", "steps", "learning_rate", "targets"}


def test_defaults_fill_what_is_not_given():
    config = TrainingConfig.from_dict({"rank": 4})
    assert (config.rank, config.alpha, config.init) == (4, 16, "default")


def test_replay_mixes_the_bases_general_rows_into_every_batch(base_folder):
    base = load_base(*base_folder)
    general = parse_jsonl(
        b'{"prompt": "What is 2 + 2?", "completion": "4."}\n'
        b'{"prompt": "Spell cat backwards.", "completion": "tac"}\n'
    ).examples
    with_replay = train_adapter(
        base.model,
        base.tokenizer,
        parse_jsonl(FACTS).examples,
        TrainingConfig(steps=2, replay=0.25),
        replay=general,
    )
    without = train_adapter(
        load_base(*base_folder).model, base.tokenizer, parse_jsonl(FACTS).examples, TrainingConfig(steps=2)
    )
    assert with_replay.payload != without.payload


def test_replay_without_replay_rows_is_refused(base_folder):
    base = load_base(*base_folder)
    with pytest.raises(ValueError, match="ships no replay rows"):
        train_adapter(
            base.model, base.tokenizer, parse_jsonl(FACTS).examples, TrainingConfig(steps=1, replay=0.5)
        )


def _rows(lengths):
    return [([0] * n, [0] * n) for n in lengths]


def test_length_bucketed_batches_draw_every_row_and_waste_little_padding():
    import random
    from itertools import islice

    from workers.engine.training import length_bucketed_batches, shuffled_batches

    rows = _rows(random.Random(1).choices(range(10, 130), k=512))

    def padding(batches):
        return sum(max(len(ids) for ids, _ in b) * len(b) - sum(len(ids) for ids, _ in b) for b in batches)

    bucketed = list(islice(length_bucketed_batches(rows, 32, random.Random(0), pool=16), 16))
    shuffled = list(islice(shuffled_batches(rows, 32, random.Random(0)), 16))
    assert sorted(id(r) for b in bucketed for r in b) == sorted(id(r) for r in rows)
    assert all(len(b) == 32 for b in bucketed)
    assert padding(bucketed) < padding(shuffled) / 4


def test_length_bucketed_batches_are_the_same_for_the_same_seed():
    import random
    from itertools import islice

    from workers.engine.training import length_bucketed_batches

    rows = _rows(random.Random(1).choices(range(10, 130), k=100))

    def lengths(seed):
        batches = islice(length_bucketed_batches(rows, 8, random.Random(seed), pool=4), 20)
        return [[len(ids) for ids, _ in b] for b in batches]

    assert lengths(0) == lengths(0)
    assert lengths(0) != lengths(1)
