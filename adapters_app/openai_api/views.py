"""/v1/models, /v1/completions and /v1/chat/completions in OpenAI's shapes.

Request parsing and response shaping live here (streamed chunks in `streaming`);
resolution of `model` and generation are the lifecycle's and the worker's.
"""

import time
import uuid
from dataclasses import dataclass

from django.http import JsonResponse, StreamingHttpResponse

from adapters_app.api.auth import api_endpoint, json_body
from adapters_app.lifecycle import inference
from adapters_app.lifecycle.errors import Invalid
from adapters_app.models import Adapter, BaseModel, Revision
from adapters_app.openai_api.streaming import Chunks, error_object, event_stream, usage
from workers.engine.examples import ROLES, Message
from workers.engine.runtime import SamplingParams

MODELS_LISTED = 1000


def openai_error(status: int, code: str, message: str, details: object = None) -> JsonResponse:
    return JsonResponse(error_object(status, code, message), status=status)


@api_endpoint("GET", render_error=openai_error)
def models(request):
    created = int(time.time())
    data = [
        {"id": b.name, "object": "model", "created": int(b.created_at.timestamp()), "owned_by": "mint"}
        for b in BaseModel.objects.all()
    ]
    live = (
        Adapter.objects.filter(live_revision__isnull=False)
        .select_related("person")
        .order_by("person__handle", "name")[:MODELS_LISTED]
    )
    data += [
        {"id": a.handle, "object": "model", "created": created, "owned_by": a.person.handle} for a in live
    ]
    return JsonResponse({"object": "list", "data": data})


@api_endpoint("POST", render_error=openai_error)
def completions(request):
    body = json_body(request)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise Invalid("prompt must be a non-empty string")
    call = Call.parse(body)
    if call.stream:
        return _streamed(call, prompt, chat=False)
    result = inference.complete(call.model, prompt, call.params, n=call.n)
    choices = [
        {"index": i, "text": g["text"], "logprobs": None, "finish_reason": g["finish_reason"]}
        for i, g in enumerate(result["generations"])
    ]
    return _response("text_completion", "cmpl", body["model"], result, choices)


@api_endpoint("POST", render_error=openai_error)
def chat_completions(request):
    body = json_body(request)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise Invalid("messages must be a non-empty list")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise Invalid(f"messages[{i}] must have a role ({', '.join(ROLES)}) and string content")
        messages.append(Message(m["role"], m["content"]))
    call = Call.parse(body, chat=True)
    # The worker renders the conversation with the base's own chat template.
    if call.stream:
        return _streamed(call, messages, chat=True)
    result = inference.complete(call.model, messages, call.params, n=call.n)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": g["text"]},
            "logprobs": None,
            "finish_reason": g["finish_reason"],
        }
        for i, g in enumerate(result["generations"])
    ]
    return _response("chat.completion", "chatcmpl", body["model"], result, choices)


@dataclass(frozen=True, slots=True)
class Call:
    """What a completion request asks for, validated before anything reaches a worker."""

    model: str
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool

    @classmethod
    def parse(cls, body: dict, *, chat: bool = False) -> "Call":
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise Invalid("model is required")
        stream = body.get("stream") or False
        if not isinstance(stream, bool):
            raise Invalid("stream must be true or false")
        options = body.get("stream_options")
        if options is not None and not stream:
            raise Invalid("stream_options is only allowed when stream is true")
        options = options or {}
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise Invalid('stream_options must be an object like {"include_usage": true}')
        return cls(
            model=model,
            params=sampling_params(body, chat=chat),
            n=_int(body, "n", 1, 1, 16),
            stream=stream,
            include_usage=options.get("include_usage", False),
        )


def _streamed(call: Call, prompt: inference.Prompt, *, chat: bool) -> StreamingHttpResponse:
    # Errors up to here (unknown model, no worker) are still ordinary JSON error responses.
    stream = inference.stream(call.model, prompt, call.params, n=call.n)
    chunks = Chunks(
        chat=chat,
        model=call.model,
        fingerprint=_fingerprint(stream.base, stream.revision),
        include_usage=call.include_usage,
    )
    response = StreamingHttpResponse(event_stream(stream.events, chunks, n=call.n))
    response["Content-Type"] = "text/event-stream"
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a proxy must not hold tokens back
    return response


def sampling_params(body: dict, *, chat: bool = False) -> SamplingParams:
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, list | tuple) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise Invalid("stop must be a string or a list of at most 4 strings")
    seed = body.get("seed")
    if seed is not None and (
        not isinstance(seed, int) or isinstance(seed, bool) or not -(2**63) <= seed < 2**63
    ):
        raise Invalid("seed must be a 64-bit integer")
    # Chat's newer name for max_tokens wins when both are given.
    length_key = (
        "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    )
    top_p = _float(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        # A nucleus of mass 0 holds no token: the engine samples with top_p in (0, 1].
        raise Invalid("top_p must be greater than 0 (at most 1); for greedy answers set temperature to 0")
    return SamplingParams(
        max_tokens=_int(body, length_key, 16, 1, 1024),
        temperature=_float(body, "temperature", 1.0, 0.0, 2.0),
        top_p=top_p,
        stop=tuple(stop),
        seed=seed,
    )


def _int(body, key, default, low, high) -> int:
    value = body.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Invalid(f"{key} must be an integer between {low} and {high}")
    return value


def _float(body, key, default, low, high) -> float:
    value = body.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise Invalid(f"{key} must be a number between {low} and {high}")
    return float(value)


def _fingerprint(base: BaseModel, revision: Revision | None) -> str:
    return f"mint-{revision.sha256[:12]}" if revision else f"base-{base.digest[:12]}"


def _response(kind: str, prefix: str, model: str, result: dict, choices: list) -> JsonResponse:
    revision = result["revision"]
    return JsonResponse(
        {
            "id": f"{prefix}-{uuid.uuid4().hex}",
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
    )
