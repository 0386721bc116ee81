"""The scenarios' HTTP client: every call and every read bounded by a timeout, so a hang
is an outcome we count, never a scenario that waits forever."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

COMPLETE, ERROR_EVENT, ERROR_STATUS, HANG = "complete", "error event", "error status", "hang"


@dataclass(slots=True)
class Answer:
    status: int  # 0: no answer at all (connection refused or reset, or timed out)
    body: dict | list | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(slots=True)
class Streamed:
    """How one streamed request ended: complete (its [DONE] after a finish and no error),
    an error event, an error status before the stream began, or a hang (no end in time)."""

    outcome: str
    text: str
    detail: str
    seconds: float


class Client:
    def __init__(self, url: str, key: str):
        self.url, self.key = url, key

    def _request(
        self, method: str, path: str, data: bytes | None, content_type: str
    ) -> urllib.request.Request:
        return urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method.upper(),
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": content_type},
        )

    def call(
        self, method: str, path: str, body=None, *, raw: bytes | None = None, timeout: float = 30
    ) -> Answer:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = self._request(method, path, data, "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Answer(response.status, json.loads(response.read() or b"null"))
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                return Answer(exc.code, json.loads(payload), payload[:300].decode(errors="replace"))
            except ValueError:
                return Answer(exc.code, None, payload[:300].decode(errors="replace"))
        except (OSError, ValueError) as exc:  # refused, reset, timed out, half a body
            return Answer(0, None, f"{type(exc).__name__}: {exc}")

    def chat_body(self, model: str, question: str, max_tokens: int, *, stream: bool) -> dict:
        return {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": stream,
        }

    def chat(self, model: str, question: str, max_tokens: int = 16, timeout: float = 30) -> Answer:
        return self.call(
            "post",
            "/v1/chat/completions",
            self.chat_body(model, question, max_tokens, stream=False),
            timeout=timeout,
        )

    def stream(
        self, model: str, question: str, max_tokens: int, *, timeout: float = 60, on_text=None
    ) -> Streamed:
        """Stream a chat completion. `timeout` bounds the whole answer: past it (or a socket
        silent that long) the request counts as a hang. `on_text` is told of the first text."""
        body = json.dumps(self.chat_body(model, question, max_tokens, stream=True)).encode()
        request = self._request("post", "/v1/chat/completions", body, "application/json")
        started = time.monotonic()
        deadline = started + timeout
        text, finished, told = [], False, False
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                for line in response:
                    if time.monotonic() > deadline:
                        return Streamed(HANG, "".join(text), "no end in time", time.monotonic() - started)
                    if not line.startswith(b"data: "):
                        continue
                    if line.strip() == b"data: [DONE]":
                        outcome = COMPLETE if finished else ERROR_EVENT
                        detail = "" if finished else "[DONE] without a finish_reason"
                        return Streamed(outcome, "".join(text), detail, time.monotonic() - started)
                    chunk = json.loads(line[len(b"data: ") :])
                    if "error" in chunk:
                        message = chunk["error"].get("message", "")
                        return Streamed(ERROR_EVENT, "".join(text), message, time.monotonic() - started)
                    for choice in chunk.get("choices", ()):
                        piece = choice.get("delta", {}).get("content")
                        if piece:
                            text.append(piece)
                            if on_text is not None and not told:
                                told = True
                                on_text()
                        finished = finished or bool(choice.get("finish_reason"))
                return Streamed(
                    HANG, "".join(text), "the connection closed without [DONE]", time.monotonic() - started
                )
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            return Streamed(ERROR_STATUS, "", f"{exc.code} {detail}", time.monotonic() - started)
        except TimeoutError:
            return Streamed(HANG, "".join(text), f"silent for {timeout:.0f}s", time.monotonic() - started)
        except (OSError, ValueError) as exc:
            # A connection cut or refused is a clear error the client sees at once.
            return Streamed(
                ERROR_STATUS, "".join(text), f"{type(exc).__name__}: {exc}", time.monotonic() - started
            )
