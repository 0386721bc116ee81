"""Training and evaluation records: the JSONL formats people upload.

Two formats are accepted, one per file:

- chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}``
  (OpenAI's chat fine-tuning format); the loss is taken on assistant turns.
- completion: ``{"prompt": "...", "completion": "..."}``; the loss is taken on
  the completion.

Validation collects every problem with its line number instead of stopping at
the first, so a person can fix a file in one pass.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

CHAT = "chat"
COMPLETION = "completion"
FORMATS = (CHAT, COMPLETION)
ROLES = ("system", "user", "assistant")

MAX_BYTES = 32 * 1024 * 1024
MAX_ROWS = 200_000
MAX_ERRORS_REPORTED = 50


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class Example:
    """One training row, normalised: chat rows keep their turns; completion rows
    become a user turn and an assistant turn so one code path trains both."""

    messages: tuple[Message, ...]

    @property
    def prompt_messages(self) -> tuple[Message, ...]:
        return self.messages[:-1]

    @property
    def final_answer(self) -> str:
        return self.messages[-1].content


@dataclass(frozen=True, slots=True)
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class DatasetInvalid(ValueError):
    """A JSONL file that cannot be used as it is; carries every line's problem."""

    def __init__(self, errors: list[LineError]):
        self.errors = errors
        shown = "; ".join(str(e) for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"dataset is invalid: {shown}{more}")


@dataclass(slots=True)
class ParsedDataset:
    format: str
    examples: list[Example]
    sha256: str
    size_bytes: int
    warnings: list[LineError] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.examples)


def parse_jsonl(data: bytes, *, max_bytes: int = MAX_BYTES) -> ParsedDataset:
    """Parse and validate a JSONL upload; raise DatasetInvalid listing every bad line."""
    if len(data) > max_bytes:
        raise DatasetInvalid([LineError(0, f"file is {len(data)} bytes; the limit is {max_bytes} bytes")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetInvalid(
            [LineError(line, f"not valid UTF-8 (byte {exc.start}); save the file as UTF-8")]
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]

    errors: list[LineError] = []
    examples: list[Example] = []
    file_format: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(examples) >= MAX_ROWS:
            errors.append(LineError(number, f"too many rows; the limit is {MAX_ROWS}"))
            break
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            errors.append(LineError(number, f"not valid JSON: {exc.msg} at column {exc.colno}"))
            continue
        if not isinstance(row, dict):
            errors.append(LineError(number, "each line must be a JSON object"))
            continue
        row_format = _row_format(row)
        if row_format is None:
            errors.append(
                LineError(
                    number,
                    'expected {"messages": [...]} or {"prompt": ..., "completion": ...}',
                )
            )
            continue
        if file_format is None:
            file_format = row_format
        elif row_format != file_format:
            errors.append(LineError(number, f"{row_format} row in a {file_format} file; use one format"))
            continue
        problem, example = _parse_row(row, row_format)
        if problem:
            errors.append(LineError(number, problem))
        else:
            examples.append(example)
        if len(errors) >= MAX_ERRORS_REPORTED:
            break

    if not errors and not examples:
        errors.append(LineError(0, "the file has no rows"))
    if errors:
        raise DatasetInvalid(errors)
    return ParsedDataset(
        format=file_format or CHAT,
        examples=examples,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )


def _row_format(row: dict) -> str | None:
    if "messages" in row:
        return CHAT
    if "prompt" in row or "completion" in row:
        return COMPLETION
    return None


def _parse_row(row: dict, row_format: str) -> tuple[str | None, Example | None]:
    if row_format == COMPLETION:
        prompt, completion = row.get("prompt"), row.get("completion")
        for key, value in (("prompt", prompt), ("completion", completion)):
            if not isinstance(value, str) or not value.strip():
                return f'"{key}" must be a non-empty string', None
        return None, Example((Message("user", prompt), Message("assistant", completion)))

    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        return '"messages" must be a non-empty list', None
    parsed: list[Message] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] must be an object", None
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return f"messages[{i}].role must be one of {', '.join(ROLES)}", None
        if not isinstance(content, str):
            return f"messages[{i}].content must be a string", None
        parsed.append(Message(role, content))
    if parsed[-1].role != "assistant":
        return "the last message must be the assistant's answer to learn from", None
    if not parsed[-1].content.strip():
        return "the last assistant message is empty", None
    return None, Example(tuple(parsed))
