"""A footprint study through the real stack: service -> database -> Redis -> a Celery worker."""

import pytest

from adapters_app.lifecycle.studies import cancel_study, create_study, resume_study, study_report
from adapters_app.models import AuditEvent, Job, StudyCell, StudyRun
from tests.conftest import wait_until
from workers.engine.persona_world import generate_world

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# Small enough for the micro base in seconds; the micro base ships no replay corpus.
TRAINING = {"steps": 6, "batch_size": 4, "replay": 0.0, "learning_rate": 0.01}


def small_study(micro_base, actor, **grid):
    raw = {
        "name": "smoke",
        "bases": [micro_base.name],
        "ranks": [1, 4],
        "targets": ["attention"],
        "inits": ["default", "tail"],
        "seeds": 1,
        "people": 2,
        "training": TRAINING,
        **grid,
    }
    return create_study(raw, actor=actor)


def recorded_run(cell, person: str, seed: int = 0) -> StudyRun:
    """A run as a finished pass records it (a passing adapter, recall 1.0)."""
    return StudyRun.objects.create(
        cell=cell,
        person=person,
        seed=seed,
        scores={"recall": 1.0},
        bare_scores={"recall": 0.0},
        passed=True,
        collapsed=False,
        first_loss=2.0,
        final_loss=0.5,
        train_seconds=1.0,
    )


def finished(study):
    report = study_report(study)
    failed = [c.cell.job for c in report.cells if c.cell.job and c.cell.job.state == Job.FAILED]
    assert not failed, failed[0].error  # fail fast, with the worker's reason
    return report if report.state == "finished" else None


def test_a_study_runs_every_cell_on_a_worker_and_records_each_run_once(
    micro_base, actor, celery_worker_process
):
    study = small_study(micro_base, actor)
    assert study.cells.count() == 4
    report = wait_until(lambda: finished(study), timeout=600)

    assert report.runs_done == report.runs_total == 8
    people = {p.handle for p in generate_world(0, people=2).people}
    for cell in report.cells:
        runs = list(cell.cell.runs.all())
        assert {r.person for r in runs} == people and {r.seed for r in runs} == {0}
        assert cell.cell.job.state == Job.SUCCEEDED
        # What one adapter of the cell costs: tail stores its start beside what it learned.
        stored = (
            2 * cell.cell.trainable_parameters if cell.cell.init == "tail" else cell.cell.trainable_parameters
        )
        assert cell.cell.stored_parameters == stored
        assert cell.cell.payload_bytes > 4 * stored
        assert cell.reliability.runs == 2 and 0 <= cell.reliability.pass_rate <= 1
        for run in runs:
            assert set(run.scores) >= {"recall", "tool", "preference", "leakage", "retention"}
            assert run.bare_scores.keys() == run.scores.keys()
            assert len(run.losses) == TRAINING["steps"] and run.first_loss == pytest.approx(
                run.losses[0], abs=1e-5
            )
    rank1, rank4 = (StudyCell.objects.get(study=study, rank=r, init="default") for r in (1, 4))
    assert rank4.trainable_parameters == 4 * rank1.trainable_parameters
    assert [r.base for r in report.recommendations] == [micro_base.name]


def test_a_resumed_study_keeps_its_recorded_runs_and_trains_only_the_rest(
    micro_base, actor, celery_worker_process
):
    study = small_study(micro_base, actor, ranks=[2], inits=["default"])
    cancel_study(study, actor=actor)
    (cell,) = study.cells.select_related("job")
    assert cell.job.state == Job.CANCELLED
    # As if a first pass had finished before the cancel: one person's run is recorded.
    first_person = generate_world(0, people=2).people[0].handle
    kept = recorded_run(cell, first_person)

    assert resume_study(study, actor=actor) == 1
    report = wait_until(lambda: finished(study), timeout=300)

    runs = list(StudyRun.objects.filter(cell=cell).order_by("person"))
    assert len(runs) == 2 and kept in runs and runs[runs.index(kept)].scores == {"recall": 1.0}
    resumed = report.cells[0].cell.job
    assert resumed.pk != cell.job_id and resumed.state == Job.SUCCEEDED
    assert "1 of 2 runs recorded already, 1 to go" in resumed.log
    actions = list(AuditEvent.objects.filter(object_type="Study").values_list("action", flat=True))
    assert actions == ["study.resume", "study.cancel", "study.create"]
