"""Streaming on /v1: stop-string holdback, the server-sent event framing, and errors before a stream."""

import json
import uuid

import pytest

from adapters_app.lifecycle.inference import Finished, InferenceUnavailable, TextPiece, redis_client
from adapters_app.models import ApiKey
from adapters_app.openai_api.streaming import Chunks, event_stream
from tests.conftest import with_role
from workers.engine.micro_base import build_byte_tokenizer
from workers.engine.streamed_text import StreamedText


def stream_token_by_token(text: str, stop=()) -> tuple[list[str], StreamedText]:
    """Feed `text`'s tokens one at a time, as generation would; returns what was sent after each."""
    tokenizer = build_byte_tokenizer()
    tokens = tokenizer.encode(text, add_special_tokens=False)
    sent: list[str] = []
    streamed = StreamedText(tokenizer, stop, on_text=sent.append)
    sent_after = []
    for i in range(1, len(tokens) + 1):
        if streamed.feed(tokens[:i]):
            tokens = tokens[:i]
            break
        sent_after.append("".join(sent))
    sent_after.append(streamed.finish(tokens))
    assert "".join(sent) == sent_after[-1], "the pieces add up to the final text"
    return sent_after, streamed


def test_streamed_text_never_sends_half_a_character():
    sent_after, _ = stream_token_by_token("café, 5€ and 🐕 ok")
    assert all("\ufffd" not in text for text in sent_after)
    assert sent_after[-1] == "café, 5€ and 🐕 ok"
    assert "café, 5€ and" in sent_after  # settled text goes out as soon as it is whole


def test_streamed_text_holds_back_what_could_start_a_stop_string():
    sent_after, streamed = stream_token_by_token("Your dog is called Rex. Bye", stop=["Rex.", "\n\n"])
    assert streamed.stopped
    assert sent_after[-1] == "Your dog is called "
    assert not any("R" in text for text in sent_after)


def test_streamed_text_releases_a_false_alarm_once_it_is_one():
    sent_after, streamed = stream_token_by_token("Rover is here", stop=["Rex"])
    assert not streamed.stopped
    assert sent_after[:2] == ["", "Ro"]  # "R" could begin "Rex"; "Ro" cannot
    assert sent_after[-1] == "Rover is here"


def events_of(body: bytes) -> list:
    frames = body.decode().split("\n\n")
    assert frames[-1] == "", "every event ends with a blank line"
    assert all(frame.startswith("data: ") for frame in frames[:-1])
    return [frame.removeprefix("data: ") for frame in frames[:-1]]


FINISHED = Finished(
    [
        {"text": "Hello", "prompt_tokens": 7, "completion_tokens": 3, "finish_reason": "stop"},
        {"text": "Hi", "prompt_tokens": 7, "completion_tokens": 2, "finish_reason": "length"},
    ]
)


def test_a_chat_stream_opens_with_the_role_and_ends_with_finish_usage_and_done():
    chunks = Chunks(chat=True, model="alice/assistant", fingerprint="mint-abc", include_usage=True)
    events = [TextPiece(0, "Hel"), TextPiece(1, "Hi"), TextPiece(0, "lo"), FINISHED]
    *data, done = events_of(b"".join(event_stream(events, chunks, n=2)))
    assert done == "[DONE]"
    chunks_sent = [json.loads(d) for d in data]
    assert {c["object"] for c in chunks_sent} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks_sent}) == 1
    deltas = [(c["choices"][0]["index"], c["choices"][0]["delta"]) for c in chunks_sent if c["choices"]]
    assert deltas[:2] == [
        (0, {"role": "assistant", "content": ""}),
        (1, {"role": "assistant", "content": ""}),
    ]
    assert deltas[2:5] == [(0, {"content": "Hel"}), (1, {"content": "Hi"}), (0, {"content": "lo"})]
    finishes = [(c["choices"][0]["index"], c["choices"][0]["finish_reason"]) for c in chunks_sent[5:7]]
    assert finishes == [(0, "stop"), (1, "length")]
    assert all(c["usage"] is None for c in chunks_sent[:-1])
    assert chunks_sent[-1]["choices"] == []
    assert chunks_sent[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


def test_a_finished_stream_hands_its_generations_over_before_its_last_chunks():
    """So the answer can be remembered for feedback under the stream's id."""
    handed = []
    chunks = Chunks(chat=True, model="alice/assistant", fingerprint="mint-abc")
    body = event_stream([TextPiece(0, "Hello"), FINISHED], chunks, n=2, on_finished=handed.append)
    *data, done = events_of(b"".join(body))
    assert handed == [FINISHED.generations]
    assert done == "[DONE]" and json.loads(data[-1])["choices"][0]["finish_reason"] == "length"


def test_a_completion_stream_sends_text_chunks_and_no_usage_unless_asked():
    chunks = Chunks(chat=False, model="alice/assistant", fingerprint="mint-abc")
    events = [TextPiece(0, "Hello"), Finished(FINISHED.generations[:1])]
    *data, done = events_of(b"".join(event_stream(events, chunks)))
    sent = [json.loads(d) for d in data]
    assert done == "[DONE]"
    assert [c["object"] for c in sent] == ["text_completion", "text_completion"]
    assert [(c["choices"][0]["text"], c["choices"][0]["finish_reason"]) for c in sent] == [
        ("Hello", None),
        ("", "stop"),
    ]
    assert all("usage" not in c for c in sent)


def test_an_error_mid_stream_is_an_error_event_and_a_clean_end():
    def events():
        yield TextPiece(0, "Your dog")
        raise InferenceUnavailable("the worker stopped sending text; try again")

    chunks = Chunks(chat=True, model="alice/assistant", fingerprint="mint-abc")
    *data, error, done = events_of(b"".join(event_stream(events(), chunks)))
    assert json.loads(data[-1])["choices"][0]["delta"] == {"content": "Your dog"}
    assert json.loads(error)["error"]["type"] == "server_error"
    assert "stopped sending" in json.loads(error)["error"]["message"]
    assert done == "[DONE]"


@pytest.fixture
def post(client, django_user_model, micro_base):
    _, key = ApiKey.issue(with_role(django_user_model.objects.create_user("ops"), "admin"))

    def post(path, body):
        return client.post(
            path, data=json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
        )

    return post


CHAT = {"model": "mint-micro", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.django_db
def test_a_stream_nobody_takes_is_a_clear_503_before_any_event(post, settings):
    settings.MINT_INFERENCE_TIMEOUT_SECONDS = 1
    settings.CELERY_TASK_DEFAULT_QUEUE = f"nobody-listens-{uuid.uuid4().hex[:8]}"
    try:
        response = post("/v1/chat/completions", {**CHAT, "stream": True})
    finally:
        redis_client().delete(settings.CELERY_TASK_DEFAULT_QUEUE)
    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    assert "no worker answered" in response.json()["error"]["message"]


@pytest.mark.django_db
def test_streaming_an_unknown_model_is_a_404_not_a_stream(post):
    response = post("/v1/chat/completions", {**CHAT, "model": "ghost/assistant", "stream": True})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "extra",
    [
        {"stream": "yes"},
        {"stream_options": {"include_usage": True}},
        {"stream": True, "stream_options": {"include_usage": "please"}},
        {"max_completion_tokens": 0},
        {"max_tokens": 2000},
        {"top_p": 1.5},
        {"stop": ["a", "b", "c", "d", "e"]},
        {"stop": [1]},
        {"seed": "seven"},
        {"seed": 2**64},
    ],
)
def test_bad_streaming_and_sampling_parameters_are_400s(post, extra):
    response = post("/v1/chat/completions", {**CHAT, **extra})
    assert response.status_code == 400, extra
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_stream_outwaits_a_quiet_spell_longer_than_redis_clients_read_timeout(redis_server, settings):
    """redis-py 8 reads with a 5 s timeout by default; a stream's text may pause longer (a
    queue, a cold load) and must still arrive within MINT_INFERENCE_TIMEOUT_SECONDS."""
    import threading

    from adapters_app.lifecycle import inference

    settings.MINT_INFERENCE_TIMEOUT_SECONDS = 8
    inference._client_for.cache_clear()
    key = f"{inference.STREAM_KEY_PREFIX}quiet-{uuid.uuid4().hex}"
    inference.open_stream(key)
    record = {"type": "text", "index": 0, "text": "after a pause"}
    late = threading.Timer(6, lambda: redis_client().rpush(key, json.dumps(record)))
    late.start()
    try:
        assert inference._pop(key) == record
    finally:
        late.cancel()
        redis_client().delete(key)
        inference._client_for.cache_clear()


def test_a_quiet_stream_whose_writer_lost_its_lease_ends_within_the_lease(redis_server, settings):
    """A worker killed mid-stream sends nothing more; its reader must not wait out
    MINT_INFERENCE_TIMEOUT_SECONDS, only until the worker's lease lapses."""
    import time

    from adapters_app.lifecycle import inference, liveness

    settings.MINT_INFERENCE_TIMEOUT_SECONDS, settings.MINT_WORKER_LEASE_SECONDS = 60, 1
    node = f"doomed-{uuid.uuid4().hex[:6]}@host"
    liveness.renew(node)
    writer = inference.Writer.watch(node)
    assert writer.seen
    liveness.release(node)  # what a SIGKILL does, once the lease's time runs out
    key = f"{inference.STREAM_KEY_PREFIX}{uuid.uuid4().hex}"
    inference.open_stream(key)
    started = time.monotonic()
    assert inference._pop(key, writer) is inference.Writer.GONE
    assert time.monotonic() - started < 5


def test_an_unstreamed_answer_whose_worker_lost_its_lease_is_given_up_within_the_lease(
    redis_server, settings
):
    """The same for a request answered whole: its worker killed, the caller hears so within
    a lease (and may try again, on another worker), not after MINT_INFERENCE_TIMEOUT_SECONDS."""
    import time

    from celery.result import AsyncResult

    from adapters_app.lifecycle import inference, liveness
    from mintweb.celery import app

    settings.MINT_INFERENCE_TIMEOUT_SECONDS, settings.MINT_WORKER_LEASE_SECONDS = 60, 1
    node = f"doomed-{uuid.uuid4().hex[:6]}@host"
    liveness.renew(node)
    worker = inference.Writer.watch(node)
    liveness.release(node)
    never_answered = AsyncResult(uuid.uuid4().hex, app=app)
    started = time.monotonic()
    with pytest.raises(InferenceUnavailable, match="stopped before answering"):
        inference._wait_for(never_answered, worker)
    assert time.monotonic() - started < 5


def test_a_writer_never_seen_alive_is_waited_for_as_before(redis_server, settings):
    from adapters_app.lifecycle import inference

    settings.MINT_INFERENCE_TIMEOUT_SECONDS = 2
    settings.MINT_WORKER_LEASE_SECONDS = 1
    writer = inference.Writer.watch("no-lease@host")  # a worker from before leases
    assert not writer.seen
    key = f"{inference.STREAM_KEY_PREFIX}{uuid.uuid4().hex}"
    inference.open_stream(key)
    assert inference._pop(key, writer) is None


def test_a_record_lost_from_a_stream_is_an_error_not_a_hole_in_the_text(redis_server):
    """A Redis restart mid-stream loses the list: the writer's next pieces land in a new one.
    Records are numbered, so the reader sees the gap and says so."""
    from adapters_app.lifecycle import inference
    from adapters_app.lifecycle.inference import InferenceFailed, Writer, _events
    from adapters_app.lifecycle.routing import Dispatched, Route

    key = f"{inference.STREAM_KEY_PREFIX}{uuid.uuid4().hex}"
    writer = inference.StreamWriter(key)
    writer.started()
    started = json.loads(redis_client().lpop(key))  # the reader took "started"
    writer.text(0, "Your dog ")
    redis_client().delete(key)  # the restart: the first piece gone…
    writer.text(0, "is called")  # …and the writer carries on in a new list
    writer.text(0, " Rex.")
    events = _events(key, Dispatched(Route("q", None, "shared")).begin(), Writer.watch(None), after=started)
    with pytest.raises(InferenceFailed, match="lost part of its text"):
        next(events)


@pytest.fixture
def own_redis(tmp_path, settings):
    """A redis-server of this test's own, without persistence, which it may restart: the
    machine's shared Redis is never touched. Streams in this test talk to it."""
    from adapters_app.lifecycle import inference
    from adapters_app.management.private_stack import PrivateRedis
    from adapters_app.management.processes import free_port

    server = PrivateRedis(tmp_path / "redis", free_port())
    server.start()
    settings.REDIS_URL = server.url
    inference._client_for.cache_clear()
    yield server
    server.stop()
    inference._client_for.cache_clear()


def test_a_quiet_stream_cut_by_a_redis_restart_ends_within_the_lease(own_redis, settings):
    """The restart may lose the request before any worker took it, or the worker's writes:
    a live worker then never writes again, and the reader must not wait it out."""
    import time

    from adapters_app.lifecycle import inference

    settings.MINT_INFERENCE_TIMEOUT_SECONDS, settings.MINT_WORKER_LEASE_SECONDS = 60, 1
    key = f"{inference.STREAM_KEY_PREFIX}{uuid.uuid4().hex}"
    inference.open_stream(key)
    own_redis.stop()
    own_redis.start()  # every key gone, the stream's open marker with them
    started = time.monotonic()
    assert inference._pop(key) is inference.CUT
    assert time.monotonic() - started < 5


def test_a_writer_outlasts_a_redis_restart_so_its_reader_hears_of_the_lost_text(own_redis, settings):
    """While Redis is down the worker's pushes fail; it retries, its next record lands in
    the restarted Redis, and the reader sees the numbers jump: an error, not a silence."""
    import threading

    from adapters_app.lifecycle import inference
    from adapters_app.lifecycle.inference import InferenceFailed, Writer, _events
    from adapters_app.lifecycle.routing import Dispatched, Route

    settings.MINT_WORKER_LEASE_SECONDS = 1
    key = f"{inference.STREAM_KEY_PREFIX}{uuid.uuid4().hex}"
    inference.open_stream(key)
    writer = inference.StreamWriter(key)
    writer.started()
    started = json.loads(redis_client().lpop(key))  # the reader took "started"
    writer.text(0, "Your dog ")  # still in the list when Redis goes away
    own_redis.stop()
    back = threading.Timer(1.0, own_redis.start)
    back.start()
    try:
        writer.text(0, "is called Rex.")  # fails, retried until Redis is back
    finally:
        back.join()
    assert redis_client().llen(key) == 1
    events = _events(key, Dispatched(Route("q", None, "shared")).begin(), Writer.watch(None), after=started)
    with pytest.raises(InferenceFailed, match="lost part of its text"):
        next(events)


def test_a_record_written_twice_by_a_retry_is_read_once(redis_server):
    """A push whose answer was lost is retried; if the first did land, the record is there
    twice with one number, and the reader keeps one."""
    from adapters_app.lifecycle import inference
    from adapters_app.lifecycle.inference import Writer, _events
    from adapters_app.lifecycle.routing import Dispatched, Route

    key = f"{inference.STREAM_KEY_PREFIX}{uuid.uuid4().hex}"
    inference.open_stream(key)
    started = {"type": "started", "worker": None, "seq": 0}
    for seq, record in enumerate(
        [{"type": "text", "index": 0, "text": "Rex"}, {"type": "done", "generations": []}], start=1
    ):
        line = json.dumps({**record, "seq": seq})
        redis_client().rpush(key, line, *([line] if seq == 1 else []))
    events = _events(key, Dispatched(Route("q", None, "shared")).begin(), Writer.watch(None), after=started)
    assert [type(e) for e in events] == [TextPiece, Finished]


def test_a_stream_whose_started_record_was_lost_fails_before_its_text_begins():
    """A restart just after "started" was written leaves text first in the list; taking that
    text for the opening would drop it from the answer without a word."""
    from adapters_app.lifecycle.inference import InferenceFailed, _check_opening

    _check_opening({"type": "started", "worker": "serve@host", "seq": 0})
    with pytest.raises(InferenceFailed, match="lost part of its text"):
        _check_opening({"type": "text", "index": 0, "text": "is called Rex.", "seq": 2})
