"""Replay rows for an imported base: its own greedy answers, made once, held apart from retention."""

from pathlib import Path

import pytest

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.base_models import import_base_model
from tests import tiny_models
from workers.engine.base_family import replay_examples
from workers.engine.base_models import weights_digest
from workers.engine.general_knowledge import general_knowledge_items
from workers.engine.self_replay import REPLAY_FILE, replay_requests


@pytest.fixture
def imported_llama(db, settings, tmp_path):
    settings.MINT_BASES_DIR = tmp_path / "bases"
    model, tokenizer = tiny_models.build(tiny_models.LLAMA)
    source = tiny_models.write_hf_folder(model, tokenizer, tmp_path / "source")
    return import_base_model("tiny-llama", source, actor=Actor.system("cli"))


def test_an_imported_base_replays_its_own_answers_made_once_and_cached(imported_llama):
    from workers.engine.base_models import load_base
    from workers.engine.runtime import AdapterRuntime, SamplingParams

    folder = Path(imported_llama.path)
    assert not (folder / REPLAY_FILE).exists()
    rows = replay_examples(folder)
    assert rows and (folder / REPLAY_FILE).exists()
    assert len(rows) <= len(replay_requests())

    # Each row is the bare base's own greedy answer to that request.
    first = rows[0]
    [answer] = AdapterRuntime().generate(
        imported_llama.path,
        imported_llama.digest,
        None,
        lambda sha: b"",
        first.messages[:1],
        SamplingParams(max_tokens=48, temperature=0.0),
    )
    assert first.messages[1].content == answer.text.strip()

    # Cached: a second call reads the file; the weights (the base's identity) are untouched.
    stamp = (folder / REPLAY_FILE).stat().st_mtime_ns
    assert replay_examples(folder) == rows
    assert (folder / REPLAY_FILE).stat().st_mtime_ns == stamp
    assert weights_digest(folder) == imported_llama.digest
    assert load_base(folder, imported_llama.digest)


def test_replay_requests_share_no_question_with_the_retention_set():
    graded = {item.messages[0].content for item in general_knowledge_items()}
    assert not graded & set(replay_requests())


def test_a_folder_that_is_neither_ours_nor_imported_has_no_replay(tmp_path):
    model, tokenizer = tiny_models.build(tiny_models.LLAMA)
    folder = tiny_models.write_hf_folder(model, tokenizer, tmp_path / "plain")
    assert replay_examples(folder) == []
    assert not (folder / REPLAY_FILE).exists()
