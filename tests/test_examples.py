"""JSONL validation: every bad line reported with its number."""

import json

import pytest

from workers.engine import examples
from workers.engine.examples import (
    CHAT,
    COMPLETION,
    PREFERENCE,
    DatasetInvalid,
    Example,
    Message,
    parse_jsonl,
)


def lines(*rows) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


CHAT_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
OTHER_CHAT_ROW = {"messages": [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]}
PAIR = {"prompt": "Tea or coffee?", "chosen": "Tea, green.", "rejected": "Coffee, black."}


def errors_of(data: bytes) -> list[tuple[int, str]]:
    with pytest.raises(DatasetInvalid) as caught:
        parse_jsonl(data)
    return [(e.line, e.message) for e in caught.value.errors]


def test_it_accepts_chat_rows():
    parsed = parse_jsonl(lines(CHAT_ROW, OTHER_CHAT_ROW))
    assert parsed.format == CHAT
    assert parsed.rows == 2
    assert parsed.examples[0].final_answer == "hello"


def test_it_accepts_prompt_completion_rows_as_a_user_and_an_assistant_turn():
    parsed = parse_jsonl(lines({"prompt": "2+2?", "completion": "4"}))
    assert parsed.format == COMPLETION
    assert [m.role for m in parsed.examples[0].messages] == ["user", "assistant"]


def test_it_reports_every_bad_line_with_its_number():
    found = errors_of(lines(CHAT_ROW, "{not json", {"foo": 1}, OTHER_CHAT_ROW, [1, 2]))
    assert [line for line, _ in found] == [2, 3, 5]
    assert "not valid JSON" in found[0][1]
    assert "expected" in found[1][1]
    assert "JSON object" in found[2][1]


def test_it_refuses_a_conversation_that_does_not_end_with_the_assistant():
    row = {"messages": [{"role": "user", "content": "hi"}]}
    assert errors_of(lines(row)) == [(1, "the last message must be the assistant's answer to learn from")]


def test_it_refuses_unknown_roles():
    row = {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}
    [(line, message)] = errors_of(lines(row))
    assert line == 1 and "role" in message


def test_it_refuses_mixing_formats_in_one_file():
    [(line, message)] = errors_of(lines(CHAT_ROW, {"prompt": "a", "completion": "b"}))
    assert line == 2 and "one format" in message


def test_it_refuses_a_file_that_is_not_utf8_and_names_the_line():
    data = lines(CHAT_ROW) + b"\n" + '{"prompt": "caf\u00e9", "completion": "x"}'.encode("latin-1")
    [(line, message)] = errors_of(data)
    assert line == 2 and "UTF-8" in message


def test_it_refuses_an_oversize_file():
    with pytest.raises(DatasetInvalid, match="limit is 100 bytes"):
        parse_jsonl(lines(CHAT_ROW, OTHER_CHAT_ROW, CHAT_ROW), max_bytes=100)


def test_it_refuses_an_empty_file():
    assert errors_of(b"\n\n") == [(0, "the file has no rows")]


def test_blank_lines_and_a_byte_order_mark_are_tolerated():
    parsed = parse_jsonl(b"\xef\xbb\xbf" + lines(CHAT_ROW, "", OTHER_CHAT_ROW) + b"\n")
    assert parsed.rows == 2


def test_windows_line_endings_are_tolerated():
    parsed = parse_jsonl(lines(CHAT_ROW, OTHER_CHAT_ROW).replace(b"\n", b"\r\n") + b"\r\n")
    assert parsed.rows == 2


def test_a_line_separator_inside_a_string_does_not_split_the_line():
    row = {"prompt": "one\u2028two", "completion": "three\x85four"}
    data = json.dumps(row, ensure_ascii=False).encode() + b"\n" + b"{not json"
    assert errors_of(data) == [
        (2, "not valid JSON: Expecting property name enclosed in double quotes at column 2")
    ]


# --- preference pairs ---------------------------------------------------------------------


def test_it_accepts_preference_pairs_learning_the_chosen_answer_and_keeping_the_rejected_one():
    other = {"prompt": "Editor?", "chosen": "Helix.", "rejected": "Notepad."}
    parsed = parse_jsonl(lines(PAIR, other))
    assert parsed.format == PREFERENCE
    assert parsed.rows == 2
    first = parsed.examples[0]
    assert first.messages == (Message("user", "Tea or coffee?"), Message("assistant", "Tea, green."))
    assert first.final_answer == "Tea, green."
    assert first.rejected == "Coffee, black."


def test_chat_and_completion_rows_have_no_rejected_answer():
    assert parse_jsonl(lines(CHAT_ROW)).examples[0].rejected is None
    assert parse_jsonl(lines({"prompt": "a", "completion": "b"})).examples[0].rejected is None
    assert Example((Message("user", "a"), Message("assistant", "b"))).rejected is None


def test_it_refuses_preference_pairs_with_a_missing_empty_or_identical_answer():
    found = errors_of(
        lines(
            PAIR,
            {"prompt": "a", "chosen": "b"},
            {"prompt": "a", "chosen": "", "rejected": "c"},
            {"prompt": "a", "chosen": 3, "rejected": "c"},
            {"chosen": "b", "rejected": "c"},
            {"prompt": "a", "chosen": "same", "rejected": " same "},
            {"prompt": "a", "chosen": "b", "rejected": "c", "completion": "d"},
        )
    )
    assert found == [
        (2, '"rejected" must be a non-empty string'),
        (3, '"chosen" must be a non-empty string'),
        (4, '"chosen" must be a non-empty string'),
        (5, '"prompt" must be a non-empty string'),
        (6, '"chosen" and "rejected" are the same answer; a pair needs two different ones'),
        (7, 'a preference row has "chosen" and "rejected", not "completion"'),
    ]


def test_it_refuses_preference_pairs_mixed_with_other_formats():
    found = errors_of(lines(PAIR, {"prompt": "a", "completion": "b"}, CHAT_ROW))
    assert found == [
        (2, "completion row in a preference file; use one format"),
        (3, "chat row in a preference file; use one format"),
    ]


# --- duplicates ---------------------------------------------------------------------------


def test_it_refuses_duplicate_rows_naming_the_first_occurrence():
    found = errors_of(lines(CHAT_ROW, OTHER_CHAT_ROW, "", CHAT_ROW, OTHER_CHAT_ROW, CHAT_ROW))
    assert found == [(4, "duplicates line 1"), (5, "duplicates line 2"), (6, "duplicates line 1")]


def test_duplicates_are_judged_on_content_not_spelling():
    spaced = '{"prompt": "Tea or coffee?",   "rejected": "Coffee, black.", "chosen": "Tea, green."}'
    assert errors_of(lines(PAIR, spaced)) == [(2, "duplicates line 1")]


def test_pairs_that_share_a_chosen_answer_but_differ_in_the_rejected_one_are_not_duplicates():
    assert parse_jsonl(lines(PAIR, {**PAIR, "rejected": "Water."})).rows == 2


# --- encoding and size --------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_it_says_when_a_file_is_utf16(encoding):
    data = "\n".join(json.dumps(r) for r in (CHAT_ROW, OTHER_CHAT_ROW)).encode(encoding)
    assert errors_of(data) == [(0, "file is UTF-16; save it as UTF-8")]


def test_it_names_the_byte_and_column_that_is_not_utf8_on_every_such_line():
    data = lines(CHAT_ROW, '{"prompt": "caf\u00e9", "completion": "x"}').replace(b"\xc3\xa9", b"\xe9")
    data += b"\n" + '{"prompt": "na\u00efve", "completion": "y"}'.encode("latin-1")
    assert errors_of(data) == [
        (2, "not valid UTF-8 (byte 0xe9 at column 16); save the file as UTF-8"),
        (3, "not valid UTF-8 (byte 0xef at column 15); save the file as UTF-8"),
    ]


def test_it_refuses_a_nul_character_in_a_line():
    data = lines(CHAT_ROW) + b'\n{"prompt": "a\x00", "completion": "b"}'
    assert errors_of(data) == [(2, "contains a NUL character at column 14")]


def test_it_refuses_an_oversize_line_and_keeps_checking_the_others(monkeypatch):
    monkeypatch.setattr(examples, "MAX_LINE_BYTES", 100)
    long_row = {"prompt": "x" * 200, "completion": "y"}
    found = errors_of(lines({"prompt": "a", "completion": "b"}, long_row, "{not json"))
    assert found[0] == (2, f"line is {len(json.dumps(long_row))} bytes; the limit is 100 bytes a line")
    assert [line for line, _ in found] == [2, 3]


def test_the_file_limit_is_read_when_parsing(monkeypatch):
    monkeypatch.setattr(examples, "MAX_BYTES", 10)
    assert errors_of(lines(CHAT_ROW)) == [(0, f"file is {len(lines(CHAT_ROW))} bytes; the limit is 10 bytes")]


def test_it_reports_at_most_the_error_cap(monkeypatch):
    monkeypatch.setattr(examples, "MAX_ERRORS_REPORTED", 3)
    found = errors_of(lines(*["{bad"] * 10))
    assert [line for line, _ in found] == [1, 2, 3]


def test_it_refuses_a_nul_character_or_half_a_surrogate_pair_written_as_an_escape():
    # JSON escapes make strings that are not text: a retrain could not write the row back as
    # UTF-8, nor a tokenizer read it, nor PostgreSQL keep it.
    nul = {"prompt": "Hi\u0000", "completion": "Hello"}
    half = {"prompt": "Hi", "completion": "Hello \ud83d"}
    assert errors_of(lines(CHAT_ROW, nul, half)) == [
        (2, "prompt holds a NUL character (\\u0000)"),
        (3, "completion holds an unpaired surrogate (\\ud83d), half of a character"),
    ]


def test_a_whole_surrogate_pair_written_as_escapes_is_one_character():
    row = {"prompt": "Hi", "completion": "\ud83d\ude00"}  # json.dumps writes "\ud83d\ude00"
    assert parse_jsonl(lines(row)).examples[0].final_answer == "😀"
