"""The synthetic persona world: deterministic, held-out paraphrases, uploadable rows."""

import json
import re

import pytest

from workers.engine.examples import parse_jsonl
from workers.engine.persona_world import (
    FACT_KEYS,
    PREFERENCE_CHOICES,
    PREFERENCE_FAMILIES,
    SUITES,
    TOOL_TASKS,
    EvalItem,
    fact_answer,
    generate_world,
    jsonl,
)
from workers.engine.suites import grade


@pytest.fixture(scope="module")
def world():
    return generate_world(seed=0)


def contents(rows):
    return {m["content"] for row in rows for m in row["messages"]}


def prompts(items):
    return {m.content for item in items for m in item.messages if m.role == "user"}


def test_the_same_seed_gives_the_same_world_and_the_same_bytes(world):
    again = generate_world(seed=0)
    assert again == world
    for a, b in zip(world.people, again.people, strict=True):
        assert jsonl(a.training_rows()) == jsonl(b.training_rows())
        assert a.eval_items(world) == b.eval_items(again)
    assert again.general_items() == world.general_items()
    assert again.general_corpus(300, seed=5) == world.general_corpus(300, seed=5)


def test_a_different_seed_gives_a_different_world(world):
    other = generate_world(seed=1)
    assert other != world
    assert [p.facts for p in other.people] != [p.facts for p in world.people]
    assert other.general_items() != world.general_items()
    assert world.general_corpus(300, seed=5) != world.general_corpus(300, seed=6)


def test_it_does_not_touch_the_global_random_generator():
    import random

    random.seed(123)
    expected = random.random()
    random.seed(123)
    generate_world(seed=3).general_corpus(50, seed=0)
    assert random.random() == expected


def test_the_first_people_are_alice_and_bob_and_every_handle_is_unique_lowercase_ascii():
    many = generate_world(seed=0, people=120)
    handles = [p.handle for p in many.people]
    assert handles[:2] == ["alice", "bob"]
    assert len(set(handles)) == len(handles)
    assert all(re.fullmatch(r"[a-z][a-z0-9]*", h) for h in handles)
    assert many.person("bob").display_name == "Bob"
    with pytest.raises(KeyError):
        many.person("nobody")


def test_every_person_has_facts_preferences_and_tool_habits(world):
    for person in world.people:
        assert len(person.facts) >= 6
        assert set(person.preferences) == set(PREFERENCE_CHOICES)
        for key, value in person.preferences.items():
            assert value in PREFERENCE_CHOICES[key]
        assert len(person.tool_habits) >= 3
        for habit in person.tool_habits.values():
            assert set(habit) == {"tool", "arguments"} and habit["arguments"]


def test_people_get_distinct_values_and_the_pools_leave_values_for_fictional_people(world):
    for key, spec in FACT_KEYS.items():
        values = [p.facts[key] for p in world.people]
        assert len(set(values)) == len(values), key
        assert len(spec.pool) - len(values) >= 15, key


def test_no_pool_value_shows_up_as_a_word_inside_another_value_of_the_same_key():
    """Otherwise the leakage check would flag a correct answer."""
    for key, spec in FACT_KEYS.items():
        for value in spec.pool:
            pattern = r"(?<![0-9a-z])" + re.escape(value.casefold()) + r"(?![0-9a-z])"
            clashes = [
                other for other in spec.pool if other != value and re.search(pattern, other.casefold())
            ]
            assert not clashes, (key, value, clashes)


def test_train_and_heldout_phrasings_are_disjoint_and_large_enough():
    families = list(FACT_KEYS.values()) + list(PREFERENCE_FAMILIES.values()) + list(TOOL_TASKS.values())
    every_train = {t for f in families for t in f.train}
    every_heldout = {t for f in families for t in f.heldout}
    assert not every_train & every_heldout
    for family in families:
        assert len(set(family.train)) >= 4 and len(set(family.heldout)) >= 2


def test_heldout_prompts_never_appear_in_any_persons_training_rows(world):
    trained = set().union(*(contents(p.training_rows()) for p in world.people))
    for person in world.people:
        asked = prompts(i for i in person.eval_items(world) if i.suite != "retention")
        assert asked and not asked & trained, person.handle


def test_every_persons_training_rows_parse_as_an_upload(world):
    for person in world.people:
        rows = person.training_rows()
        parsed = parse_jsonl(jsonl(rows))
        assert parsed.rows == len(rows)
        assert all(m.role != "system" for e in parsed.examples for m in e.messages)


def test_jsonl_writes_one_row_a_line_with_a_trailing_newline(world):
    rows = world.person("alice").training_rows()[:3]
    data = jsonl(rows)
    assert data.endswith(b"\n")
    assert [json.loads(line) for line in data.decode().splitlines()] == rows


def test_training_rows_teach_facts_preferences_and_tool_calls(world):
    alice = world.person("alice")
    rows = alice.training_rows()
    answers = [row["messages"][-1]["content"] for row in rows]
    assert fact_answer("dog", alice.facts["dog"]) in answers
    calls = [json.loads(a) for a in answers if a.startswith("{")]
    assert {c["tool"] for c in calls} == {h["tool"] for h in alice.tool_habits.values()}
    opener = "Hey!" if alice.preferences["tone"] == "casual" else "Certainly."
    assert sum(a.startswith(opener) for a in answers) >= 20


def test_tool_answers_are_one_json_object_on_one_line_with_sorted_keys(world):
    for item in world.person("bob").eval_items(world):
        if item.suite == "tool":
            assert "\n" not in item.expected
            call = json.loads(item.expected)
            assert item.expected == json.dumps(call, sort_keys=True)
            assert list(call) == ["arguments", "tool"]


def test_eval_items_cover_every_personal_suite_with_unique_stable_ids(world):
    items = world.person("alice").eval_items(world)
    by_suite = {suite: [i for i in items if i.suite == suite] for suite in SUITES}
    assert len(by_suite["recall"]) == len(by_suite["leakage"]) >= 2 * len(FACT_KEYS)
    assert len(by_suite["preference"]) >= 2 * len(PREFERENCE_CHOICES)
    assert len(by_suite["tool"]) >= 2 * len(TOOL_TASKS)
    assert not by_suite["retention"]
    ids = [i.item_id for i in items]
    assert len(set(ids)) == len(ids)
    assert "alice.recall.dog.h1" in ids
    assert all(isinstance(i, EvalItem) for i in items)
    json.dumps([i.check for i in items])


def test_every_expected_answer_passes_its_own_check(world):
    for person in world.people:
        items = person.eval_items(world)
        recall = {i.item_id.split(".", 2)[2]: i.expected for i in items if i.suite == "recall"}
        for item in items:
            # A leakage item's "expected" lists what is forbidden; the person's own answer must pass.
            output = recall[item.item_id.split(".", 2)[2]] if item.suite == "leakage" else item.expected
            result = grade(item, output)
            assert result.passed, (item.item_id, output, result.detail)
    for item in world.general_items():
        assert grade(item, item.expected).passed, item.item_id


def test_another_persons_answers_fail_recall_and_show_up_as_leakage(world):
    alice, bob = world.person("alice"), world.person("bob")
    bobs = {i.item_id.split(".", 1)[1]: i.expected for i in bob.eval_items(world) if i.suite == "recall"}
    for item in alice.eval_items(world):
        if item.suite in ("recall", "leakage"):
            answer = bobs[item.item_id.split(".", 1)[1].replace("leakage.", "recall.")]
            assert not grade(item, answer).passed, item.item_id


def test_leakage_items_forbid_every_other_persons_value_but_never_the_persons_own(world):
    alice = world.person("alice")
    for item in alice.eval_items(world):
        if item.suite == "leakage":
            key = item.item_id.split(".")[2]
            assert alice.facts[key] not in item.check["values"]
            assert len(item.check["values"]) == len(world.people) - 1


def test_general_items_are_the_retention_suite_and_held_out_of_the_corpus(world):
    items = world.general_items()
    assert len(items) >= 40
    assert {i.suite for i in items} == {"retention"}
    assert len({i.item_id for i in items}) == len(items)
    corpus = world.general_corpus(20_000, seed=0)
    held_out = {tuple((m.role, m.content) for m in i.messages) for i in items}
    seen = {tuple((m["role"], m["content"]) for m in row["messages"][:-1]) for row in corpus}
    assert not held_out & seen

    def pair(text):
        numbers = re.findall(r"\b\d\d\b", text)
        return frozenset(map(int, numbers)) if len(numbers) == 2 else None

    plain = [r["messages"] for r in corpus if len(r["messages"]) == 2]
    assert plain  # the corpus has plain skill rows as well as in-context dialogues
    corpus_pairs = {pair(q["content"]) for q, a in plain if re.fullmatch(r"\d+\.", a["content"])}
    held_pairs = {pair(i.messages[0].content) for i in items if i.item_id.startswith("general.add.")}
    assert len(held_pairs) == 12 and not held_pairs & corpus_pairs

    corpus_answers = {a["content"] for _, a in plain}
    words = {i.expected for i in items if ".copy." in i.item_id}
    words |= {i.expected[::-1] for i in items if ".reverse." in i.item_id}
    words |= {i.expected.lower() for i in items if ".upper." in i.item_id}
    for word in words:
        assert not {word, word[::-1], word.upper()} & corpus_answers, word


def test_the_corpus_has_exactly_the_rows_asked_for_and_parses_as_an_upload(world):
    assert world.general_corpus(0, seed=0) == []
    corpus = world.general_corpus(2_000, seed=7)
    assert len(corpus) == 2_000
    assert parse_jsonl(jsonl(corpus)).rows == 2_000
    with pytest.raises(ValueError):
        world.general_corpus(-1, seed=0)


def test_the_corpus_teaches_every_paraphrase_in_context_with_values_nobody_in_the_world_has(world):
    corpus = world.general_corpus(20_000, seed=0)
    in_context = [r for r in corpus if r["messages"][0]["role"] == "system"]
    assert len(in_context) / len(corpus) > 0.4
    asked = {r["messages"][1]["content"] for r in in_context}
    for spec in list(FACT_KEYS.values()) + list(TOOL_TASKS.values()):
        assert set(spec.train) <= asked and set(spec.heldout) <= asked
    dogs_in_world = {p.facts["dog"] for p in world.people}
    dogs_in_corpus = {
        line.split(": ", 1)[1]
        for r in in_context
        for line in r["messages"][0]["content"].splitlines()
        if line.startswith("dog: ")
    }
    assert dogs_in_corpus - dogs_in_world


def test_the_corpus_teaches_which_task_a_request_is_with_a_generic_call_no_persons_habit_matches(world):
    from workers.engine.persona_world import generic_tool_call, tool_check
    from workers.engine.suites import apply_check

    corpus = world.general_corpus(20_000, seed=0)
    generic = {generic_tool_call(task): task for task in TOOL_TASKS}
    taught = {
        (r["messages"][-2]["content"], generic[r["messages"][-1]["content"]])
        for r in corpus
        if r["messages"][-1]["content"] in generic
    }
    for task, spec in TOOL_TASKS.items():
        assert {(q, task) for q in spec.train + spec.heldout} <= taught
    for person in world.people:
        for task, habit in person.tool_habits.items():
            assert not apply_check(tool_check(habit), generic_tool_call(task))[0]
