"""The worker's batched server on the real micro base: no mocks, PEFT as the reference."""

from __future__ import annotations

import threading

import pytest

from adapters_app.lifecycle.storage import get_store
from workers.engine.runtime import AdapterRuntime, SamplingParams
from workers.serving import Server, Unservable

PROMPTS = ["What is my dog called?", "Where do I live?", "Tell me a story.", "2 + 3 ="]
GREEDY = SamplingParams(max_tokens=12, temperature=0.0)


def random_adapters(base, count: int, rank: int = 4, seed: int = 0, **config) -> list[str]:
    """`count` random-init adapters put into the store; their sha256s."""
    from adapters_app.management.commands.bench_serving import lora_target_shapes, random_payloads
    from workers.engine.base_models import load_base
    from workers.engine.payload import pack, unpack

    shapes = lora_target_shapes(load_base(base.path, base.digest).model)
    shas = []
    for data in random_payloads(shapes, count, rank, seed).values():
        if config:
            payload = unpack(data)
            data = pack(payload.tensors, {**payload.config, **config})
        shas.append(get_store().put(data).sha256)
    return shas


def peft_answer(base, sha: str | None, prompt: str, params: SamplingParams = GREEDY) -> str:
    [generation] = AdapterRuntime().generate(base.path, base.digest, sha, get_store().get, prompt, params)
    return generation.text


def generate_together(server: Server, requests: list[tuple[str, str | None]]) -> list[str]:
    """Send every request from its own thread at once; their texts in order."""
    texts: list = [None] * len(requests)

    def one(index: int, prompt: str, sha: str | None) -> None:
        [result] = server.generate(prompt, sha, GREEDY)
        texts[index] = result["text"]

    threads = [threading.Thread(target=one, args=(i, *r)) for i, r in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return texts


@pytest.mark.django_db
def test_rows_with_different_adapters_in_one_batch_answer_as_peft_does(micro_base, server_with):
    server = server_with()
    shas = random_adapters(micro_base, 3)
    requests = [(PROMPTS[0], shas[0]), (PROMPTS[1], shas[1]), (PROMPTS[2], None), (PROMPTS[3], shas[2])]

    texts = generate_together(server, requests)

    assert texts == [peft_answer(micro_base, sha, prompt) for prompt, sha in requests]
    assert set(server.model.slots) == set(shas)


@pytest.mark.django_db
def test_a_full_bank_never_evicts_an_adapter_a_running_row_uses(micro_base, server_with):
    server = server_with(slots=2)
    shas = random_adapters(micro_base, 5, seed=1)
    requests = [(PROMPTS[i % len(PROMPTS)], sha) for i, sha in enumerate(shas)]

    texts = generate_together(server, requests)

    assert texts == [peft_answer(micro_base, sha, prompt) for prompt, sha in requests]
    snapshot = server.residency.snapshot()
    device = next(tier for tier in snapshot["tiers"] if tier["tier"] == "device")
    assert device["entries"] == 2 and device["evictions"] >= 3


@pytest.mark.django_db
def test_n_choices_with_a_seed_are_reproducible_and_streamed_pieces_add_up(micro_base, server_with):
    server = server_with()
    [sha] = random_adapters(micro_base, 1, seed=2)
    params = SamplingParams(max_tokens=10, temperature=1.5, seed=7)
    pieces = {0: "", 1: ""}

    def on_text(index: int, piece: str) -> None:
        pieces[index] += piece

    first = server.generate(PROMPTS[0], sha, params, n=2, on_text=on_text)
    again = server.generate(PROMPTS[0], sha, params, n=2)

    assert [r["text"] for r in first] == [r["text"] for r in again] == [pieces[0], pieces[1]]


@pytest.mark.django_db
def test_what_the_bank_refuses_is_unservable_and_takes_no_slot(micro_base, server_with):
    server = server_with(max_rank=4)
    [dora] = random_adapters(micro_base, 1, seed=3, use_dora=True)
    [wide] = random_adapters(micro_base, 1, rank=8, seed=4)

    for sha in (dora, wide):
        with pytest.raises(Unservable):
            server.generate(PROMPTS[0], sha, GREEDY)
        with pytest.raises(Unservable):  # remembered: refused again without a load
            server.generate(PROMPTS[0], sha, GREEDY)
    assert server.model.slots == {}


@pytest.mark.django_db
def test_the_worker_serves_a_refused_adapter_one_at_a_time_instead(micro_base, settings):
    from adapters_app.lifecycle import routing
    from workers import runs, serving

    settings.MINT_SERVING_MAX_RANK = 4
    [wide] = random_adapters(micro_base, 1, rank=8, seed=5)
    request = {
        "base_path": micro_base.path,
        "base_digest": micro_base.digest,
        "revision_sha256": wide,
        "prompt": PROMPTS[1],
        "params": {"max_tokens": 12, "temperature": 0.0},
        "n": 1,
    }
    try:
        [result] = runs.generate(request)
    finally:
        serving._servers.pop(micro_base.digest).stop()

    assert result["text"] == peft_answer(micro_base, wide, PROMPTS[1])
    # Routing now follows the runtime's holdings for it (see test_routing).
    assert routing.served_one_at_a_time(wide)


@pytest.mark.django_db
def test_an_evaluation_grades_in_one_batch_exactly_as_one_item_at_a_time(micro_base, make_revision):
    from workers.engine.persona_world import generate_world
    from workers.engine.suites import run_items
    from workers.runs import answer, grade_targets

    revision = make_revision()
    world = generate_world(0, people=2)
    items = world.people[0].eval_items(world)[:12]
    progress = []

    batched = grade_targets(
        revision.adapter, [None, revision], items, on_progress=lambda d, t: progress.append(d)
    )

    one_at_a_time = [
        run_items(
            items,
            lambda prompt, max_tokens, target=target: answer(revision.adapter, target, prompt, max_tokens),
        )
        for target in (None, revision)
    ]
    assert [[r.got for r in results] for results in batched] == [
        [r.got for r in results] for results in one_at_a_time
    ]
    assert progress[-1] == 2 * len(items)
