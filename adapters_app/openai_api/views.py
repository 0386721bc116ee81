"""/v1/models, /v1/completions and /v1/chat/completions in OpenAI's shapes.

Request parsing and response shaping live here; resolution of `model` and
generation are the lifecycle's and the worker's.
"""

import time
import uuid

from django.http import JsonResponse

from adapters_app.api.auth import api_endpoint, json_body
from adapters_app.lifecycle.errors import Invalid
from adapters_app.lifecycle.inference import complete
from adapters_app.models import Adapter, BaseModel
from workers.engine.examples import ROLES, Message
from workers.engine.prompting import render_prompt
from workers.engine.runtime import SamplingParams

MODELS_LISTED = 1000


def openai_error(status: int, code: str, message: str, details: object = None) -> JsonResponse:
    kind = {401: "authentication_error", 404: "invalid_request_error", 503: "server_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    code = "model_not_found" if status == 404 else code
    return JsonResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}, status=status
    )


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
    result = _generate(body, prompt)
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
    result = _generate(body, render_prompt(messages))
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


def _generate(body: dict, prompt: str):
    if body.get("stream"):
        raise Invalid("stream=true is not supported yet; send stream=false")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Invalid("model is required")
    params = sampling_params(body)
    n = _int(body, "n", 1, 1, 16)
    return complete(model, prompt, params, n=n)


def sampling_params(body: dict) -> SamplingParams:
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, list | tuple) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise Invalid("stop must be a string or a list of at most 4 strings")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise Invalid("seed must be an integer")
    return SamplingParams(
        max_tokens=_int(body, "max_tokens", 16, 1, 1024),
        temperature=_float(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_float(body, "top_p", 1.0, 0.0, 1.0),
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


def _response(kind: str, prefix: str, model: str, result: dict, choices: list) -> JsonResponse:
    generations = result["generations"]
    revision = result["revision"]
    prompt_tokens = generations[0]["prompt_tokens"] if generations else 0
    completion_tokens = sum(g["completion_tokens"] for g in generations)
    return JsonResponse(
        {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": f"mint-{revision.sha256[:12]}"
            if revision
            else f"base-{result['base'].digest[:12]}",
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "mint": {
                "revision": revision.label if revision else None,
                "sha256": revision.sha256 if revision else None,
                "base": result["base"].name,
            },
        }
    )
