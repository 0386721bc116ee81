"""The rules that turn a person's updates into the next training set and its update suite
(workers/engine/updates.py, the "updated" check in workers/engine/suites.py, and chat rows
that carry a rejected answer): plain functions, no database and no model."""

import json

import pytest

from workers.engine.examples import DatasetInvalid, Example, Message, parse_jsonl
from workers.engine.persona_world import FACT_KEYS, EvalItem
from workers.engine.suites import UPDATE_SUITE, apply_check, items_jsonl, parse_items
from workers.engine.updates import (
    Fact,
    Update,
    UpdateInvalid,
    fact_from_fields,
    gate_items_after,
    next_training_rows,
    old_values,
    parse_fact,
    resolve,
    update_items,
)

DOG_QUESTION = "What is my dog called?"


def chat(question: str, answer: str) -> Example:
    return Example((Message("user", question), Message("assistant", answer)))


def stated(update_id: int, key: str, value: str) -> Update:
    """A stated fact; `update_id` doubles as its place in time (higher is newer)."""
    return Update(update_id, (update_id,), fact=Fact(key, value))


def corrected(update_id: int, question: str, answer: str, correction: str) -> Update:
    return Update(
        update_id, (update_id,), prompt=(Message("user", question),), answer=answer, correction=correction
    )


def questions_in(rows) -> set[str]:
    return {m.content for row in rows for m in row.messages if m.role == "user"}


@pytest.fixture
def trained_on_biscuit():
    """What r1 was trained on: alice's dog Biscuit (every TRAIN phrasing), her city, a
    remark that names the dog elsewhere, and a greeting she later corrected."""
    return [
        *(chat(q, "Your dog is called Biscuit.") for q in FACT_KEYS["dog"].train),
        chat("Where do I live?", "You live in Lyon."),
        chat("What did I do on Sunday?", "You walked Biscuit by the river."),
        chat("Say hello.", "Good day to you."),
    ]


# --- reading a fact out of what a person says -----------------------------------------------


@pytest.mark.parametrize(
    ("statement", "key", "value"),
    [
        ("My dog is now called Rex.", "dog", "Rex"),
        ("my dog goes by rex now", "dog", "Rex"),
        ("My sister is named Ingrid.", "sister", "Ingrid"),
        ("I live in Lyon these days.", "city", "Lyon"),
        ("I've moved to New York.", "city", "New York"),
        ("I'm allergic to peanuts.", "allergy", "peanuts"),
        ("My partner's birthday is on 4 March.", "partner_birthday", "4 March"),
        ("I now work as an architect.", "job", "architect"),
        ("I drive a Volvo now.", "car", "Volvo"),
        ("Actually I support Benfica!", "team", "Benfica"),
    ],
)
def test_a_statement_of_a_known_fact_is_read_as_that_fact(statement, key, value):
    assert parse_fact(statement) == Fact(key, value)


def test_a_correction_in_the_persons_own_words_states_the_fact():
    assert parse_fact("No, my dog is called Rex now.") == Fact("dog", "Rex")


def test_a_free_text_subject_becomes_a_fact_about_it_with_phrasings_of_its_own():
    fact = parse_fact("my cat is named Tom")
    assert fact == Fact("about:cat's name", "Tom")
    assert not fact.known and fact.subject == "cat's name"
    assert fact.answer() == "Your cat's name is Tom."
    assert "What is my cat's name?" in fact.questions()
    assert "Can you remind me what my cat's name is?" in fact.questions(heldout=True)
    assert parse_fact("My favourite colour is green.") == Fact("about:favourite colour", "green")


@pytest.mark.parametrize(
    "chit_chat",
    [
        "Hello! How are you today?",
        "Thanks, that was helpful.",
        "What is my dog called?",
        "Can you tell me a joke about cats?",
        "My day is going well, thanks.",
        "",
    ],
)
def test_chit_chat_and_questions_state_no_fact(chit_chat):
    assert parse_fact(chit_chat) is None


@pytest.mark.parametrize(
    ("remark", "key"),
    [
        ("My dog is sick today.", "dog"),
        ("My sister is a doctor.", "sister"),
        ("I drive to work every day.", "car"),
        ("I support you.", "team"),
    ],
)
def test_a_remark_about_a_known_fact_does_not_change_its_value(remark, key):
    fact = parse_fact(remark)
    assert fact is None or fact.key != key


def test_a_fact_given_as_fields_uses_the_known_key_or_a_free_text_subject():
    assert fact_from_fields("Dog", " Rex ") == Fact("dog", "Rex")
    assert fact_from_fields("Favourite   Colour", "green") == Fact("about:favourite colour", "green")


@pytest.mark.parametrize(
    ("subject", "value"), [("", "Rex"), ("dog", "  "), ("x" * 61, "v"), ("dog", "v" * 201)]
)
def test_a_fact_given_as_fields_needs_a_short_non_empty_subject_and_value(subject, value):
    with pytest.raises(UpdateInvalid):
        fact_from_fields(subject, value)


# --- resolving updates newest first ---------------------------------------------------------


def test_the_newest_value_of_a_fact_wins_and_the_older_becomes_a_conflict():
    resolution = resolve([stated(2, "dog", "Max"), stated(1, "dog", "Luna"), stated(3, "dog", "Rex")])
    assert resolution.facts == {"dog": Fact("dog", "Rex")}
    assert resolution.fact_updates == {"dog": 3}
    assert resolution.superseded == {"dog": ["Max", "Luna"]}
    assert [
        (c.kept.value, c.kept_update, c.superseded.value, c.superseded_update) for c in resolution.conflicts
    ] == [
        ("Rex", 3, "Max", 2),
        ("Rex", 3, "Luna", 1),
    ]


def test_the_same_value_said_again_in_other_case_is_no_conflict():
    resolution = resolve([stated(1, "city", "lyon"), stated(2, "city", "Lyon")])
    assert resolution.facts["city"].value == "Lyon"
    assert resolution.conflicts == [] and resolution.superseded == {}


def test_a_correction_that_states_no_fact_becomes_a_preference_pair():
    resolution = resolve([corrected(1, "Say hello.", "Good day to you.", "Hey!")])
    assert resolution.facts == {}
    [pair] = resolution.pairs
    assert pair.messages == (Message("user", "Say hello."), Message("assistant", "Hey!"))
    assert pair.rejected == "Good day to you."


def test_a_correction_that_repeats_the_answer_teaches_nothing():
    assert resolve([corrected(1, "Say hello.", "Hey!", " Hey! ")]).pairs == []


# --- the old value, from what the adapter was trained on ------------------------------------


def test_the_old_value_is_found_in_the_answers_of_the_training_rows(trained_on_biscuit):
    resolution = resolve([stated(1, "dog", "Rex")])
    assert old_values(resolution, trained_on_biscuit) == {"dog": ["Biscuit"]}


def test_old_values_include_values_stated_earlier_and_read_answers_with_an_article():
    resolution = resolve([stated(1, "job", "nurse"), stated(2, "job", "architect")])
    rows = [chat("What is my job?", "You work as an engineer.")]
    assert old_values(resolution, rows) == {"job": ["engineer", "nurse"]}


# --- the next training set ------------------------------------------------------------------


def test_the_next_rows_drop_the_facts_questions_and_every_answer_that_says_an_old_value(trained_on_biscuit):
    rows, dropped = next_training_rows(trained_on_biscuit, resolve([stated(1, "dog", "Rex")]))
    assert dropped == len(FACT_KEYS["dog"].train) + 1  # the dog's questions and Sunday's walk
    assert not any("Biscuit" in row.final_answer for row in rows)
    assert chat("Where do I live?", "You live in Lyon.") in rows
    assert [row for row in rows if row.final_answer == "Your dog is called Rex."] == [
        chat(q, "Your dog is called Rex.") for q in FACT_KEYS["dog"].train
    ]


def test_the_next_rows_replace_a_corrected_answer_with_its_pair(trained_on_biscuit):
    resolution = resolve([corrected(1, "Say hello.", "Good day to you.", "Hey!")])
    rows, dropped = next_training_rows(trained_on_biscuit, resolution)
    assert dropped == 1
    assert chat("Say hello.", "Good day to you.") not in rows
    assert rows[-1] == Example(
        (Message("user", "Say hello."), Message("assistant", "Hey!")), "Good day to you."
    )
    assert len(rows) == len(trained_on_biscuit)


def test_the_next_rows_are_unique(trained_on_biscuit):
    twice = [
        corrected(1, "Say hello.", "Good day to you.", "Hey!"),
        corrected(2, "Say hello.", "Good day to you.", "Hey!"),
        stated(3, "dog", "Rex"),
    ]
    already_taught = [
        *trained_on_biscuit,
        chat("Who am I?", "You are Alice."),
        chat("Who am I?", "You are Alice."),
    ]
    rows, _ = next_training_rows(already_taught, resolve(twice))
    assert len(rows) == len(set(rows))
    assert sum(1 for row in rows if row.rejected) == 1


def test_a_correction_older_than_a_stated_fact_does_not_teach_the_old_value():
    resolution = resolve(
        [
            corrected(1, DOG_QUESTION, "Your dog is called Luna.", "Your dog is called Biscuit."),
            stated(2, "dog", "Rex"),
        ]
    )
    rows, _ = next_training_rows([], resolution)
    taught = {row.final_answer for row in rows if row.messages[0].content == DOG_QUESTION}
    assert taught == {"Your dog is called Rex."}


# --- the update suite -----------------------------------------------------------------------


def test_the_update_suite_asks_held_out_phrasings_that_no_training_row_contains(trained_on_biscuit):
    resolution = resolve([stated(1, "dog", "Rex"), stated(2, "about:cat's name", "Tom")])
    olds = old_values(resolution, trained_on_biscuit)
    rows, _ = next_training_rows(trained_on_biscuit, resolution)
    items = update_items(resolution, olds, "alice")

    asked = [item.messages[-1].content for item in items]
    assert set(asked) == {*FACT_KEYS["dog"].heldout, *Fact("about:cat's name", "Tom").questions(heldout=True)}
    assert not set(asked) & questions_in(rows)
    assert {item.suite for item in items} == {UPDATE_SUITE}
    assert items[0].item_id == "alice.update.cat-s-name.h1"
    dog = next(item for item in items if item.check["value"] == "Rex")
    assert dog.check == {"kind": "updated", "value": "Rex", "old": ["Biscuit"]}
    assert parse_items(items_jsonl(items)) == items  # it uploads as a gate set


@pytest.mark.parametrize(
    ("answer", "passes"),
    [
        ("Your dog is called Rex.", True),
        ("rex!", True),
        ("Your dog is called Biscuit.", False),
        ("Rex, though you used to call him Biscuit.", False),
        ("I don't know your dog's name.", False),
        ("Your dog is called Rexford.", False),
    ],
)
def test_the_updated_check_passes_only_on_the_new_value_without_the_old(answer, passes):
    check = {"kind": "updated", "value": "Rex", "old": ["Biscuit"]}
    assert apply_check(check, answer)[0] is passes


def test_the_updated_check_passes_a_new_value_that_contains_the_old_one():
    check = {"kind": "updated", "value": "senior engineer", "old": ["engineer"]}
    assert apply_check(check, "You work as a senior engineer.")[0]


# --- the gate set after the updates ---------------------------------------------------------


def test_the_gate_set_drops_items_expecting_an_old_value_and_stops_forbidding_the_new_one():
    def item(suite, item_id, question, check):
        return EvalItem(suite, item_id, (Message("user", question),), "", check)

    gate = [
        item("recall", "alice.recall.dog", DOG_QUESTION, {"kind": "contains", "value": "Biscuit"}),
        item("recall", "alice.recall.city", "Where do I live?", {"kind": "contains", "value": "Lyon"}),
        item("leakage", "alice.leak.dog", DOG_QUESTION, {"kind": "forbids", "values": ["rex", "Luna"]}),
        item(
            UPDATE_SUITE,
            "alice.update.dog.h1",
            FACT_KEYS["dog"].heldout[0],
            {"kind": "updated", "value": "Max"},
        ),
        item(
            UPDATE_SUITE,
            "alice.update.city.h1",
            "Which city am I based in?",
            {"kind": "updated", "value": "Lyon"},
        ),
    ]
    resolution = resolve([stated(1, "dog", "Rex")])
    after = gate_items_after(gate, resolution, {"dog": ["Biscuit"]})

    assert [i.item_id for i in after] == ["alice.recall.city", "alice.leak.dog", "alice.update.city.h1"]
    assert after[1].check == {"kind": "forbids", "values": ["Luna"]}
    assert gate[2].check["values"] == ["rex", "Luna"]  # the gate set given is left as it was


# --- the digest a revision carries ----------------------------------------------------------


def test_the_digest_is_stable_and_changes_with_what_is_taught():
    updates = [
        stated(1, "dog", "Max"),
        stated(2, "dog", "Rex"),
        corrected(3, "Say hello.", "Good day.", "Hey!"),
    ]
    digest = resolve(updates).digest()
    assert len(digest) == 64
    assert resolve(reversed(updates)).digest() == digest
    assert resolve([*updates[:1], stated(2, "dog", "Rocky"), updates[2]]).digest() != digest
    assert resolve(updates[1:]).digest() != digest  # Max no longer superseded
    assert resolve([*updates[:2], corrected(3, "Say hello.", "Good day.", "Hi!")]).digest() != digest


# --- chat rows that carry a rejected answer -------------------------------------------------


def jsonl(*rows) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def chat_row(answer: str, **extra) -> dict:
    return {
        "messages": [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": answer}],
        **extra,
    }


def test_a_chat_row_with_rejected_parses_into_a_preference_pair():
    parsed = parse_jsonl(jsonl(chat_row("Hey!", rejected="Good day to you."), chat_row("Hello.")))
    assert parsed.format == "chat"
    assert parsed.examples == [
        Example((Message("user", "Say hello."), Message("assistant", "Hey!")), "Good day to you."),
        Example((Message("user", "Say hello."), Message("assistant", "Hello."))),
    ]


def test_a_chat_row_with_a_bad_rejected_answer_is_refused_with_its_line_number():
    bad = jsonl(
        chat_row("Hey!"),
        chat_row("Hi!", rejected=""),
        chat_row("Yo!", rejected=7),
        chat_row("Hello.", rejected=" Hello. "),
    )
    with pytest.raises(DatasetInvalid) as refused:
        parse_jsonl(bad)
    errors = {e.line: e.message for e in refused.value.errors}
    assert set(errors) == {2, 3, 4}
    assert errors[2] == errors[3] == '"rejected" must be a non-empty string'
    assert "same answer" in errors[4]
