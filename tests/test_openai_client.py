"""The official `openai` client against a running server, a real worker and a person's adapter."""

from dataclasses import asdict

import openai
import pytest
from celery.signals import after_task_publish

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.pointer import promote
from adapters_app.lifecycle.storage import get_store
from adapters_app.models import ApiKey
from mintweb.celery import app as celery_app
from tests.conftest import FACTS, wait_until, with_role
from workers.engine.runtime import SamplingParams

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

MODEL = "alice/assistant"
QUESTION = [{"role": "user", "content": "What is my dog called?"}]


def trained_payload(micro_base, **config) -> bytes:
    from workers.engine.base_models import load_base
    from workers.engine.examples import parse_jsonl
    from workers.engine.training import TrainingConfig, train_adapter

    base = load_base(micro_base.path, micro_base.digest)
    examples = parse_jsonl(FACTS).examples
    return train_adapter(base.model, base.tokenizer, examples, TrainingConfig(**config)).payload


@pytest.fixture(scope="module")
def rex_payload(django_db_setup, django_db_blocker) -> bytes:
    """Trained (once) long enough to answer "Your dog is called Rex."."""
    from adapters_app.lifecycle.base_models import ensure_micro_base

    with django_db_blocker.unblock():
        micro_base = ensure_micro_base()
    return trained_payload(micro_base, steps=120, learning_rate=0.01, seed=3)


@pytest.fixture
def client(live_server, celery_worker_process, micro_base, django_user_model) -> openai.OpenAI:
    _, key = ApiKey.issue(with_role(django_user_model.objects.create_user("ops"), "operator"))
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture
def alice_knows_her_dog(make_revision, rex_payload):
    """alice/assistant, live, with the adapter that knows her dog's name."""
    revision = make_revision(rex_payload)
    promote(revision, actor=Actor.system())
    return revision


def ask(client, **options):
    if "max_completion_tokens" not in options:
        options["max_tokens"] = 24
    return client.chat.completions.create(model=MODEL, messages=QUESTION, **options)


def test_the_client_lists_the_persons_adapter(client, alice_knows_her_dog):
    assert MODEL in {model.id for model in client.models.list()}


def test_the_client_completes_and_chats_with_usage(client, alice_knows_her_dog):
    chat = ask(client, temperature=0)
    answer = chat.choices[0].message.content
    assert "Rex" in answer
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage.completion_tokens > 0
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

    completion = client.completions.create(
        model=MODEL,
        prompt="<|user|>\nWhat is my dog called?<|end|>\n<|assistant|>\n",
        max_tokens=24,
        temperature=0,
    )
    assert completion.choices[0].text == answer
    assert completion.usage.prompt_tokens == chat.usage.prompt_tokens


def test_a_streamed_chat_adds_up_to_the_greedy_answer(client, alice_knows_her_dog):
    answer = ask(client, temperature=0).choices[0].message.content
    chunks = list(ask(client, temperature=0, stream=True, stream_options={"include_usage": True}))

    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1, "it arrives in pieces"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_a_streamed_completion_adds_up_to_the_greedy_completion(client, alice_knows_her_dog):
    prompt, options = "Where do I live?", {"model": MODEL, "max_tokens": 12, "temperature": 0}
    whole = client.completions.create(prompt=prompt, **options).choices[0]
    pieces = list(client.completions.create(prompt=prompt, stream=True, **options))
    assert "".join(p.choices[0].text for p in pieces) == whole.text
    assert pieces[-1].choices[0].finish_reason == whole.finish_reason


def test_n_choices_with_a_seed_are_reproducible_streamed_or_not(client, alice_knows_her_dog):
    options = {"n": 2, "seed": 7, "temperature": 1.5, "max_completion_tokens": 12}
    first, again = ask(client, **options), ask(client, **options)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert first.usage == again.usage and 0 < first.usage.completion_tokens <= 2 * 12

    streamed = {0: "", 1: ""}
    for chunk in ask(client, stream=True, **options):
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert [streamed[0], streamed[1]] == [c.message.content for c in first.choices]


def test_a_stop_string_ends_the_answer_streamed_or_not(client, alice_knows_her_dog):
    answer = ask(client, temperature=0).choices[0].message.content
    expected = answer[: answer.index(" Rex")]

    stopped = ask(client, temperature=0, stop=[" Rex", "zzz"]).choices[0]
    assert (stopped.message.content, stopped.finish_reason) == (expected, "stop")
    streamed = list(ask(client, temperature=0, stop=" Rex", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_a_worker_error_mid_stream_reaches_the_client_as_an_error(client, make_revision, micro_base):
    revision = make_revision(trained_payload(micro_base, steps=1, seed=424242))
    promote(revision, actor=Actor.system())
    get_store().delete(revision.sha256)  # the worker has never loaded this one: it must fail

    with pytest.raises(openai.APIError, match="generation failed on the worker"):
        list(ask(client, stream=True))


ABANDONED = b"abandoned by its reader: generation stopped"


def test_a_client_that_goes_away_mid_stream_stops_its_answer_on_the_worker(
    client, celery_worker_process, micro_base
):
    worker_log = celery_worker_process.log_path
    before = worker_log.read_bytes().count(ABANDONED)
    # The bare micro base talks on greedily until max_tokens: 900 tokens would take a while.
    with client.chat.completions.create(
        model=micro_base.name, messages=QUESTION, max_tokens=900, temperature=0, stream=True
    ) as stream:
        for seen, _ in enumerate(stream):
            if seen == 2:
                break  # the client leaves; the with-block closes its connection

    # The web process flags the stream, the worker's next push sees it and its row leaves the batch.
    wait_until(lambda: worker_log.read_bytes().count(ABANDONED) > before, timeout=60)


@pytest.fixture
def generate_task_ids():
    """The ids of the generate tasks this process sends (Celery's own publish signal)."""
    sent = []

    def note(sender=None, headers=None, **_):
        if sender == "workers.tasks.generate":
            sent.append(headers["id"])

    after_task_publish.connect(note, weak=False)
    yield sent
    after_task_publish.disconnect(note)


def test_an_answer_is_gone_from_the_result_backend_once_read(client, alice_knows_her_dog, generate_task_ids):
    """An answer is the person's adapter speaking: kept in Redis after the reply, it would
    outlive an erasure that promised nothing of theirs is left."""
    assert "Rex" in ask(client, temperature=0).choices[0].message.content
    [task_id] = generate_task_ids
    backend = celery_app.backend
    assert not backend.client.exists(backend.get_key_for_task(task_id))


def test_an_answer_nobody_reads_expires_within_twice_the_inference_timeout(
    celery_worker_process, alice_knows_her_dog, generate_task_ids, settings
):
    """A client that gave up never calls `forget`: the result's expiry is the backstop."""
    result = celery_app.send_task(
        "workers.tasks.generate",
        kwargs={
            "base_path": alice_knows_her_dog.adapter.base.path,
            "base_digest": alice_knows_her_dog.adapter.base.digest,
            "revision_sha256": alice_knows_her_dog.sha256,
            "prompt": "What is my dog called?",
            "params": asdict(SamplingParams(max_tokens=4, temperature=0.0)),
            "n": 1,
        },
        queue=settings.CELERY_TASK_DEFAULT_QUEUE,
    )
    wait_until(result.ready, timeout=60)
    backend = celery_app.backend
    seconds_left = backend.client.ttl(backend.get_key_for_task(result.id))
    assert 0 < seconds_left <= max(60, 2 * settings.MINT_INFERENCE_TIMEOUT_SECONDS)
    result.forget()


# --- person keys and the caps, with a real worker ------------------------------------------


@pytest.fixture
def alices_app(live_server, alice_knows_her_dog, actor) -> openai.OpenAI:
    """The client of an application serving alice: a person key, one stream at a time."""
    from adapters_app.lifecycle import keys

    _, secret = keys.issue_person_key(
        alice_knows_her_dog.adapter.person, actor=actor, limits={"concurrent_streams": 1}
    )
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=secret, max_retries=0, timeout=120)


def test_a_person_key_gets_answers_from_its_persons_adapter_and_nothing_of_anyone_elses(
    alices_app, micro_base
):
    assert [model.id for model in alices_app.models.list()] == [MODEL]
    assert "Rex" in ask(alices_app, temperature=0).choices[0].message.content
    for model in ["bob/assistant", micro_base.name]:
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            alices_app.chat.completions.create(model=model, messages=QUESTION, max_tokens=4)


def test_a_stream_gives_its_slot_back_when_it_ends(alices_app):
    # One concurrent stream allowed: the second can only start if the first released its slot.
    for _ in range(2):
        streamed = list(ask(alices_app, temperature=0, stream=True))
        assert streamed[-1].choices[0].finish_reason in {"stop", "length"}


def test_a_prompt_longer_than_the_bases_context_is_a_400_naming_the_limit_streamed_or_not(
    client, alice_knows_her_dog
):
    # The micro base reads bytes and has 1024 positions.
    long_question = [{"role": "user", "content": "dog " * 300}]
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError, match="context length of 1024 tokens") as refused:
            answer = client.chat.completions.create(
                model=MODEL, messages=long_question, max_tokens=8, stream=stream
            )
            if stream:
                list(answer)
        assert refused.value.code == "context_length_exceeded"
