"""JSONL validation: every bad line reported with its number."""

import json

import pytest

from workers.engine.examples import CHAT, COMPLETION, DatasetInvalid, parse_jsonl


def lines(*rows) -> bytes:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()


CHAT_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def errors_of(data: bytes) -> list[tuple[int, str]]:
    with pytest.raises(DatasetInvalid) as caught:
        parse_jsonl(data)
    return [(e.line, e.message) for e in caught.value.errors]


def test_it_accepts_chat_rows():
    parsed = parse_jsonl(lines(CHAT_ROW, CHAT_ROW))
    assert parsed.format == CHAT
    assert parsed.rows == 2
    assert parsed.examples[0].final_answer == "hello"


def test_it_accepts_prompt_completion_rows_as_a_user_and_an_assistant_turn():
    parsed = parse_jsonl(lines({"prompt": "2+2?", "completion": "4"}))
    assert parsed.format == COMPLETION
    assert [m.role for m in parsed.examples[0].messages] == ["user", "assistant"]


def test_it_reports_every_bad_line_with_its_number():
    found = errors_of(lines(CHAT_ROW, "{not json", {"foo": 1}, CHAT_ROW, [1, 2]))
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
        parse_jsonl(lines(CHAT_ROW, CHAT_ROW, CHAT_ROW), max_bytes=100)


def test_it_refuses_an_empty_file():
    assert errors_of(b"\n\n") == [(0, "the file has no rows")]


def test_blank_lines_and_a_byte_order_mark_are_tolerated():
    parsed = parse_jsonl(b"\xef\xbb\xbf" + lines(CHAT_ROW, "", CHAT_ROW) + b"\n")
    assert parsed.rows == 2
