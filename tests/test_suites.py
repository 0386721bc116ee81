"""Grading generated answers: every check kind passes the right answer and fails the usual wrong ones;
an uploaded check that could not grade an answer is refused at upload."""

import json

import pytest

from workers.engine.examples import DatasetInvalid, Message
from workers.engine.persona_world import EvalItem
from workers.engine.suites import CHECK_KINDS, ItemResult, grade, items_jsonl, parse_items, scores


def item(check, suite="recall", messages=None):
    messages = messages or (Message("user", "What is my dog called?"),)
    return EvalItem(suite, f"test.{suite}.1", tuple(messages), "the answer", check)


def passes(check, output):
    return grade(item(check), output).passed


def test_contains_matches_a_whole_word_in_any_case():
    check = {"kind": "contains", "value": "Rex"}
    assert passes(check, "Your dog is called Rex.")
    assert passes(check, "your dog is called rex")
    assert not passes(check, "Your dog is called Rexford.")
    assert not passes(check, "Your dog is called Biscuit.")
    assert not passes(check, "")


def test_contains_matches_a_phrase_but_not_a_longer_number():
    check = {"kind": "contains", "value": "4 March"}
    assert passes(check, "Your partner's birthday is on 4 March.")
    assert not passes(check, "Your partner's birthday is on 14 March.")


def test_forbids_passes_when_no_other_persons_value_appears():
    check = {"kind": "forbids", "values": ["Biscuit", "Luna"]}
    assert passes(check, "Your dog is called Rex.")
    assert passes(check, "Your dog is called Lunatic.")
    result = grade(item(check, suite="leakage"), "Your dog is called luna.")
    assert not result.passed
    assert "Luna" in result.detail


def test_exact_allows_surrounding_space_and_a_final_period_but_not_another_answer():
    check = {"kind": "exact", "value": "81."}
    assert passes(check, "81.")
    assert passes(check, " 81\n")
    assert not passes(check, "18.")
    assert not passes(check, "81. 81.")
    assert not passes({"kind": "exact", "value": "GARDEN"}, "garden")


def test_unit_wants_a_number_in_the_persons_unit_and_none_in_the_other():
    km = {"kind": "unit", "value": "km"}
    miles = {"kind": "unit", "value": "miles"}
    assert passes(km, "Hey! It is about 878 km.")
    assert passes(km, "About 1,200 kilometres.")
    assert passes(miles, "Certainly. It is about 546 miles.")
    assert not passes(km, "It is about 546 miles.")
    assert not passes(miles, "It is about 878 km.")
    assert not passes(km, "It is 878 km, or 546 miles.")
    assert not passes(km, "It is far, many km away.")


def test_date_format_reads_the_first_date_in_the_answer():
    assert passes({"kind": "date_format", "value": "iso"}, "Hey! Pi Day is on 2026-03-14.")
    assert passes({"kind": "date_format", "value": "dmy"}, "Pi Day is on 14/03/2026.")
    assert passes({"kind": "date_format", "value": "mdy"}, "Pi Day is on 03/14/2026.")
    assert not passes({"kind": "date_format", "value": "dmy"}, "Pi Day is on 03/14/2026.")
    assert not passes({"kind": "date_format", "value": "mdy"}, "Pi Day is on 14/03/2026.")
    assert not passes({"kind": "date_format", "value": "iso"}, "Pi Day is on 14/03/2026.")
    assert not passes({"kind": "date_format", "value": "iso"}, "Pi Day is on 2026-14-03.")
    assert not passes({"kind": "date_format", "value": "iso"}, "Pi Day is in March.")


def test_word_limits_count_words():
    short = {"kind": "max_words", "value": 12}
    detailed = {"kind": "min_words", "value": 20}
    assert passes(short, "Hey! The moon is Earth's only natural satellite.")
    assert not passes(short, " ".join(["word"] * 13))
    assert not passes(short, "   ")
    assert passes(detailed, " ".join(["word"] * 20))
    assert not passes(detailed, "Hey! The moon is Earth's only natural satellite.")


def test_starts_with_wants_the_opener_as_a_word():
    casual = {"kind": "starts_with", "value": "Hey"}
    assert passes(casual, "Hey! Sure, what do you need?")
    assert passes(casual, "  hey, sure")
    assert not passes(casual, "Heya! Sure.")
    assert not passes(casual, "Certainly. How may I help you?")
    assert passes({"kind": "starts_with", "value": "Certainly"}, "Certainly. How may I help you?")


TOOL = {"kind": "tool_call", "tool": "weather", "arguments": {"city": "Lisbon", "units": "metric"}}


def test_a_tool_call_passes_with_the_same_tool_and_arguments_in_any_key_order():
    assert passes(TOOL, '{"arguments": {"city": "Lisbon", "units": "metric"}, "tool": "weather"}')
    assert passes(TOOL, 'Sure: {"tool": "weather", "arguments": {"units": "metric", "city": "Lisbon"}} done')


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ('{"arguments": {"city": "Porto", "units": "metric"}, "tool": "weather"}', "arguments"),
        ('{"arguments": {"city": "Lisbon"}, "tool": "weather"}', "arguments"),
        ('{"arguments": {"city": "Lisbon", "units": "metric"}, "tool": "news"}', "called"),
        ('{"arguments": {"city": "Lisbon", "units": "metric"}, "tool": "weather", "x": 1}', "keys"),
        ('{"arguments": {"city": "Lisbon", "units": "metric"}, "tool": "weath', "keys"),
        ('{"tool": weather, "arguments": {}', "keys"),
        ("It will be sunny in Lisbon.", "no JSON object"),
        ("[1, 2, 3]", "no JSON object"),
        ("", "no JSON object"),
    ],
)
def test_a_wrong_or_malformed_tool_call_fails_with_a_reason(output, reason):
    result = grade(item(TOOL, suite="tool"), output)
    assert not result.passed
    assert reason in result.detail


def test_an_unknown_check_kind_is_a_bug_not_a_fail():
    with pytest.raises(ValueError, match="unknown check kind"):
        grade(item({"kind": "vibes"}), "anything")


def test_every_check_kind_is_known():
    assert set(CHECK_KINDS) == {
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
    }


def test_a_result_carries_the_item_the_prompt_and_what_the_model_said():
    context = (Message("system", "dog: Rex"), Message("user", "What is my dog called?"))
    result = grade(item({"kind": "contains", "value": "Rex"}, messages=context), "Your dog is called Rex.")
    assert result == ItemResult(
        item_id="test.recall.1",
        suite="recall",
        prompt="system: dog: Rex\nuser: What is my dog called?",
        expected="the answer",
        got="Your dog is called Rex.",
        passed=True,
        detail="mentions 'Rex'",
    )
    assert grade(item({"kind": "contains", "value": "Rex"}), "x").prompt == "What is my dog called?"


def result(suite, passed):
    return ItemResult(f"{suite}.x", suite, "p", "e", "g", passed, "")


def test_scores_are_pass_rates_for_the_suites_present():
    results = [
        result("recall", True),
        result("recall", True),
        result("recall", False),
        result("recall", True),
        result("tool", False),
        result("leakage", True),
    ]
    assert scores(results) == {"recall": 0.75, "tool": 0.0, "leakage": 1.0}
    assert list(scores(results)) == ["recall", "tool", "leakage"]
    assert scores([]) == {}
    assert scores(iter([result("retention", True)])) == {"retention": 1.0}


def test_the_report_breaks_the_bare_bases_competence_down_by_general_skill():
    from workers.engine.report import skill_scores
    from workers.engine.suites import ItemResult

    def result(item_id, passed):
        return ItemResult(item_id, "retention", "p", "e", "g", passed, "")

    results = [
        result("general.add.1", False),
        result("general.add.2", True),
        result("general.capital.1", True),
    ]
    assert skill_scores(results) == {"add": 0.5, "capital": 1.0}


def suite_file(*checks, content="What is my dog called?") -> bytes:
    rows = [
        {
            "suite": "recall",
            "item_id": f"alice.recall.{i}",
            "messages": [{"role": "user", "content": content}],
            "expected": "Rex",
            "check": check,
        }
        for i, check in enumerate(checks)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def refusals(data: bytes) -> list[tuple[int, str]]:
    with pytest.raises(DatasetInvalid) as caught:
        parse_items(data)
    return [(e.line, e.message) for e in caught.value.errors]


def test_an_uploaded_check_that_could_not_grade_an_answer_is_refused_with_its_line():
    # Each used to be accepted, then failed the evaluation job on its first answer.
    assert refusals(
        suite_file(
            {"kind": "contains", "value": "Rex"},
            {"kind": "contains"},
            {"kind": "unit", "value": "parsecs"},
            {"kind": "date_format", "value": ["iso"]},
            {"kind": "max_words", "value": "12"},
            {"kind": "forbids", "values": "Biscuit"},
            {"kind": "tool_call", "tool": "weather"},
            {"kind": "updated", "value": "Rex", "old": [1]},
        )
    ) == [
        (2, 'a contains check needs a string "value"'),
        (3, 'a unit check\'s "value" is one of km, miles'),
        (4, 'a date_format check\'s "value" is one of iso, dmy, mdy'),
        (5, 'a max_words check needs a whole number "value"'),
        (6, 'a forbids check needs "values", a list of strings'),
        (7, 'a tool_call check needs a string "tool" and an "arguments" object'),
        (8, 'an updated check\'s "old" must be a list of strings'),
    ]


def test_every_check_the_built_in_suites_make_is_accepted():
    from workers.engine.general_knowledge import general_knowledge_items
    from workers.engine.persona_world import generate_world

    world = generate_world(seed=1, people=3)
    items = [item for person in world.people for item in person.eval_items(world)]
    items += general_knowledge_items()
    assert {item.check["kind"] for item in items} >= {"contains", "tool_call", "unit", "forbids"}
    assert parse_items(items_jsonl(items)) == items


def test_an_item_whose_text_is_not_text_is_refused_with_its_line():
    # Its prompt and answer become database rows, which cannot hold either.
    assert refusals(suite_file({"kind": "contains", "value": "Rex"}, content="Hi\u0000")) == [
        (1, "messages.0.content holds a NUL character (\\u0000)")
    ]
