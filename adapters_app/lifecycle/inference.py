"""Inference requests: resolved here, generated on a worker through Celery.

A non-streamed request waits for the task's result. A streamed one gives the
task a Redis list to write to: the worker pushes a "started" record when it
takes the request, a "text" record for each piece of settled text, and ends
with "done" (finish reasons and token counts) or "error"; the web process pops
them as they come. Both ends of that list live in this module. A reader that
goes away before the end (the client disconnected) leaves a flag beside the
list; the worker sees it with its next push (same round trip) and stops
generating, so an abandoned stream frees its batch slot at once rather than
after max_tokens.

A Redis restart can cut a stream three ways: the list loses records (they are numbered,
so the reader sees the hole), the request's Celery message is lost before any worker
took it, or the worker's writes fail while Redis is away. The last two leave the reader
waiting on a worker that is alive but will never write, so the reader also holds an
"open" marker beside the list: a quiet stream whose marker vanished was cut by a restart
and ends at once with a clear error, rather than after MINT_INFERENCE_TIMEOUT_SECONDS.
The writer, for its part, retries a failed write for a few seconds (a restart's length),
so a stream that lost nothing carries on and an error record still reaches its reader.

A later issue replaces the one-request-per-task path with continuous
heterogeneous batching; callers keep this interface.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import redis
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from django.conf import settings

from adapters_app.lifecycle import liveness, routing
from adapters_app.lifecycle.errors import LifecycleError
from adapters_app.lifecycle.revisions import resolve_model
from adapters_app.models import BaseModel, Revision
from mintweb.celery import app as celery_app
from workers.engine.examples import Message
from workers.engine.runtime import SamplingParams

STREAM_KEY_PREFIX = "mint:stream:"

log = logging.getLogger(__name__)


class InferenceUnavailable(LifecycleError):
    status = 503
    code = "service_unavailable"


class InferenceFailed(LifecycleError):
    status = 500
    code = "server_error"


class ContextLengthExceeded(LifecycleError):
    """The prompt and max_tokens do not fit the base's context (the worker counted, in the
    base's own tokens)."""

    status = 400
    code = "context_length_exceeded"


class ReaderGone(Exception):
    """The web process stopped reading a stream (its client went away): stop generating."""


# A raw prompt (completions), or a conversation (chat) the worker renders with the base's
# own chat template: only the worker holds the base's tokenizer.
Prompt = str | Sequence[Message]


def complete(model: str, prompt: Prompt, params: SamplingParams, *, n: int = 1) -> dict:
    """Generate `n` completions of `prompt` (raw text, or messages) for `model`."""
    base, revision = resolve_model(model)
    chosen = routing.route(revision.sha256 if revision else base.digest)
    with routing.Dispatched(chosen):
        result = _send(base, revision, prompt, params, n, queue=chosen.queue)
        try:
            generations = _wait_for(result, Writer.watch(chosen.worker))
        except InferenceUnavailable:
            raise
        except Exception as exc:  # the worker's exception, re-raised by Celery
            # Celery rebuilds the worker's exception here; a prompt too long is the caller's.
            if type(exc).__name__ == "PromptTooLong":
                raise ContextLengthExceeded(str(exc)) from None
            raise InferenceFailed(f"generation failed on the worker: {exc}") from None
        finally:
            # An answer is the person's adapter speaking: once read (or given up on) it
            # must not wait in the result backend, where an erasure would not find it.
            # CELERY_RESULT_EXPIRES bounds one the worker writes after we gave up.
            result.forget()
    return {
        "base": base,
        "revision": revision,
        "generations": generations,
        "route": chosen,
    }


def _wait_for(result: AsyncResult, worker: Writer) -> list[dict]:
    """The task's result, waited for in slices of a lease: a worker killed while it held the
    request is given up on once its lease lapses, not after MINT_INFERENCE_TIMEOUT_SECONDS."""
    deadline = time.monotonic() + settings.MINT_INFERENCE_TIMEOUT_SECONDS
    while True:
        left = deadline - time.monotonic()
        try:
            return result.get(timeout=max(1, min(left, settings.MINT_WORKER_LEASE_SECONDS)))
        except CeleryTimeout:
            if worker.gone():
                result.revoke()
                raise InferenceUnavailable(
                    f"worker {worker.node} stopped before answering; try again"
                ) from None
            if time.monotonic() >= deadline:
                result.revoke()
                raise InferenceUnavailable("no worker answered in time; is a worker running?") from None


@dataclass(frozen=True, slots=True)
class TextPiece:
    index: int  # which of the `n` choices
    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    generations: list[dict]  # per choice: text, prompt_tokens, completion_tokens, finish_reason


@dataclass(slots=True)
class TextStream:
    """A streamed request a worker has taken: iterate `events` for its text as it is generated.

    `events` yields TextPiece records and ends with one Finished; it raises InferenceFailed
    when the worker reports an error and InferenceUnavailable when the worker goes quiet."""

    base: BaseModel
    revision: Revision | None
    events: Iterator[TextPiece | Finished]
    route: routing.Route


def stream(model: str, prompt: Prompt, params: SamplingParams, *, n: int = 1) -> TextStream:
    """Like `complete`, but returns once a worker has taken the request; the text follows."""
    base, revision = resolve_model(model)
    key = f"{STREAM_KEY_PREFIX}{uuid.uuid4().hex}"
    chosen = routing.route(revision.sha256 if revision else base.digest)
    # Counted as the worker's load until the stream ends (or is abandoned).
    dispatched = routing.Dispatched(chosen).begin()
    try:
        open_stream(key)
        # Resolve first: a 404 or a missing worker is still an HTTP error, not an event in a stream.
        result = _send(base, revision, prompt, params, n, stream_key=key, queue=chosen.queue)
        first = _pop(key, Writer.watch(chosen.worker))
        if first is None or first is Writer.GONE or first is CUT:
            result.revoke()
            if first is Writer.GONE:
                raise InferenceUnavailable(
                    f"worker {chosen.worker} stopped before taking the request; try again"
                )
            if first is CUT:
                raise InferenceUnavailable(_CUT_MESSAGE)
            raise InferenceUnavailable("no worker answered in time; is a worker running?")
        _check_opening(first)
    except BaseException:
        _close(key, abandoned=True)
        dispatched.end()
        raise
    writer = Writer.watch(first.get("worker") or chosen.worker)
    return TextStream(base, revision, _events(key, dispatched, writer, after=first), chosen)


def _check_opening(first: dict) -> None:
    """A stream opens with the worker's "started" (number 0) or its error."""
    if first["type"] == "error":
        raise _failure(first)
    if first["type"] != "started" or first.get("seq", 0) != 0:
        # "started" was lost (Redis restarted just after it was written): what came first
        # is text, and reading on from it would drop it without a word.
        raise InferenceFailed(_LOST_MESSAGE)


class Writer:
    """The worker writing a stream, watched through its lease (`liveness`): a reader whose
    stream went quiet asks whether the writer still lives, and gives up at once if not.
    Only a writer seen alive once is judged (a worker without leases never is)."""

    GONE = object()  # what `_pop` returns when the writer's lease lapsed

    def __init__(self, node: str | None):
        self.node = node
        self.seen = node is not None and liveness.is_alive(node)

    @classmethod
    def watch(cls, node: str | None) -> Writer:
        return cls(node)

    def gone(self) -> bool:
        return self.seen and not liveness.is_alive(self.node)


def _events(
    key: str, dispatched: routing.Dispatched, writer: Writer, *, after: dict
) -> Iterator[TextPiece | Finished]:
    """The stream's records after `after` (the one `stream` read first)."""
    ended = False  # the worker said it is done, or failed: it is not generating any more
    previous = after
    expected = None if after.get("seq") is None else after["seq"] + 1
    try:
        while True:
            record = _pop(key, writer)
            if record is Writer.GONE:
                raise InferenceUnavailable(
                    f"worker {writer.node} stopped while writing this stream; try again"
                )
            if record is CUT:
                raise InferenceUnavailable(_CUT_MESSAGE)
            if record is None:
                raise InferenceUnavailable("the worker stopped sending text; try again")
            if record == previous:
                continue  # a write the worker retried after its answer was lost: it landed twice
            previous = record
            if expected is not None:
                # Records are numbered: one missing means the list lost some (Redis restarted
                # under it). Better a clear error than an answer with a hole in it.
                if record.get("seq") != expected:
                    raise InferenceFailed(_LOST_MESSAGE)
                expected += 1
            if record["type"] == "text":
                yield TextPiece(record["index"], record["text"])
            elif record["type"] == "done":
                ended = True
                yield Finished(record["generations"])
                return
            elif record["type"] == "error":
                ended = True
                raise _failure(record)
    finally:
        # Also when the client went away mid-stream: nobody will read what is left, and the
        # worker is told to stop generating it.
        try:
            _close(key, abandoned=not ended)
        finally:
            dispatched.end()


def _close(key: str, *, abandoned: bool) -> None:
    """The reader is done with `key`: drop the list and its marker; if the worker may still
    be generating, tell it to stop. Redis being away is no reason to fail here: the keys
    expire by themselves."""
    try:
        pipe = redis_client().pipeline(transaction=False)
        pipe.delete(key, open_key(key))
        if abandoned:
            pipe.set(gone_key(key), 1, ex=stream_ttl())
        pipe.execute()
    except redis.RedisError:
        log.warning("could not close stream %s; its keys will expire", key, exc_info=True)


def _failure(record: dict) -> LifecycleError:
    """The error a worker's error record stands for."""
    if record.get("code") == ContextLengthExceeded.code:
        return ContextLengthExceeded(record["message"].partition(": ")[2])
    return InferenceFailed(f"generation failed on the worker: {record['message']}")


def gone_key(key: str) -> str:
    """Set when a stream's reader has gone away."""
    return f"{key}:gone"


def open_key(key: str) -> str:
    """Held by a stream's reader while it reads: gone without it closing, Redis restarted."""
    return f"{key}:open"


def open_stream(key: str) -> None:
    """Mark `key` as read (before its request is sent, so a restart after is noticed)."""
    redis_client().set(open_key(key), 1, ex=stream_ttl())


# What `_pop` returns when the stream's open marker vanished: Redis restarted under it.
CUT = object()
_CUT_MESSAGE = "the stream was cut: Redis restarted while it was being written; try again"
_LOST_MESSAGE = "the stream lost part of its text on the way; try again"


def stream_ttl() -> int:
    """How long a stream's keys may outlive a reader or writer that vanished."""
    return max(60, 2 * settings.MINT_INFERENCE_TIMEOUT_SECONDS)


def _pop(key: str, writer: Writer | None = None) -> dict | object | None:
    """The stream's next record; None after MINT_INFERENCE_TIMEOUT_SECONDS of silence,
    Writer.GONE as soon as a silence finds the writer's lease lapsed, CUT as soon as one
    finds the stream's open marker gone (or Redis unreachable)."""
    silent_until = time.monotonic() + settings.MINT_INFERENCE_TIMEOUT_SECONDS
    while (left := silent_until - time.monotonic()) > 0:
        # Wake once a lease: to judge the writer, and to see whether Redis restarted.
        wait = min(left, settings.MINT_WORKER_LEASE_SECONDS)
        try:
            popped = redis_client().blpop([key], timeout=max(1, round(wait)))
            if popped:
                return json.loads(popped[1])
            # EXPIRE both asks and renews: 0 when the marker is gone (a long stream
            # outlives the marker's first time to live otherwise).
            if not redis_client().expire(open_key(key), stream_ttl()):
                return CUT
        except (redis.ConnectionError, redis.TimeoutError):
            # redis-py has already retried; whatever comes back has lost the stream.
            log.warning("lost Redis while reading stream %s", key, exc_info=True)
            return CUT
        if writer is not None and writer.gone():
            return Writer.GONE
    return None


class StreamWriter:
    """The worker's end of a streamed request's Redis list."""

    PUSH_RETRY_SECONDS = 15.0  # longer than a Redis restart takes, shorter than a reader waits

    def __init__(self, key: str, worker: str | None = None):
        self.key, self.worker = key, worker
        # The reader deletes the list when it is done; this bounds one whose reader vanished.
        self.ttl = stream_ttl()
        self.seq = 0  # each record's number, so the reader notices one lost
        self.has_started = False

    def started(self) -> None:
        """Taken: by `worker` (its Celery node name), whose lease the reader may watch. Said
        once, however many paths the request took to a generator."""
        if not self.has_started:
            self.has_started = True
            self._push({"type": "started", "worker": self.worker})

    def text(self, index: int, text: str) -> None:
        """Push a piece; raises ReaderGone once nobody reads the stream any more."""
        if self._push({"type": "text", "index": index, "text": text}):
            redis_client().delete(self.key)  # what was pushed after the reader left
            raise ReaderGone(f"the stream's reader went away ({self.key})")

    def done(self, generations: list[dict]) -> None:
        self._push({"type": "done", "generations": generations})

    def error(self, message: str, code: str | None = None) -> None:
        """`message` is "<exception class>: <what it said>"; `code` an error code the web
        answers with (a prompt too long), if any."""
        self._push({"type": "error", "message": message, "code": code})

    def _push(self, record: dict) -> bool:
        """Push a record; True when the reader has gone away (asked in the same round trip).
        A write that fails is tried again for up to PUSH_RETRY_SECONDS: a Redis restart
        should cost the reader a clear error (a gap in the numbers), not a silent stream."""
        line = json.dumps({**record, "seq": self.seq})
        self.seq += 1
        give_up = time.monotonic() + self.PUSH_RETRY_SECONDS
        while True:
            try:
                pipe = redis_client().pipeline(transaction=False)
                pipe.rpush(self.key, line)
                pipe.expire(self.key, self.ttl)
                pipe.exists(gone_key(self.key))
                return bool(pipe.execute()[-1])
            except (redis.ConnectionError, redis.TimeoutError):
                if time.monotonic() >= give_up:
                    raise
                time.sleep(0.25)


def redis_client() -> redis.Redis:
    """A client for settings.REDIS_URL (one connection pool per process and URL)."""
    return _client_for(settings.REDIS_URL)


@functools.cache
def _client_for(url: str) -> redis.Redis:
    # The embedded server's `redis+socket://` URL (kombu's name) is `unix://` to redis-py.
    # redis-py 8 gives a socket a 5 s read timeout unless told otherwise, and a stream's
    # BLPOP blocks up to MINT_INFERENCE_TIMEOUT_SECONDS: the socket must outwait it, or a
    # long answer's quiet spell (a queue, a cold load) ends in a timeout inside the stream.
    return redis.Redis.from_url(
        url.replace("redis+socket://", "unix://", 1),
        socket_timeout=settings.MINT_INFERENCE_TIMEOUT_SECONDS + 10,
        socket_connect_timeout=5,
    )


def _send(
    base: BaseModel,
    revision: Revision | None,
    prompt: Prompt,
    params: SamplingParams,
    n: int,
    stream_key: str | None = None,
    *,
    queue: str,
) -> AsyncResult:
    request = {
        "base_path": base.path,
        "base_digest": base.digest,
        "revision_sha256": revision.sha256 if revision else None,
        **(
            {"prompt": prompt}
            if isinstance(prompt, str)
            else {"messages": [{"role": m.role, "content": m.content} for m in prompt]}
        ),
        "params": asdict(params),
        "n": n,
    }
    options = {}
    if stream_key is not None:
        # The text comes through the stream; storing the task's result too would only leak it.
        request["stream_key"] = stream_key
        options["ignore_result"] = True
    return celery_app.send_task(
        "workers.tasks.generate",
        kwargs=request,
        queue=queue,
        # Nobody waits for an answer after this: a worker that comes later must not run it.
        expires=settings.MINT_INFERENCE_TIMEOUT_SECONDS,
        **options,
    )
