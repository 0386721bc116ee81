"""The retention set for real bases: fixed, large enough, and held out of every person's data."""

from workers.engine.general_knowledge import general_knowledge_items
from workers.engine.persona_world import generate_world
from workers.engine.suites import grade, items_jsonl, parse_items


def test_it_holds_at_least_a_hundred_distinct_questions_with_stable_ids():
    items = general_knowledge_items()
    assert len(items) >= 100
    assert len({item.item_id for item in items}) == len(items)
    assert len({item.messages for item in items}) == len(items)
    assert [item.item_id for item in items] == [item.item_id for item in general_knowledge_items()]


def test_it_accepts_a_real_models_own_phrasing_and_refuses_a_wrong_answer():
    capital = next(item for item in general_knowledge_items() if item.expected == "Paris")
    assert grade(capital, "The capital of France is Paris.").passed
    assert not grade(capital, "The capital of France is Lyon.").passed


def test_no_question_appears_in_any_persons_training_rows():
    world = generate_world(0, people=20)
    trained = {
        message["content"]
        for person in world.people
        for row in person.training_rows()
        for message in row["messages"]
    }
    assert not trained & {item.messages[0].content for item in general_knowledge_items()}


def test_it_round_trips_as_an_evaluation_set_file():
    items = general_knowledge_items()
    assert parse_items(items_jsonl(items)) == items
