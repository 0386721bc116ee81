"""Server-sent events in OpenAI's chunk format, made from a worker's text stream.

Each event is `data: {json}\\n\\n`; the stream ends with `data: [DONE]\\n\\n`. Chat streams
open each choice with a `role: assistant` delta; every choice ends with a chunk carrying
its `finish_reason`; with `stream_options.include_usage` a last chunk (no choices) carries
the usage. An error after the stream began is an `{"error": ...}` event, then the end.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator

from adapters_app.lifecycle.errors import LifecycleError
from adapters_app.lifecycle.inference import Finished, TextPiece

DONE = b"data: [DONE]\n\n"

log = logging.getLogger(__name__)


def sse(payload: dict) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


def error_object(status: int, code: str, message: str, details: object = None) -> dict:
    kind = {
        401: "authentication_error",
        403: "permission_error",
        404: "invalid_request_error",
        429: "rate_limit_error",
        503: "server_error",
    }.get(status, "invalid_request_error" if status < 500 else "server_error")
    # Our NotFound under /v1 is a model (or revision) that does not exist.
    code = "model_not_found" if code == "not_found" else code
    # OpenAI names the one field at fault in `param`.
    param = next(iter(details)) if isinstance(details, dict) and len(details) == 1 else None
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(generations: list[dict]) -> dict:
    """OpenAI counts the prompt once however many choices there are."""
    prompt_tokens = generations[0]["prompt_tokens"] if generations else 0
    completion_tokens = sum(g["completion_tokens"] for g in generations)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class Chunks:
    """The chunk objects of one streamed response (they share its id, creation time and model)."""

    def __init__(self, *, chat: bool, model: str, fingerprint: str, include_usage: bool = False):
        self.chat = chat
        self.include_usage = include_usage
        self.head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": fingerprint,
        }

    def opening(self, index: int) -> dict:
        return self._chunk(index, {"role": "assistant", "content": ""})

    def text(self, index: int, text: str) -> dict:
        return self._chunk(index, {"content": text} if self.chat else text)

    def finish(self, index: int, reason: str) -> dict:
        return self._chunk(index, {} if self.chat else "", reason)

    def usage(self, generations: list[dict]) -> dict:
        return {**self.head, "choices": [], "usage": usage(generations)}

    def _chunk(self, index: int, delta: dict | str, finish_reason: str | None = None) -> dict:
        choice = {"index": index, "logprobs": None, "finish_reason": finish_reason}
        choice["delta" if self.chat else "text"] = delta
        chunk = {**self.head, "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None  # as OpenAI does: only the last chunk carries it
        return chunk


def event_stream(
    events: Iterable[TextPiece | Finished],
    chunks: Chunks,
    *,
    n: int = 1,
    on_finished: Callable[[list[dict]], None] | None = None,
    on_closed: Callable[[], None] | None = None,
) -> Iterator[bytes]:
    """The response body: the worker's events as OpenAI chunks, always ending cleanly.
    `on_finished` gets the generations once the worker is done (before the last chunks);
    `on_closed` runs however the stream ends (finished, failed, or its client gone)."""
    try:
        if chunks.chat:
            for index in range(n):
                yield sse(chunks.opening(index))
        for event in events:
            if isinstance(event, TextPiece):
                yield sse(chunks.text(event.index, event.text))
                continue
            if on_finished is not None:
                on_finished(event.generations)
            for index, generation in enumerate(event.generations):
                yield sse(chunks.finish(index, generation["finish_reason"]))
            if chunks.include_usage:
                yield sse(chunks.usage(event.generations))
    except LifecycleError as exc:
        # The status line went out with the first chunk; an error now can only be an event.
        yield sse(error_object(exc.status, exc.code, exc.message))
    except Exception:
        log.exception("a streamed response failed")
        yield sse(error_object(500, "server_error", "the stream failed on the server"))
    finally:
        # Closed early when the client went away: the worker is told to stop at once.
        close = getattr(events, "close", None)
        if close is not None:
            close()
        if on_closed is not None:
            on_closed()
    yield DONE
