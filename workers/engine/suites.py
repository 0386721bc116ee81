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
from collections.abc import Iterable
from dataclasses import dataclass

from workers.engine.persona_world import SUITES, EvalItem

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
    order = {suite: i for i, suite in enumerate(SUITES)}
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


def _mentions(text: str, value: str) -> bool:
    """Case-insensitive, as a whole word or phrase: "Max" is not in "Maxine", "4 March" not in "14 March"."""
    pattern = r"(?<![0-9a-z])" + re.escape(value.casefold()) + r"(?![0-9a-z])"
    return re.search(pattern, text.casefold()) is not None


def _contains(check: dict, output: str) -> tuple[bool, str]:
    value = check["value"]
    if _mentions(output, value):
        return True, f"mentions {value!r}"
    return False, f"does not mention {value!r}"


def _forbids(check: dict, output: str) -> tuple[bool, str]:
    found = [value for value in check["values"] if _mentions(output, value)]
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


def _date_format(check: dict, output: str) -> tuple[bool, str]:
    want = check["value"]
    if want not in ("iso", "dmy", "mdy"):
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
}
