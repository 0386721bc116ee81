"""Properties of what people and applications send, for any input hypothesis makes: a dataset
upload's bytes, a /v1 request's sampling fields, a handle, a revision, dataset or model name.
Each is either accepted as what it means or refused with the project's own error; no other
exception escapes.
"""

from __future__ import annotations

import json
import string

import pytest
from django.core.exceptions import ValidationError
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError as SchemaInvalid

from adapters_app.lifecycle.errors import Invalid, LifecycleError, NotFound
from adapters_app.lifecycle.updates import _jsonl as training_jsonl
from adapters_app.models.person import validate_handle
from adapters_app.openai_api import schemas
from adapters_app.openai_api.views import Call
from tests.fuzzing import PROPERTY_EXAMPLES, budget, count
from workers.engine.examples import MAX_ERRORS_REPORTED, ROLES, DatasetInvalid, parse_jsonl
from workers.engine.suites import EVAL_SUITES, apply_check, items_jsonl, parse_items

pytestmark = pytest.mark.fuzz

# Text with what trips parsers up: line and paragraph separators, a BOM, NUL, lone surrogates.
AWKWARD = "\x00\r\n\t \u2028\u2029\ufeff\x85"
CHARACTERS = st.one_of(
    st.characters(),
    st.sampled_from(AWKWARD),
    st.characters(categories=["Cs"]),
)
TEXT = st.text(CHARACTERS, max_size=12)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


def _text_or_any(text=TEXT):
    return st.one_of(text, text, text, JSON_VALUES)


MESSAGE = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(ROLES), JSON_VALUES), "content": _text_or_any()}
)
CHAT_ROW = st.fixed_dictionaries(
    {"messages": st.one_of(st.lists(MESSAGE, max_size=3), JSON_VALUES)},
    optional={"rejected": _text_or_any()},
)
COMPLETION_ROW = st.fixed_dictionaries(
    {"prompt": _text_or_any(), "completion": _text_or_any()}, optional={"note": JSON_VALUES}
)
PREFERENCE_ROW = st.fixed_dictionaries(
    {"prompt": _text_or_any(), "chosen": _text_or_any(), "rejected": _text_or_any()}
)
ROWS = st.one_of(CHAT_ROW, COMPLETION_ROW, PREFERENCE_ROW, JSON_VALUES)


@st.composite
def jsonl_files(draw, rows=ROWS) -> bytes:
    """Files near the formats: rows of each shape (some broken), written with escapes or raw
    UTF-8 (a lone surrogate then makes bytes that are not UTF-8), joined by LF or CRLF, with
    blank and garbage lines, sometimes behind a BOM."""
    lines = []
    for row in draw(st.lists(rows, max_size=6)):
        text = json.dumps(row, ensure_ascii=draw(st.booleans()))
        lines.append(text.encode("utf-8", "surrogatepass"))
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from([b"", b"  ", b"\xff\xfe", b"{", b"[]", b"null"])))
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    bom = draw(st.sampled_from([b"", b"", b"\xef\xbb\xbf"]))
    return bom + newline.join(lines) + draw(st.sampled_from([b"", newline]))


ANY_BYTES = st.one_of(st.binary(max_size=200), jsonl_files())


def lines_of(data: bytes) -> int:
    return data.count(b"\n") + 1


def assert_refused_by_line(refused: DatasetInvalid, data: bytes) -> None:
    assert refused.errors and len(refused.errors) <= MAX_ERRORS_REPORTED
    for error in refused.errors:
        # Line 0 is the file as a whole (its size, encoding, or having no rows).
        assert 0 <= error.line <= lines_of(data), error
        assert error.message.strip(), error
    assert str(refused).startswith("dataset is invalid: line ")


# --- the training dataset parser ---------------------------------------------------------


@budget(PROPERTY_EXAMPLES)
@given(data=ANY_BYTES)
def test_any_bytes_are_rows_that_round_trip_or_a_refusal_naming_lines(data):
    count("parse_jsonl: any bytes")
    try:
        parsed = parse_jsonl(data)
    except DatasetInvalid as refused:
        assert_refused_by_line(refused, data)
        return
    assert parsed.rows == len(parsed.examples) > 0
    # Written back as the retrains from updates write training rows, and read again.
    again = parse_jsonl(training_jsonl(parsed.examples))
    assert again.examples == parsed.examples


def _valid_text():
    return st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=8).filter(
        str.strip
    )


GOOD_ROWS = st.one_of(
    st.builds(lambda p, c: {"prompt": p, "completion": c}, _valid_text(), _valid_text()),
)
BAD_LINES = st.one_of(
    st.just(b"{not json"),
    st.just(b"[1, 2]"),
    st.just(b'{"question": "?"}'),
    st.just(b'{"prompt": "Hi", "completion": "  "}'),
    st.just(b'{"prompt": "Hi", "completion": "a\\u0000"}'.replace(b"\\u0000", b"\x00")),
    st.just(b'{"prompt": "Hi", "completion": "\xff"}'),
    st.just(b'{"prompt": "Hi", "completion": "\\ud800"}'),
)


@budget(PROPERTY_EXAMPLES)
@given(
    rows=st.lists(GOOD_ROWS, min_size=1, max_size=8, unique_by=lambda r: (r["prompt"], r["completion"])),
    bad=BAD_LINES,
    at=st.integers(0, 8),
)
def test_one_bad_line_among_good_rows_is_refused_by_its_number(rows, bad, at):
    count("parse_jsonl: one bad line")
    lines = [json.dumps(row).encode() for row in rows]
    at = min(at, len(lines))
    lines.insert(at, bad)
    with pytest.raises(DatasetInvalid) as refused:
        parse_jsonl(b"\n".join(lines) + b"\n")
    assert [error.line for error in refused.value.errors] == [at + 1]


# --- the evaluation set parser -------------------------------------------------------------

CHECKS = st.one_of(
    st.fixed_dictionaries({"kind": st.sampled_from(["contains", "exact", "starts_with"]), "value": TEXT}),
    st.fixed_dictionaries({"kind": st.just("forbids"), "values": st.lists(TEXT, max_size=2)}),
    st.fixed_dictionaries({"kind": st.sampled_from(["max_words", "min_words"]), "value": st.integers()}),
    st.fixed_dictionaries({"kind": st.just("unit"), "value": st.sampled_from(["km", "miles", "parsecs"])}),
    st.fixed_dictionaries({"kind": st.just("date_format"), "value": st.sampled_from(["iso", "dmy", "mdy"])}),
    st.fixed_dictionaries({"kind": st.just("tool_call"), "tool": TEXT, "arguments": JSON_VALUES}),
    st.fixed_dictionaries(
        {"kind": st.just("updated"), "value": TEXT}, optional={"old": st.lists(TEXT, max_size=2)}
    ),
    st.dictionaries(st.sampled_from(["kind", "value", "values", "tool", "old"]), JSON_VALUES, max_size=3),
)
NOISY_ITEMS = st.fixed_dictionaries(
    {
        "suite": st.one_of(st.sampled_from(EVAL_SUITES), JSON_VALUES),
        "item_id": _text_or_any(),
        "messages": st.one_of(st.lists(MESSAGE, max_size=2), JSON_VALUES),
        "expected": _text_or_any(),
        "check": st.one_of(CHECKS, JSON_VALUES),
    }
)
# Items whose every field but the check is right: the check is what grading trusts.
CHECKED_ITEMS = st.fixed_dictionaries(
    {
        "suite": st.sampled_from(EVAL_SUITES),
        "item_id": st.uuids().map(str),
        "messages": st.just([{"role": "user", "content": "What is my dog called?"}]),
        "expected": st.just("Rex"),
        "check": CHECKS,
    }
)
ITEM_ROWS = st.one_of(CHECKED_ITEMS, NOISY_ITEMS)


@budget(PROPERTY_EXAMPLES)
@given(data=st.one_of(st.binary(max_size=200), jsonl_files(ITEM_ROWS)), answer=TEXT)
def test_any_bytes_are_an_evaluation_set_that_grades_any_answer_or_a_refusal_naming_lines(data, answer):
    count("parse_items: any bytes")
    try:
        items = parse_items(data)
    except DatasetInvalid as refused:
        assert_refused_by_line(refused, data)
        return
    assert parse_items(items_jsonl(items)) == items
    for item in items:
        passed, detail = apply_check(item.check, answer)
        assert isinstance(passed, bool) and isinstance(detail, str)


# --- sampling parameters -----------------------------------------------------------------

INTEGERS = st.one_of(st.integers(-5, 2000), st.integers(), st.sampled_from([2**63, -(2**63) - 1, 2**64]))
FLOATS = st.one_of(st.floats(-1, 3), st.floats(), INTEGERS)
SAMPLING_FIELDS = {
    "max_tokens": INTEGERS,
    "max_completion_tokens": INTEGERS,
    "temperature": FLOATS,
    "top_p": FLOATS,
    "n": INTEGERS,
    "seed": INTEGERS,
    "stop": st.one_of(TEXT, st.lists(TEXT, max_size=6)),
    "stream": st.booleans(),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), JSON_VALUES),
}
REQUESTS = st.fixed_dictionaries(
    {"model": TEXT, "messages": st.just([{"role": "user", "content": "Hi"}]), "prompt": TEXT},
    optional={name: st.one_of(values, values, JSON_VALUES) for name, values in SAMPLING_FIELDS.items()},
)


@budget(PROPERTY_EXAMPLES)
@given(body=REQUESTS, chat=st.booleans())
def test_any_sampling_fields_are_parameters_in_range_or_a_validation_error(body, chat):
    count("/v1 sampling fields")
    declared = schemas.ChatCompletionRequest if chat else schemas.CompletionRequest
    try:
        request = declared.model_validate(body)
    except SchemaInvalid:
        return
    call = Call.read(request, chat=chat)
    params = call.params
    assert 1 <= params.max_tokens <= schemas.MAX_TOKENS
    assert 0.0 <= params.temperature <= 2.0
    assert 0.0 < params.top_p <= 1.0
    assert isinstance(params.stop, tuple) and len(params.stop) <= schemas.MAX_STOPS
    assert all(isinstance(stop, str) for stop in params.stop)
    assert params.seed is None or -(2**63) <= params.seed < 2**63
    assert 1 <= call.n <= schemas.MAX_CHOICES
    assert call.stream or not call.include_usage


# --- handles and names -------------------------------------------------------------------

HANDLE_CHARACTERS = string.ascii_lowercase + string.digits + "-_"
HANDLES = st.text(st.sampled_from(HANDLE_CHARACTERS), min_size=1, max_size=64)
NEAR_HANDLES = st.one_of(
    HANDLES,
    st.builds(lambda handle, tail: handle + tail, HANDLES, TEXT),
    st.builds(lambda head, handle: head + handle, TEXT, HANDLES),
    TEXT,
)


def is_handle(value: str) -> bool:
    """The rule said in words: 1-63 lowercase letters, digits, '-' or '_', starting with a
    letter or digit."""
    return (
        1 <= len(value) <= 63
        and value[0] in string.ascii_lowercase + string.digits
        and all(c in HANDLE_CHARACTERS for c in value)
    )


@budget(PROPERTY_EXAMPLES)
@given(value=NEAR_HANDLES)
def test_a_handle_is_accepted_exactly_when_it_follows_the_rule_in_words(value):
    count("handles")
    try:
        validate_handle(value)
    except ValidationError:
        accepted = False
    else:
        accepted = True
    assert accepted == is_handle(value), value


REFERENCES = st.one_of(
    st.sampled_from(["r1", "1", "R1", " r1 ", "r01", "r2", "0", "r0", "r-1"]),
    st.builds(lambda n: f"r{n}", st.integers(min_value=0)),
    st.builds(lambda n: str(n), st.integers()),
    st.text(st.sampled_from("0123456789abcdefr"), max_size=70),
    st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=6),
    st.builds(lambda n: "r" + "9" * n, st.integers(4000, 5000)),
    TEXT,
)


@pytest.fixture
def live(make_revision, actor):
    """alice/assistant's r1, live."""
    from adapters_app.lifecycle.pointer import promote

    revision = make_revision()
    promote(revision, actor=actor, reason="fuzz")
    return revision


@pytest.mark.django_db
@budget(PROPERTY_EXAMPLES)
@given(ref=REFERENCES)
def test_any_revision_reference_is_the_revision_or_a_refusal(live, ref):
    from adapters_app.lifecycle.revisions import get_revision

    count("revision references")
    try:
        found = get_revision(live.adapter, ref)
    except (Invalid, NotFound):
        return
    assert found == live
    wanted = ref.strip().lower()
    assert wanted.removeprefix("r").lstrip("0") == "1" or live.sha256.startswith(wanted)


@pytest.mark.django_db
@budget(PROPERTY_EXAMPLES)
@given(ref=REFERENCES)
def test_any_dataset_reference_is_the_dataset_or_not_found(dataset, ref):
    from adapters_app.lifecycle.datasets import get_dataset

    count("dataset references")
    try:
        found = get_dataset(dataset.person, ref)
    except NotFound:
        return
    assert found == dataset


MODELS = st.one_of(
    st.builds(
        lambda person, adapter, pin: f"{person}/{adapter}{pin}",
        NEAR_HANDLES,
        NEAR_HANDLES,
        st.one_of(st.just(""), st.builds(lambda ref: "@" + ref, REFERENCES)),
    ),
    st.sampled_from(["alice/assistant", "alice/assistant@r1", "mint-micro", "alice/assistant@", "/", "@"]),
    TEXT,
)


@pytest.mark.django_db
@budget(PROPERTY_EXAMPLES)
@given(model=MODELS)
def test_any_model_name_is_a_base_and_revision_or_a_refusal(live, model):
    from adapters_app.lifecycle.revisions import resolve_model

    count("/v1 model names")
    try:
        base, revision = resolve_model(model)
    except LifecycleError as refused:
        assert refused.status in (400, 404)
        return
    assert base.name == model.strip() or revision is not None
