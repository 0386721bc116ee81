"""A footprint study over people of the fleet: each adapter trains on the data behind its
live revision and is graded on its gate's evaluation set, pinned when the study is made."""

import json

import pytest

from adapters_app.lifecycle.base_models import MICRO_BASE_NAME
from adapters_app.lifecycle.datasets import upload_dataset
from adapters_app.lifecycle.errors import Conflict, Invalid
from adapters_app.lifecycle.gates import DEFAULT_GATE, configure_gate
from adapters_app.lifecycle.people import create_adapter, create_person, erase_person
from adapters_app.lifecycle.pointer import promote
from adapters_app.lifecycle.studies import create_study, resume_study, study_report
from adapters_app.models import Adapter, Dataset, Person, Study, StudyCell, StudyRun
from tests.conftest import OTHER_FACTS, wait_until
from tests.test_study_integration import TRAINING, finished, recorded_run
from workers.engine.persona_world import generate_world, jsonl
from workers.engine.suites import items_jsonl

GRID = {"ranks": [2], "targets": ["attention"], "inits": ["default"], "seeds": 1, "training": TRAINING}


def fleet_study(micro_base, actor, adapters, **extra):
    raw = {"name": "fleet", "bases": [micro_base.name], "adapters": adapters, **GRID, **extra}
    return create_study(raw, actor=actor)


@pytest.fixture
def untrained(micro_base, actor):
    """Makes a person whose adapter is untrained: a training set and an evaluation set
    uploaded, no revision, no gate."""

    def make(handle: str):
        person = create_person(handle, actor=actor)
        adapter = create_adapter(person, "assistant", base=micro_base, actor=actor)
        upload_dataset(person, OTHER_FACTS, name=f"{handle}-facts", actor=actor)
        upload_dataset(person, held_out_items(), name=f"{handle}-eval", purpose="eval", actor=actor)
        return adapter

    return make


@pytest.fixture
def bob(untrained):
    return untrained("bob")


@pytest.fixture
def dora(untrained):
    return untrained("dora")


def held_out_items() -> bytes:
    world = generate_world(0, people=2)
    return items_jsonl(world.people[0].eval_items(world)[:2])


# --- what the cohort pins ----------------------------------------------------------------


@pytest.mark.django_db
def test_each_adapter_is_pinned_to_its_live_revisions_data_and_its_gates_evaluation_set(
    micro_base, actor, adapter, dataset, eval_set, make_revision, bob
):
    live = make_revision()
    promote(live, actor=actor, override_reason="test: no evaluation yet")
    configure_gate(adapter, actor=actor, eval_dataset=eval_set, thresholds={"recall": {"min": 0.6}})
    # Uploaded after the live revision was trained: not what made alice's current state.
    upload_dataset(adapter.person, OTHER_FACTS, name="newer", actor=actor)

    study = fleet_study(micro_base, actor, ["alice/assistant", "bob/assistant"])

    alice_pin, bob_pin = study.cohort["adapters"]
    assert study.people == 2 and study.fleet_handles == ["alice/assistant", "bob/assistant"]
    assert (alice_pin["train"]["id"], alice_pin["train"]["sha256"]) == (dataset.pk, dataset.sha256)
    assert (alice_pin["eval"]["id"], alice_pin["eval"]["sha256"]) == (eval_set.pk, eval_set.sha256)
    # bob has trained nothing yet: his newest training set, his newest graded set.
    assert (bob_pin["train"]["name"], bob_pin["eval"]["name"]) == ("bob-facts", "bob-eval")
    # Each run is judged by its adapter's own gate, pinned too: alice's is laxer on recall.
    assert alice_pin["gate"] == {**DEFAULT_GATE, "recall": {"min": 0.6}}
    assert bob_pin["gate"] == DEFAULT_GATE
    assert StudyCell.objects.get(study=study).runs_total == 2


@pytest.mark.django_db
def test_every_adapter_the_cohort_cannot_use_is_named_and_nothing_is_written(micro_base, actor, adapter, bob):
    create_adapter(create_person("carol", actor=actor), "assistant", base=micro_base, actor=actor)
    with pytest.raises(Invalid) as refused:
        fleet_study(
            micro_base, actor, ["alice/assistant", "ghost/assistant", "carol/assistant", "bob/assistant"]
        )
    problem = refused.value.details["adapters"]
    assert "ghost/assistant: no such adapter" in problem
    assert "alice/assistant: its person has no training data" in problem
    assert "carol/assistant: its person has no training data" in problem
    assert "bob" not in problem
    assert not Study.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"people": 3}, "people"),
        ({"world_seed": 1}, "world_seed"),
        ({"adapters": ["bob/assistant"]}, "adapters"),
        ({"adapters": ["bob/assistant", " bob/assistant"]}, "adapters"),  # one adapter, twice
        ({"adapters": "bob/assistant"}, "adapters"),
    ],
)
def test_a_fleet_cohort_refuses_generated_settings_and_fewer_than_two_adapters(
    micro_base, actor, bob, dora, change, field
):
    raw = {
        "name": "fleet",
        "bases": [micro_base.name],
        "adapters": ["bob/assistant", "dora/assistant"],
        **GRID,
    }
    with pytest.raises(Invalid) as refused:
        create_study({**raw, **change}, actor=actor)
    assert field in refused.value.details
    assert not Study.objects.exists()


# --- the console form ----------------------------------------------------------------------


def fleet_form(**fields) -> dict:
    """The launch form as posted for a one-cell grid with "people of the fleet" chosen."""
    return {
        "name": "fleet",
        "bases": [MICRO_BASE_NAME],
        "ranks": ["2"],
        "targets": ["attention"],
        "inits": ["default"],
        "seeds": "1",
        "cohort": "fleet",
        **fields,
    }


@pytest.fixture
def console(client, actor, django_user_model):
    client.force_login(django_user_model.objects.get(pk=actor.user_id))
    return client


@pytest.mark.django_db
def test_the_form_launches_a_fleet_cohort_from_one_handle_per_line(console, micro_base, bob, dora):
    page = console.get("/studies/new")
    assert b'value="fleet"' in page.content and b"study-adapters" in page.content
    response = console.post(
        "/studies/new",
        fleet_form(
            name="fleet from the form",
            people="4",  # hidden on the page, still posted: ignored for a fleet cohort
            world_seed="0",
            adapters="bob/assistant\r\n dora/assistant\r\n",
        ),
    )
    study = Study.objects.get()
    assert response.status_code == 302 and response["Location"] == study.get_absolute_url()
    assert study.fleet_handles == ["bob/assistant", "dora/assistant"]
    shown = console.get(study.get_absolute_url()).content.decode()
    assert "2 adapters of the fleet (bob/assistant, dora/assistant;" in shown


@pytest.mark.django_db
def test_the_form_keeps_the_fleet_choice_and_names_the_problem(console, micro_base, bob):
    response = console.post("/studies/new", fleet_form(adapters="bob/assistant\nghost/x"))
    body = response.content.decode()
    assert response.status_code == 400
    assert "ghost/x: no such adapter" in body
    assert 'value="fleet" checked' in body and "bob/assistant\nghost/x</textarea>" in body
    assert not Study.objects.exists()


# --- erasure ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_erasing_a_person_removes_the_study_runs_trained_on_their_data_only(micro_base, actor, bob, dora):
    study = fleet_study(micro_base, actor, ["bob/assistant", "dora/assistant"])
    cell = study.cells.get()
    for handle in ("bob/assistant", "dora/assistant", "bob"):  # "bob": a generated person's run
        recorded_run(cell, handle)

    counts = erase_person(bob.person, actor=actor, reason="asked to be forgotten")

    assert counts["study_runs"] == 1
    assert sorted(StudyRun.objects.values_list("person", flat=True)) == ["bob", "dora/assistant"]


@pytest.mark.django_db
def test_erasing_a_member_takes_them_out_of_the_cohort_and_a_cell_no_longer_waits_for_them(
    micro_base, actor, bob, dora
):
    study = fleet_study(micro_base, actor, ["bob/assistant", "dora/assistant"])
    cell = study.cells.get()
    assert cell.runs_total == 2
    recorded_run(cell, "bob/assistant")

    erase_person(dora.person, actor=actor, reason="asked to be forgotten")

    study.refresh_from_db()
    assert study.fleet_handles == ["bob/assistant"] and study.people == 1
    assert study.cohort["erased"] == 1 and "dora" not in json.dumps(study.cohort)
    report = study_report(study)
    assert report.runs_done == report.runs_total == 1 and report.state == "finished"
    with pytest.raises(Conflict, match="nothing to resume"):
        resume_study(study, actor=actor)


@pytest.mark.django_db
def test_a_study_whose_every_member_was_erased_still_says_it_was_a_fleet_cohort(
    micro_base, actor, bob, dora, console
):
    study = fleet_study(micro_base, actor, ["bob/assistant", "dora/assistant"])
    for adapter in (bob, dora):
        erase_person(adapter.person, actor=actor, reason="asked to be forgotten")

    page = console.get(study.get_absolute_url()).content.decode()

    assert "0 adapters of the fleet (none left;" in page and "2 more erased since" in page
    assert "generated people" not in page


@pytest.mark.django_db
def test_a_cell_reads_the_data_of_the_members_it_still_has_to_run_only(micro_base, actor, bob, dora):
    from workers.study_run import CohortDataGone, cohort_members

    study = fleet_study(micro_base, actor, ["bob/assistant", "dora/assistant"])
    [member] = cohort_members(study, wanted=lambda handle: handle == "bob/assistant")
    assert member.handle == "bob/assistant" and member.examples and member.items

    # A job that read the study before dora's erasure still lists her: she is skipped.
    erase_person(dora.person, actor=actor, reason="asked to be forgotten")
    assert [m.handle for m in cohort_members(study)] == ["bob/assistant"]

    # Data gone from a member the cohort still lists is an error, not a smaller cohort.
    Dataset.objects.filter(person=bob.person).delete()
    with pytest.raises(CohortDataGone, match="bob/assistant: the train set the study pinned"):
        cohort_members(study)


@pytest.mark.django_db
def test_a_pass_does_not_record_runs_of_a_person_erased_while_it_trained(micro_base, actor, bob, dora):
    from workers.study_run import still_pinned

    study = fleet_study(micro_base, actor, ["bob/assistant", "dora/assistant"])
    both = {"bob/assistant", "dora/assistant"}
    assert still_pinned(study, both) == both

    erase_person(dora.person, actor=actor, reason="asked to be forgotten")

    assert still_pinned(study, both) == {"bob/assistant"}


# --- through a real worker -----------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_fleet_cohort_trains_and_grades_each_adapter_on_its_own_data_on_a_worker(
    micro_base, actor, celery_worker_process
):
    world = generate_world(0, people=2)
    handles = []
    for persona in world.people:
        person = create_person(persona.handle, actor=actor)
        adapter = create_adapter(person, "assistant", base=micro_base, actor=actor)
        upload_dataset(person, jsonl(persona.training_rows()), name="train", actor=actor)
        # Held-out personal items only: no retention suite in this cohort's evaluation sets.
        held_out = items_jsonl(persona.eval_items(world))
        evaluation, _ = upload_dataset(person, held_out, name="heldout", purpose="eval", actor=actor)
        configure_gate(adapter, actor=actor, eval_dataset=evaluation)
        handles.append(adapter.handle)
    # The first person's operator accepts anything: their runs must pass by their own gate.
    anything = {suite: {"min": 0.0} for suite in ("recall", "tool", "preference", "leakage")}
    lenient = Adapter.objects.get(person__handle=world.people[0].handle)
    configure_gate(lenient, actor=actor, thresholds={**anything, "retention_drop": {"max": 1.0}})

    study = fleet_study(micro_base, actor, handles)
    report = wait_until(lambda: finished(study), timeout=600)

    runs = list(StudyRun.objects.filter(cell__study=study))
    assert sorted(r.person for r in runs) == sorted(handles)
    for run in runs:
        assert "retention" not in run.scores  # graded on the person's own set, not the generated world's
        assert set(run.scores) >= {"recall", "tool"} and run.bare_scores.keys() == run.scores.keys()
    assert report.runs_done == 2
    judged = {run.person: run for run in runs}
    assert judged[handles[0]].passed and judged[handles[0]].gate_failures == []

    # Erasing one person takes their run and their place in the cohort away: the study is
    # complete with the other's run, not waiting for one nobody can train again.
    erase_person(Person.objects.get(handle=world.people[0].handle), actor=actor, reason="asked")
    assert sorted(StudyRun.objects.filter(cell__study=study).values_list("person", flat=True)) == [handles[1]]
    report = study_report(Study.objects.get(pk=study.pk))
    assert report.state == "finished" and report.runs_done == report.runs_total == 1


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_person_erased_just_after_a_study_is_made_is_not_trained_and_the_rest_finish(
    micro_base, actor, bob, dora, untrained, celery_worker_process
):
    carol = untrained("carol")
    study = fleet_study(micro_base, actor, [a.handle for a in (bob, carol, dora)])
    # Whether the cell's job starts before or after this, it must not record dora's run:
    # after, her place in the cohort is gone; before, each pass checks its people first.
    erase_person(dora.person, actor=actor, reason="asked to be forgotten")

    report = wait_until(lambda: finished(Study.objects.get(pk=study.pk)), timeout=600)

    runs = StudyRun.objects.filter(cell__study=study)
    assert sorted(runs.values_list("person", flat=True)) == ["bob/assistant", "carol/assistant"]
    assert report.runs_done == report.runs_total == 2
