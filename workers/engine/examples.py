"""Training and evaluation records: the JSONL formats people upload.

Three formats are accepted, one per file:

- chat: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}``
  (OpenAI's chat fine-tuning format); the loss is taken on assistant turns. A chat
  row may also carry ``"rejected": "..."``: the last assistant turn is then the chosen
  answer of a preference pair (a person's correction of what their adapter said; the
  retrains from updates write such rows beside plain ones).
- completion: ``{"prompt": "...", "completion": "..."}``; the loss is taken on
  the completion.
- preference: ``{"prompt": "...", "chosen": "...", "rejected": "..."}``, pairs
  for preference training: with the training objective "dpo" each pair is learned
  with the DPO loss (workers/engine/preference.py); with "sft" (the default)
  supervised training learns the chosen answer and the rejected one is unused.

Validation collects every problem with its line number instead of stopping at
the first, so a person can fix a file in one pass, and a file with any problem
is refused whole. Line 0 means the file as a whole (its size, its encoding).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

CHAT = "chat"
COMPLETION = "completion"
PREFERENCE = "preference"
FORMATS = (CHAT, COMPLETION, PREFERENCE)
ROLES = ("system", "user", "assistant")

MAX_BYTES = 32 * 1024 * 1024
MAX_LINE_BYTES = 1024 * 1024
MAX_ROWS = 200_000
MAX_ERRORS_REPORTED = 50

UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# UTF-16 text that is mostly ASCII is about half NUL bytes; UTF-8 text has none.
UTF16_SNIFF_BYTES = 4096

ROW_SHAPES = (
    '{"messages": [...]}, {"prompt": ..., "completion": ...} '
    'or {"prompt": ..., "chosen": ..., "rejected": ...}'
)


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class Example:
    """One training row, normalised: chat rows keep their turns; completion and
    preference rows become a user turn and an assistant turn so one code path
    trains them all. A preference row's assistant turn is the chosen answer and
    ``rejected`` keeps the other one for preference training; it is None for
    chat and completion rows."""

    messages: tuple[Message, ...]
    rejected: str | None = None

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


def parse_jsonl(data: bytes, *, max_bytes: int | None = None) -> ParsedDataset:
    """Parse and validate a JSONL upload; raise DatasetInvalid listing every bad line.

    ``max_bytes`` defaults to MAX_BYTES, read when called."""
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    if len(data) > max_bytes:
        raise DatasetInvalid([LineError(0, f"file is {len(data)} bytes; the limit is {max_bytes} bytes")])
    if _looks_like_utf16(data):
        raise DatasetInvalid([LineError(0, "file is UTF-16; save it as UTF-8")])
    data_without_bom = data.removeprefix(UTF8_BOM)

    errors: list[LineError] = []
    examples: list[Example] = []
    first_seen: dict[Example, int] = {}
    file_format: str | None = None
    # Split on "\n" only: str.splitlines() also breaks at U+2028 and friends,
    # which JSON allows inside strings, and would shift every line number after.
    for number, raw_line in enumerate(data_without_bom.split(b"\n"), start=1):
        if len(errors) >= MAX_ERRORS_REPORTED:
            break
        raw_line = raw_line.removesuffix(b"\r")
        if len(raw_line) > MAX_LINE_BYTES:
            limit = f"the limit is {MAX_LINE_BYTES} bytes a line"
            errors.append(LineError(number, f"line is {len(raw_line)} bytes; {limit}"))
            continue
        try:
            raw = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = raw_line[exc.start]
            errors.append(
                LineError(
                    number,
                    f"not valid UTF-8 (byte 0x{bad:02x} at column {exc.start + 1}); save the file as UTF-8",
                )
            )
            continue
        if not raw.strip():
            continue
        if "\x00" in raw:
            errors.append(LineError(number, f"contains a NUL character at column {raw.index(chr(0)) + 1}"))
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
        if found := find_not_text(row):
            where, why = found
            errors.append(LineError(number, f"{where or 'the row'} holds {why}"))
            continue
        row_format = _row_format(row)
        if row_format is None:
            errors.append(LineError(number, f"expected {ROW_SHAPES}"))
            continue
        if file_format is None:
            file_format = row_format
        elif row_format != file_format:
            errors.append(LineError(number, f"{row_format} row in a {file_format} file; use one format"))
            continue
        problem, example = _parse_row(row, row_format)
        if problem:
            errors.append(LineError(number, problem))
            continue
        first = first_seen.setdefault(example, number)
        if first != number:
            errors.append(LineError(number, f"duplicates line {first}"))
            continue
        examples.append(example)

    if not errors and not examples:
        errors.append(LineError(0, "the file has no rows"))
    if errors:
        raise DatasetInvalid(errors[:MAX_ERRORS_REPORTED])
    return ParsedDataset(
        format=file_format or CHAT,
        examples=examples,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )


def not_text(value: str) -> str | None:
    """Why a string is not text the project can keep, or None: a NUL character (PostgreSQL
    refuses it), or half of a UTF-16 surrogate pair (JSON's "\\ud800" alone), which is not a
    character at all: UTF-8 cannot encode it, so neither the database nor a tokenizer takes it."""
    if "\x00" in value:
        return "a NUL character (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"an unpaired surrogate (\\u{ord(value[exc.start]):04x}), half of a character"
    return None


def find_not_text(value: object, where: str = "") -> tuple[str, str] | None:
    """The first string in a parsed JSON value that is not text (`not_text`), as (where, why):
    where is a path such as "messages.1.content"; None when every string is text."""
    if isinstance(value, str):
        why = not_text(value)
        return (where, why) if why else None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and (why := not_text(key)):
            return (where, f"a key holding {why}")
        if found := find_not_text(item, f"{where}.{key}" if where else str(key)):
            return found
    return None


def _looks_like_utf16(data: bytes) -> bool:
    if data.startswith(UTF16_BOMS):
        return True
    sample = data[:UTF16_SNIFF_BYTES]
    nuls = sample.count(0)
    return nuls > 0 and nuls * 4 >= len(sample)


def _row_format(row: dict) -> str | None:
    if "messages" in row:
        return CHAT
    # Before the completion check: a preference row has a "prompt" too.
    if "chosen" in row or "rejected" in row:
        return PREFERENCE
    if "prompt" in row or "completion" in row:
        return COMPLETION
    return None


def _parse_row(row: dict, row_format: str) -> tuple[str | None, Example | None]:
    if row_format == PREFERENCE:
        return _parse_preference_row(row)
    if row_format == COMPLETION:
        prompt, completion = row.get("prompt"), row.get("completion")
        problem = _non_empty_strings(("prompt", prompt), ("completion", completion))
        if problem:
            return problem, None
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
    # A chat row may carry the answer it replaces (a person's correction of what their
    # adapter said): the last assistant turn is then the chosen answer of a preference pair.
    rejected = row.get("rejected")
    if rejected is not None:
        if not isinstance(rejected, str) or not rejected.strip():
            return '"rejected" must be a non-empty string', None
        if rejected.strip() == parsed[-1].content.strip():
            return '"rejected" is the same answer as the last assistant message; a pair needs two', None
    return None, Example(tuple(parsed), rejected=rejected)


def _parse_preference_row(row: dict) -> tuple[str | None, Example | None]:
    if "completion" in row:
        return 'a preference row has "chosen" and "rejected", not "completion"', None
    prompt, chosen, rejected = row.get("prompt"), row.get("chosen"), row.get("rejected")
    problem = _non_empty_strings(("prompt", prompt), ("chosen", chosen), ("rejected", rejected))
    if problem:
        return problem, None
    if chosen.strip() == rejected.strip():
        return '"chosen" and "rejected" are the same answer; a pair needs two different ones', None
    return None, Example((Message("user", prompt), Message("assistant", chosen)), rejected=rejected)


def _non_empty_strings(*pairs: tuple[str, object]) -> str | None:
    for key, value in pairs:
        if not isinstance(value, str) or not value.strip():
            return f'"{key}" must be a non-empty string'
    return None
