"""Grading a model's generated answers against evaluation items.

An `EvalItem` carries a JSON grading rule (`check`); `grade()` applies it to the
raw generated text and says why it passed or failed. A model that writes
something unparseable fails the item with a detail; only a rule this module does
not know raises, because that is a bug in whoever built the item. The rules are
described in docs/suites.md.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from workers.engine.examples import Message, find_not_text
from workers.engine.persona_world import SUITES, EvalItem

# The update suite (workers/engine/updates.py) asks about facts a person changed in use.
UPDATE_SUITE = "update"
EVAL_SUITES = (*SUITES, UPDATE_SUITE)

CHECK_KINDS = (
    "contains",
    "forbids",
    "exact",
    "unit",
    "date_format",
    "max_words",
    "min_words",
    "starts_with",
    "tool_call",
    "updated",
)


@dataclass(frozen=True, slots=True)
class ItemResult:
    item_id: str
    suite: str
    prompt: str
    expected: str
    got: str
    passed: bool
    detail: str


def grade(item: EvalItem, output: str) -> ItemResult:
    """Apply `item.check` to the model's raw generated text."""
    passed, detail = apply_check(item.check, output)
    return ItemResult(
        item_id=item.item_id,
        suite=item.suite,
        prompt=_prompt_text(item),
        expected=item.expected,
        got=output,
        passed=passed,
        detail=detail,
    )


def scores(results: Iterable[ItemResult]) -> dict[str, float]:
    """suite -> pass rate in [0, 1], for the suites present (known suites first, in SUITES order)."""
    totals: dict[str, list[int]] = {}
    for result in results:
        tally = totals.setdefault(result.suite, [0, 0])
        tally[0] += result.passed
        tally[1] += 1
    order = {suite: i for i, suite in enumerate(EVAL_SUITES)}
    return {
        suite: passed / total
        for suite, (passed, total) in sorted(
            totals.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])
        )
    }


def apply_check(check: dict, output: str) -> tuple[bool, str]:
    kind = check.get("kind")
    if kind not in _CHECKS:
        raise ValueError(f"unknown check kind {kind!r}; known: {', '.join(CHECK_KINDS)}")
    return _CHECKS[kind](check, output)


def _prompt_text(item: EvalItem) -> str:
    if len(item.messages) == 1:
        return item.messages[0].content
    return "\n".join(f"{m.role}: {m.content}" for m in item.messages)


def _whole_phrase(value: str) -> str:
    return r"(?<![0-9a-z])" + re.escape(value.casefold()) + r"(?![0-9a-z])"


def mentions(text: str, value: str) -> bool:
    """Case-insensitive, as a whole word or phrase: "Max" is not in "Maxine", "4 March" not in "14 March"."""
    return re.search(_whole_phrase(value), text.casefold()) is not None


def _contains(check: dict, output: str) -> tuple[bool, str]:
    value = check["value"]
    if mentions(output, value):
        return True, f"mentions {value!r}"
    return False, f"does not mention {value!r}"


def _forbids(check: dict, output: str) -> tuple[bool, str]:
    found = [value for value in check["values"] if mentions(output, value)]
    if found:
        return False, "mentions another person's value: " + ", ".join(repr(v) for v in found)
    return True, f"none of {len(check['values'])} forbidden values mentioned"


def _normalise(text: str) -> str:
    return text.strip().rstrip(".").strip()


def _exact(check: dict, output: str) -> tuple[bool, str]:
    want = _normalise(check["value"])
    got = _normalise(output)
    if got == want:
        return True, f"exactly {want!r}"
    return False, f"expected exactly {want!r}, got {got[:60]!r}"


_UNITS = {
    "km": re.compile(r"\d\s*(?:km|kms|kilomet(?:er|re)s?)\b", re.IGNORECASE),
    "miles": re.compile(r"\d\s*(?:mi|miles?)\b", re.IGNORECASE),
}


def _unit(check: dict, output: str) -> tuple[bool, str]:
    want = check["value"]
    if want not in _UNITS:
        raise ValueError(f"unknown unit {want!r}; known: {', '.join(_UNITS)}")
    other = [unit for unit, pattern in _UNITS.items() if unit != want and pattern.search(output)]
    if other:
        return False, f"gives a distance in {other[0]}, wanted {want}"
    if _UNITS[want].search(output):
        return True, f"gives a distance in {want}"
    return False, f"no number followed by {want}"


_DATE = re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)|(?<!\d)(\d{1,2})/(\d{1,2})/(\d{4})(?!\d)")


def _valid(year: str, month: str, day: str) -> bool:
    try:
        dt.date(int(year), int(month), int(day))
    except ValueError:
        return False
    return True


DATE_FORMATS = ("iso", "dmy", "mdy")


def _date_format(check: dict, output: str) -> tuple[bool, str]:
    want = check["value"]
    if want not in DATE_FORMATS:
        raise ValueError(f"unknown date format {want!r}")
    match = _DATE.search(output)
    if match is None:
        return False, "no date found"
    if match.group(1):
        readings = {"iso"} if _valid(*match.group(1, 2, 3)) else set()
    else:
        first, second, year = match.group(4, 5, 6)
        readings = {
            style
            for style, ok in (("dmy", _valid(year, second, first)), ("mdy", _valid(year, first, second)))
            if ok
        }
    # A slashed date that reads both ways (04/07/2026) passes either; the items only ask
    # about days above 12 so a right and a wrong answer never look alike.
    if want in readings:
        return True, f"{match.group(0)} is {want}"
    shown = "/".join(sorted(readings)) or "not a valid date"
    return False, f"{match.group(0)} is {shown}, wanted {want}"


def _max_words(check: dict, output: str) -> tuple[bool, str]:
    count = len(output.split())
    if count == 0:
        return False, "empty answer"
    if count <= check["value"]:
        return True, f"{count} words <= {check['value']}"
    return False, f"{count} words > {check['value']}"


def _min_words(check: dict, output: str) -> tuple[bool, str]:
    count = len(output.split())
    if count >= check["value"]:
        return True, f"{count} words >= {check['value']}"
    return False, f"{count} words < {check['value']}"


def _starts_with(check: dict, output: str) -> tuple[bool, str]:
    want = check["value"]
    text = output.lstrip()
    head = text[: len(want)]
    follows = text[len(want) : len(want) + 1]
    if head.casefold() == want.casefold() and not follows.isalnum():
        return True, f"starts with {want!r}"
    return False, f"starts with {text[:20]!r}, wanted {want!r}"


def first_json_object(text: str) -> dict | None:
    """The first `{...}` in the text that parses as a JSON object, or None."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pass
        else:
            if isinstance(value, dict):
                return value
        start = text.find("{", start + 1)
    return None


def _tool_call(check: dict, output: str) -> tuple[bool, str]:
    call = first_json_object(output)
    if call is None:
        return False, "no JSON object in the answer"
    if set(call) != {"tool", "arguments"}:
        return False, f"expected keys tool and arguments, got {', '.join(sorted(call)) or 'none'}"
    if call["tool"] != check["tool"]:
        return False, f"called {call['tool']!r}, wanted {check['tool']!r}"
    if call["arguments"] != check["arguments"]:
        want = json.dumps(check["arguments"], sort_keys=True)
        got = json.dumps(call["arguments"], sort_keys=True)
        return False, f"arguments {got}, wanted {want}"
    return True, f"called {check['tool']!r} with the expected arguments"


def _updated(check: dict, output: str) -> tuple[bool, str]:
    """A changed fact: the new value said and none of the old ones."""
    new = check["value"]
    if not mentions(output, new):
        return False, f"does not mention the new value {new!r}"
    # An old value inside the new one ("engineer" in "senior engineer") is not said again
    # by saying the new one: look for old values in what is left without it.
    rest = re.sub(_whole_phrase(new), " ", output.casefold())
    stale = [old for old in check.get("old", []) if mentions(rest, old)]
    if stale:
        return False, "still says the old value: " + ", ".join(repr(v) for v in stale)
    return True, f"says {check['value']!r} and no old value"


def check_problem(check: dict) -> str | None:
    """Why a check cannot grade an answer (a field its kind needs is missing or of the wrong
    kind, as in docs/suites.md's table), or None. An uploaded evaluation set is refused with
    it at upload; otherwise the worker would fail grading its first answer."""
    kind, value = check.get("kind"), check.get("value")
    if kind in ("contains", "exact", "starts_with", "updated") and not isinstance(value, str):
        return f'a {kind} check needs a string "value"'
    if kind == "updated" and not _strings(check.get("old", [])):
        return 'an updated check\'s "old" must be a list of strings'
    if kind == "forbids" and not _strings(check.get("values")):
        return 'a forbids check needs "values", a list of strings'
    if kind == "unit" and not (isinstance(value, str) and value in _UNITS):
        return f'a unit check\'s "value" is one of {", ".join(_UNITS)}'
    if kind == "date_format" and not (isinstance(value, str) and value in DATE_FORMATS):
        return f'a date_format check\'s "value" is one of {", ".join(DATE_FORMATS)}'
    if kind in ("max_words", "min_words") and type(value) is not int:
        return f'a {kind} check needs a whole number "value"'
    tool, arguments = check.get("tool"), check.get("arguments")
    if kind == "tool_call" and not (isinstance(tool, str) and isinstance(arguments, dict)):
        return 'a tool_call check needs a string "tool" and an "arguments" object'
    return None


def _strings(values: object) -> bool:
    return isinstance(values, list) and all(isinstance(value, str) for value in values)


_CHECKS = {
    "contains": _contains,
    "forbids": _forbids,
    "exact": _exact,
    "unit": _unit,
    "date_format": _date_format,
    "max_words": _max_words,
    "min_words": _min_words,
    "starts_with": _starts_with,
    "tool_call": _tool_call,
    "updated": _updated,
}


# --- evaluation sets as files ---------------------------------------------------------
# An evaluation set is uploaded like any dataset (purpose "eval"), one item a line:
# {"suite": ..., "item_id": ..., "messages": [...], "expected": ..., "check": {...}}

SUITE_FORMAT = "suite"

# New tokens to generate per suite: the tokenizer is byte-level, and a tool call
# or a "detailed" answer is far longer than a recalled fact (see docs/suites.md).
MAX_NEW_TOKENS = {
    "recall": 64,
    "leakage": 64,
    "tool": 96,
    "preference": 160,
    "retention": 64,
    UPDATE_SUITE: 64,
}


def items_jsonl(items: Iterable[EvalItem]) -> bytes:
    rows = [
        {
            "suite": item.suite,
            "item_id": item.item_id,
            "messages": [{"role": m.role, "content": m.content} for m in item.messages],
            "expected": item.expected,
            "check": item.check,
        }
        for item in items
    ]
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()


def looks_like_suite_file(data: bytes) -> bool:
    """True when the first row is an evaluation item (it has a `check`)."""
    for raw in data.split(b"\n"):
        if raw.strip():
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                return False
            return isinstance(row, dict) and "check" in row
    return False


def parse_items(data: bytes) -> list[EvalItem]:
    """Parse an evaluation set, refusing it with every bad line's number."""
    from workers.engine.examples import ROLES, DatasetInvalid, LineError, Message

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetInvalid([LineError(line, "not valid UTF-8; save the file as UTF-8")]) from None
    errors: list[LineError] = []
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            errors.append(LineError(number, f"not valid JSON: {exc.msg} at column {exc.colno}"))
            continue
        problem = _item_problem(row, ROLES)
        if problem is None and row["item_id"] in seen:
            problem = f"item_id {row['item_id']!r} duplicates line {seen[row['item_id']]}"
        if problem:
            errors.append(LineError(number, problem))
            continue
        seen[row["item_id"]] = number
        messages = tuple(Message(m["role"], m["content"]) for m in row["messages"])
        items.append(EvalItem(row["suite"], row["item_id"], messages, row["expected"], row["check"]))
    if not errors and not items:
        errors.append(LineError(0, "the file has no items"))
    if errors:
        raise DatasetInvalid(errors)
    return items


def _item_problem(row, roles) -> str | None:
    if not isinstance(row, dict):
        return "each line must be a JSON object"
    if row.get("suite") not in EVAL_SUITES:
        return f"suite must be one of {', '.join(EVAL_SUITES)}"
    if not isinstance(row.get("item_id"), str) or not row["item_id"].strip():
        return "item_id must be a non-empty string"
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in roles:
            return f"messages[{i}].role must be one of {', '.join(roles)}"
        if not isinstance(message.get("content"), str):
            return f"messages[{i}].content must be a string"
    if messages[-1]["role"] == "assistant":
        return "the last message is the question to answer, not an assistant turn"
    if not isinstance(row.get("expected"), str):
        return "expected must be a string"
    check = row.get("check")
    if not isinstance(check, dict) or check.get("kind") not in CHECK_KINDS:
        return f"check must be an object whose kind is one of {', '.join(CHECK_KINDS)}"
    if problem := check_problem(check):
        return problem
    # Its strings become rows of the database (each item's prompt, answer and check).
    if found := find_not_text(row):
        where, why = found
        return f"{where or 'the row'} holds {why}"
    return None


def run_items(
    items: list[EvalItem],
    generate: Callable[[Sequence[Message], int], str],
    on_item: Callable[[int, int], None] | None = None,
) -> list[ItemResult]:
    """Answer every item with `generate(messages, max_new_tokens)` and grade it; `generate`
    renders the conversation with the base's own chat template (prompting.render_prompt)."""
    results = []
    for done, item in enumerate(items, start=1):
        output = generate(item.messages, MAX_NEW_TOKENS[item.suite])
        results.append(grade(item, output))
        if on_item is not None:
            on_item(done, len(items))
    return results
