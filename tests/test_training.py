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
