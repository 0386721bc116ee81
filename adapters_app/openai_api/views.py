"""/v1/models, /v1/completions and /v1/chat/completions in OpenAI's shapes.

Requests are validated against `schemas` by ninja (declared once, documented in
/api/openapi.json); response shaping lives here (streamed chunks in `streaming`); resolution
of `model` and generation are the lifecycle's and the worker's.
"""

import functools
import time
import uuid
from dataclasses import dataclass, replace

from django.http import JsonResponse, StreamingHttpResponse
from ninja import Router

from adapters_app.lifecycle import inference, limits, updates
from adapters_app.lifecycle.errors import Invalid
from adapters_app.metrics.http import count_tokens
from adapters_app.models import Adapter, BaseModel, Revision
from adapters_app.openai_api import schemas
from adapters_app.openai_api.streaming import Chunks, error_object, event_stream, usage
from workers.engine.examples import Message
from workers.engine.runtime import SamplingParams

MODELS_LISTED = 1000

router = Router()


def openai_error(status: int, code: str, message: str, details: object = None) -> JsonResponse:
    return JsonResponse(error_object(status, code, message, details), status=status)


def _errors(*statuses: int) -> dict:
    return {frozenset(statuses): schemas.OpenAIError}


@router.get("/models", response={200: schemas.ModelList, **_errors(401, 429)}, url_name="models")
def models(request):
    """The base models and every adapter with a live revision; for a person key, only what
    it may ask."""
    created = int(time.time())
    scope = request.key_scope
    bases = BaseModel.objects.all()
    adapters = Adapter.objects.filter(live_revision__isnull=False)
    if scope is not None:
        bases, adapters = scope.bases(bases), scope.adapters(adapters)
    data = [
        {"id": b.name, "object": "model", "created": int(b.created_at.timestamp()), "owned_by": "mint"}
        for b in bases
    ]
    live = adapters.select_related("person").order_by("person__handle", "name")[:MODELS_LISTED]
    data += [
        {"id": a.handle, "object": "model", "created": created, "owned_by": a.person.handle} for a in live
    ]
    return {"object": "list", "data": data}


@router.post(
    "/completions",
    response={200: schemas.Completion, **_errors(400, 401, 404, 413, 429, 503)},
    url_name="completions",
    openapi_extra=schemas.EVENT_STREAM,
)
def completions(request, payload: schemas.CompletionRequest):
    """A completion of `prompt`; with `stream: true`, server-sent chunks."""
    prompt = payload.prompt
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise Invalid("prompt must be a non-empty string")
    call = Call.parse(payload, request)
    if call.stream:
        return _streamed(call, prompt, chat=False)
    result = call.complete(prompt)
    choices = [
        {"index": i, "text": g["text"], "logprobs": None, "finish_reason": g["finish_reason"]}
        for i, g in enumerate(result["generations"])
    ]
    return _response("text_completion", "cmpl", call.model, result, choices, prompt)


@router.post(
    "/chat/completions",
    response={200: schemas.ChatCompletion, **_errors(400, 401, 404, 413, 429, 503)},
    url_name="chat-completions",
    openapi_extra=schemas.EVENT_STREAM,
)
def chat_completions(request, payload: schemas.ChatCompletionRequest):
    """The assistant's next message; with `stream: true`, server-sent chunks."""
    messages = [Message(m.role, m.content) for m in payload.messages]
    call = Call.parse(payload, request, chat=True)
    # The worker renders the conversation with the base's own chat template.
    if call.stream:
        return _streamed(call, messages, chat=True)
    result = call.complete(messages)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": g["text"]},
            "logprobs": None,
            "finish_reason": g["finish_reason"],
        }
        for i, g in enumerate(result["generations"])
    ]
    return _response("chat.completion", "chatcmpl", call.model, result, choices, messages)


@dataclass(frozen=True, slots=True)
class Call:
    """What a completion request asks for, validated before anything reaches a worker: the
    model within the key's scope, and the key's tokens (and stream slot) reserved."""

    model: str
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    admission: limits.Admission | None = None  # taken by `parse`, for the caller's key

    @classmethod
    def read(cls, payload: schemas.Sampling, *, chat: bool = False) -> "Call":
        """What `payload` asks for, whoever asks."""
        options = payload.stream_options
        return cls(
            model=payload.model,
            params=sampling_params(payload, chat=chat),
            n=payload.n or 1,
            stream=bool(payload.stream),
            include_usage=bool(options and options.include_usage),
        )

    @classmethod
    def parse(cls, payload: schemas.Sampling, request, *, chat: bool = False) -> "Call":
        """What `payload` asks for, once the caller's key may ask it: the model within the
        key's scope, the key's tokens (and a stream slot) taken."""
        if request.key_scope is not None:
            request.key_scope.admit(payload.model, path=request.path)
        call = cls.read(payload, chat=chat)
        admission = limits.admit_generation(
            request.api_key, max_tokens=call.params.max_tokens, n=call.n, stream=call.stream
        )
        return replace(call, admission=admission)

    def complete(self, prompt: inference.Prompt) -> dict:
        try:
            result = inference.complete(self.model, prompt, self.params, n=self.n)
        except BaseException:
            self.admission.finish(0)  # nothing was generated: nothing is charged
            raise
        self.settle(result["generations"])
        return result

    def settle(self, generations: list[dict]) -> None:
        """The answer is known: charge the key what it used, and count the tokens."""
        used = usage(generations)
        self.admission.finish(used["total_tokens"])
        count_tokens(used["prompt_tokens"], used["completion_tokens"])


def _streamed(call: Call, prompt: inference.Prompt, *, chat: bool) -> StreamingHttpResponse:
    # Errors up to here (unknown model, no worker) are still ordinary JSON error responses.
    try:
        stream = inference.stream(call.model, prompt, call.params, n=call.n)
    except BaseException:
        call.admission.finish(0)
        raise
    chunks = Chunks(
        chat=chat,
        model=call.model,
        fingerprint=_fingerprint(stream.base, stream.revision),
        include_usage=call.include_usage,
    )
    remember = functools.partial(
        updates.remember_answer, chunks.head["id"], revision=stream.revision, prompt=prompt
    )

    def finished(generations: list[dict]) -> None:
        call.settle(generations)
        remember(generations=generations)

    response = StreamingHttpResponse(
        event_stream(stream.events, chunks, n=call.n, on_finished=finished, on_closed=call.admission.finish)
    )
    response["Content-Type"] = "text/event-stream"
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a proxy must not hold tokens back
    return response


def sampling_params(request: schemas.Sampling, *, chat: bool = False) -> SamplingParams:
    """The engine's parameters; a field left out (or null) takes OpenAI's default."""
    stop = request.stop or ()
    max_tokens = request.max_tokens
    # Chat's newer name for max_tokens wins when both are given.
    if chat and request.max_completion_tokens is not None:
        max_tokens = request.max_completion_tokens
    return SamplingParams(
        max_tokens=16 if max_tokens is None else max_tokens,
        temperature=1.0 if request.temperature is None else float(request.temperature),
        top_p=1.0 if request.top_p is None else float(request.top_p),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        seed=request.seed,
    )


def _fingerprint(base: BaseModel, revision: Revision | None) -> str:
    return f"mint-{revision.sha256[:12]}" if revision else f"base-{base.digest[:12]}"


def _response(kind: str, prefix: str, model: str, result: dict, choices: list, prompt) -> dict:
    revision = result["revision"]
    completion_id = f"{prefix}-{uuid.uuid4().hex}"
    # Kept a while, so the application can send feedback on this answer (POST /api/feedback).
    updates.remember_answer(
        completion_id, revision=revision, prompt=prompt, generations=result["generations"]
    )
    return {
        "id": completion_id,
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": _fingerprint(result["base"], revision),
        "choices": choices,
        "usage": usage(result["generations"]),
        "mint": {
            "revision": revision.label if revision else None,
            "sha256": revision.sha256 if revision else None,
            "base": result["base"].name,
            # Which worker the router chose and why: "resident" (it held the adapter in
            # memory), "disk" (on its local disk), "cold" (least loaded, loads it now)
            # or "shared" (no worker reported yet).
            "worker": result["route"].worker,
            "route": result["route"].reason,
        },
    }
