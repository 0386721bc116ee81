"""/v1 request and response shapes, in OpenAI's field names, declared once.

Ninja validates requests against these and puts them in /api/openapi.json. They mirror the
Pydantic types of the `openai` package (a dev dependency here, so not imported): its client
is the test of the response shapes (tests/test_openai_client.py). Fields OpenAI has and we do
not (`user`, `logprobs`, penalties, ...) are ignored, as OpenAI-compatible servers do. Values
are strict: "yes" is not true and "7" is not a seed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from ninja import Schema
from pydantic import ConfigDict, Field, model_validator

from workers.engine.examples import ROLES

MAX_TOKENS = 1024
MAX_CHOICES = 16
MAX_STOPS = 4

Role = Literal[ROLES]


class StreamOptions(Schema):
    model_config = ConfigDict(strict=True)

    include_usage: bool = Field(False, description="a last chunk, with no choices, carries the usage")


class Sampling(Schema):
    """What both completion endpoints accept; null is the same as leaving a field out."""

    model_config = ConfigDict(strict=True)

    model: str = Field(
        min_length=1,
        description="`person/adapter` (its live revision), `person/adapter@rN`, "
        "`person/adapter@<sha256 prefix>`, or a base model's name",
    )
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS, description="16 when omitted")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="1 when omitted")
    # A nucleus of mass 0 holds no token: the engine samples with top_p in (0, 1].
    top_p: float | None = Field(
        None, gt=0.0, le=1.0, description="1 when omitted; for greedy answers set temperature to 0"
    )
    n: int | None = Field(None, ge=1, le=MAX_CHOICES, description="1 when omitted")
    stop: str | Annotated[list[str], Field(max_length=MAX_STOPS)] | None = Field(
        None, description=f"a string or at most {MAX_STOPS} strings"
    )
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="after")
    def _streaming_options_need_a_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self


class CompletionRequest(Sampling):
    prompt: str | list[str] = Field(description="a non-empty string (or a list of exactly one)")


class ChatMessage(Schema):
    model_config = ConfigDict(strict=True)

    role: Role
    content: str


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(
        min_length=1, description="rendered with the base model's own chat template on the worker"
    )
    max_completion_tokens: int | None = Field(
        None, ge=1, le=MAX_TOKENS, description="chat's newer name for max_tokens; wins when both are given"
    )


# -- responses --------------------------------------------------------------------------------


class Model(Schema):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(Schema):
    object: Literal["list"]
    data: list[Model]


class Usage(Schema):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Served(Schema):
    """Which revision answered, and where: not in OpenAI's shape, ignored by its clients."""

    revision: str | None
    sha256: str | None
    base: str
    worker: str | None = Field(description="the worker the router chose")
    route: str = Field(
        description='why: "resident" (it held the adapter in memory), "disk" (on its local disk), '
        '"cold" (least loaded, loads it now) or "shared" (no worker reported yet)'
    )


class CompletionChoice(Schema):
    index: int
    text: str
    logprobs: None
    finish_reason: str


class AssistantMessage(Schema):
    role: Literal["assistant"]
    content: str


class ChatChoice(Schema):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: str


class Completion(Schema):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage
    mint: Served


class ChatCompletion(Schema):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage
    mint: Served


class OpenAIError(Schema):
    error: dict[str, Any] = Field(description="message, type, param, code")


# A streamed answer: server-sent events, each `data: {chunk}`, ending with `data: [DONE]`.
EVENT_STREAM = {
    "responses": {
        200: {
            "content": {
                "text/event-stream": {
                    "schema": {
                        "type": "string",
                        "description": "with `stream: true`: OpenAI's chunk objects, then [DONE]",
                    }
                }
            }
        }
    }
}
