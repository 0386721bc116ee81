"""Footprint study pages: launch form, list, live progress, results, cancel/resume, exports.

The views call the real study services on a real micro base. Recorded runs are written
as rows here (a worker would write them; tests/test_study_browser.py runs one for real).
No Celery task is sent: on_commit callbacks never run under the plain `db` fixture.
"""

import csv
import io
import json

import pytest

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.studies import DEFAULT_TRAINING, RESULT_COLUMNS, create_study, study_report
from adapters_app.models import AuditEvent, Job, Study, StudyCell, StudyRun
from tests.conftest import with_role

pytestmark = pytest.mark.django_db

SMALL_GRID = {
    "ranks": [1, 4],
    "targets": ["attention"],
    "inits": ["default", "tail"],
    "seeds": 1,
    "people": 2,
}


@pytest.fixture
def operator(django_user_model):
    return with_role(django_user_model.objects.create_user("ops", password="pw-ops-12345"), "operator")


@pytest.fixture
def console(client, operator):
    client.force_login(operator)
    return client


@pytest.fixture
def viewer_console(client, django_user_model):
    client.force_login(with_role(django_user_model.objects.create_user("vera"), "viewer"))
    return client


@pytest.fixture
def small_study(micro_base, operator):
    """Four cells (ranks 1 and 4 x inits default and tail), two runs each, all queued."""
    return create_study(
        {"name": "tiny", "bases": [micro_base.name], **SMALL_GRID},
        actor=Actor.from_user(operator, via="console"),
    )


SCORES = {"recall": 0.9, "tool": 0.8, "preference": 0.85, "leakage": 1.0, "retention": 0.95}


def record_runs(cell: StudyCell, passed: list[bool], *, payload_bytes: int, collapsed: bool = False) -> None:
    """What a worker records for a finished cell: its size, and one run per person and seed."""
    StudyCell.objects.filter(pk=cell.pk).update(
        payload_bytes=payload_bytes,
        stored_parameters=payload_bytes // 4,
        trainable_parameters=payload_bytes // 4,
    )
    for index, ok in enumerate(passed):
        StudyRun.objects.create(
            cell=cell,
            person=f"person-{index}",
            seed=0,
            scores={**SCORES, "recall": 0.9 if ok else 0.3},
            bare_scores={**SCORES, "recall": 0.1},
            passed=ok,
            gate_failures=[] if ok else ["recall 0.300 >= 0.5: fail"],
            collapsed=collapsed,
            collapse_reasons=["loss stalled"] if collapsed else [],
            first_loss=3.0,
            final_loss=1.0,
            losses=[3.0, 2.0, 1.0],
            train_seconds=1.5,
        )


def finish(study: Study) -> dict[tuple[int, str], StudyCell]:
    """Record every run of the small study: rank 1 passes half its runs, rank 4 all of them."""
    cells = {(c.rank, c.init): c for c in study.cells.all()}
    for (rank, init), cell in cells.items():
        size = 1000 * rank + (10 if init == "tail" else 0)
        record_runs(cell, [True, rank == 4], payload_bytes=size)
    return cells


def url(study: Study, action: str = "") -> str:
    return f"/studies/{study.pk}/{action}"


# --- launching ---------------------------------------------------------------------


def test_the_form_offers_the_default_grid_and_says_how_many_runs_it_makes(console, micro_base):
    page = console.get("/studies/new").content.decode()
    for rank in (1, 2, 4, 8, 16, 32):
        assert f'name="ranks" value="{rank}" checked' in page
    for init in ("default", "pissa", "olora", "tail"):
        assert f'name="inits" value="{init}" checked' in page
    assert f'name="bases" value="{micro_base.name}" checked' in page
    assert f'value="{DEFAULT_TRAINING["steps"]}"' in page
    # 1 base x 6 ranks x 2 target sets x 4 inits x 3 seeds x 4 people
    assert '<output id="study-runs" for="study-form" data-study-runs>576</output>' in page
    # Checkpointing is a choice, "auto" (on where activations, not weights, fill memory) first.
    assert '<select id="study-gradient_checkpointing" name="gradient_checkpointing">' in page
    assert '<option value="auto">auto</option>' in page


def test_submitting_the_form_writes_the_cells_and_queues_one_study_job_per_cell(console, micro_base):
    response = console.post(
        "/studies/new",
        {
            "name": "smallest reliable",
            "bases": [micro_base.name],
            "ranks": ["1", "4"],
            "targets": ["attention"],
            "inits": ["default", "tail"],
            "seeds": "1",
            "people": "2",
            "world_seed": "7",
            "steps": "10",
            "learning_rate": "0.01",
            "batch_size": "4",
            "replay": "0",
            "gradient_checkpointing": "off",
            "reliability_target": "0.9",
        },
    )
    study = Study.objects.get()
    assert response.status_code == 302 and response["Location"] == url(study)
    assert study.grid == {
        "bases": [micro_base.name],
        "ranks": [1, 4],
        "targets": ["attention"],
        "inits": ["default", "tail"],
        "seeds": [0],
    }
    assert study.cohort == {"world_seed": 7, "people": 2}
    assert study.training["steps"] == 10 and study.training["learning_rate"] == 0.01
    assert study.training["gradient_checkpointing"] == "off"
    assert study.reliability_target == 0.9 and study.created_by == "ops"
    cells = list(study.cells.select_related("job"))
    assert sorted((c.rank, c.init) for c in cells) == [
        (1, "default"),
        (1, "tail"),
        (4, "default"),
        (4, "tail"),
    ]
    for cell in cells:
        assert cell.runs_total == 2
        assert cell.job.kind == Job.STUDY and cell.job.state == Job.QUEUED and cell.job.adapter is None
        assert cell.job.params["cell"] == cell.pk and cell.job.params["study"] == study.pk
    assert AuditEvent.objects.filter(action="study.create", object_id=str(study.pk)).count() == 1


def test_a_learning_rate_beside_a_base_is_that_bases_recipe_and_the_page_says_so(console, micro_base):
    form = {
        "name": "per base",
        "bases": [micro_base.name],
        "ranks": ["4"],
        "targets": ["attention"],
        "inits": ["default"],
        "seeds": "1",
        "people": "2",
        "learning_rate": "0.01",
        f"learning_rate@{micro_base.name}": "0.002",
        f"replay@{micro_base.name}": "0",
        # A rate beside a base that is not ticked is not part of the study.
        "learning_rate@not-ticked": "0.5",
    }
    assert console.post("/studies/new", form).status_code == 302
    study = Study.objects.get()
    assert study.training["learning_rate"] == 0.01
    assert study.training_per_base == {micro_base.name: {"learning_rate": 0.002, "replay": 0.0}}
    page = console.get(url(study)).content.decode()
    own = page[page.index('class="per-base-recipe">') :].split("</span>")[0]
    assert f">{micro_base.name}: " in own
    assert "<code>learning_rate=0.002</code>" in own and "<code>replay=0.0</code>" in own


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"bases": ["ghost-base"]}, "bases"),
        ({"ranks": ["0", "4"]}, "ranks"),
        ({"inits": ["default", "lora-plus"]}, "inits"),
        ({"people": "many"}, "people"),
        ({"steps": "lots"}, "training"),
        ({"gradient_checkpointing": "sometimes"}, "training"),
        ({"reliability_target": "2"}, "reliability_target"),
        ({"learning_rate@mint-micro": "fast"}, "training_per_base"),
        ({"ranks": ["1", "2", "4", "8", "16", "32"], "seeds": "10", "people": "20"}, "grid"),
    ],
)
def test_invalid_input_is_named_next_to_its_field_and_writes_nothing(console, micro_base, fields, field):
    form = {
        "name": "bad",
        "bases": [micro_base.name],
        "ranks": ["1"],
        "targets": ["attention", "all-linear"],
        "inits": ["default", "pissa", "olora", "tail"],
        "seeds": "1",
        "people": "2",
        "world_seed": "0",
        **fields,
    }
    response = console.post("/studies/new", form)
    assert response.status_code == 400
    page = response.content.decode()
    assert f'id="error-{field}"' in page
    assert "The study was not created" in page
    # What the operator chose is still in the form.
    assert 'name="name" value="bad"' in page
    assert Study.objects.count() == 0 and Job.objects.count() == 0


def test_a_blank_name_is_refused(console, micro_base):
    response = console.post("/studies/new", {"name": " ", "bases": [micro_base.name], "ranks": ["1"]})
    assert response.status_code == 400
    assert 'id="error-name"' in response.content.decode()
    assert not Study.objects.exists()


# --- roles -------------------------------------------------------------------------


def test_a_viewer_sees_no_launch_link_nor_buttons_and_a_forged_post_is_refused(viewer_console, small_study):
    assert "New study" not in viewer_console.get("/studies/").content.decode()
    page = viewer_console.get(url(small_study)).content.decode()
    assert "tiny" in page
    assert "Cancel study" not in page and "Resume study" not in page
    assert viewer_console.get("/studies/new").status_code == 403
    assert viewer_console.post("/studies/new", {"name": "x"}).status_code == 403
    assert viewer_console.post(url(small_study, "cancel")).status_code == 403
    assert viewer_console.post(url(small_study, "resume")).status_code == 403
    assert Study.objects.count() == 1
    assert not Job.objects.filter(state=Job.CANCELLED).exists()


def test_an_operator_sees_the_launch_link_and_the_cancel_button(console, small_study):
    assert "New study" in console.get("/studies/").content.decode()
    page = console.get(url(small_study)).content.decode()
    assert "Cancel study" in page and "Resume study" not in page


# --- cancel and resume -------------------------------------------------------------


def test_cancel_stops_every_cell_and_resume_queues_new_jobs_for_them(console, small_study):
    first_jobs = set(small_study.cells.values_list("job_id", flat=True))
    response = console.post(url(small_study, "cancel"), follow=True)
    page = response.content.decode()
    assert "4 cell(s) cancelled" in page
    assert "Resume study" in page and "Cancel study" not in page
    assert set(Job.objects.filter(pk__in=first_jobs).values_list("state", flat=True)) == {Job.CANCELLED}

    # A second cancel has nothing to stop: the service's refusal is shown as a message.
    assert (
        "no queued or running cells" in console.post(url(small_study, "cancel"), follow=True).content.decode()
    )

    page = console.post(url(small_study, "resume"), follow=True).content.decode()
    assert "4 cell(s) queued again" in page
    new_jobs = set(small_study.cells.values_list("job_id", flat=True))
    assert not new_jobs & first_jobs
    assert set(Job.objects.filter(pk__in=new_jobs).values_list("state", flat=True)) == {Job.QUEUED}
    actions = AuditEvent.objects.filter(object_id=str(small_study.pk)).values_list("action", flat=True)
    assert {"study.create", "study.cancel", "study.resume"} <= set(actions)


def test_a_finished_study_has_nothing_to_cancel_or_resume(console, small_study):
    finish(small_study)
    page = console.get(url(small_study)).content.decode()
    assert "Cancel study" not in page and "Resume study" not in page
    assert "nothing to resume" in console.post(url(small_study, "resume"), follow=True).content.decode()


def test_a_cell_with_every_run_recorded_is_running_until_its_job_stops(console, small_study):
    cells = finish(small_study)
    Job.objects.filter(pk=cells[(1, "default")].job_id).update(state=Job.RUNNING)
    # The job still writes the cell's loss curve after its last run: not finished yet.
    assert study_report(small_study).state == "running"
    Job.objects.filter(pk=cells[(1, "default")].job_id).update(state=Job.SUCCEEDED)
    assert study_report(small_study).state == "finished"


# --- reading -----------------------------------------------------------------------


def test_the_study_page_shows_results_charts_the_recommendation_and_its_evidence(console, small_study):
    cells = finish(small_study)
    page = console.get(url(small_study)).content.decode()
    assert 'class="badge state-finished">finished<' in page
    assert "8/8 runs" in page
    # The smallest cell where every run passes (target 95 %) is rank 4 with the default init…
    recommendation = page[
        page.index('id="recommendation"') : page.index("</section>", page.index('id="recommendation"'))
    ]
    assert "rank 4 · attention · default init" in recommendation
    assert "100% of 2 runs pass the gate" in recommendation
    # …and the smaller cells that fell short are listed with their pass rates.
    assert "rank 1 · attention · default" in recommendation and "rank 1 · attention · tail" in recommendation
    assert recommendation.count("50%") == 2
    # Alpha = 2·rank is stated, the charts are served locally and embedded as data.
    assert "alpha = 2·rank" in page
    assert "/static/plotly/plotly.min.js" in page and "cdn" not in page.lower()
    figures = json.loads(
        page.split('<script id="study-figures" type="application/json">')[1].split("</script>")[0]
    )
    key = f"{cells[(1, 'default')].base.name}-attention"
    assert set(figures) == {f"pass-chart-{key}", f"collapse-chart-{key}", f"scores-chart-{key}"}
    assert all(f'data-figure="{name}"' in page for name in figures)
    passing = figures[f"pass-chart-{key}"]
    assert passing["layout"]["xaxis"]["type"] == "log"
    assert [trace["name"] for trace in passing["data"]] == ["default", "tail"]
    assert passing["data"][0]["x"] == [1000, 4000] and passing["data"][0]["y"] == [0.5, 1.0]
    assert (
        passing["layout"]["shapes"][0]["y0"] == 0.95
        and passing["layout"]["shapes"][0]["line"]["dash"] == "dash"
    )
    boxes = figures[f"scores-chart-{key}"]["data"]
    assert [b["name"] for b in boxes] == ["recall", "tool", "preference", "retention"]
    assert len(boxes[0]["y"]) == 8  # one point per run
    # Each cell links its job, and the exports are offered.
    assert f'href="/jobs/{cells[(4, "tail")].job_id}/"' in page
    assert "results.csv" in page and "results.json" in page
    # A finished study does not poll.
    assert "hx-trigger" not in page


def test_a_running_study_polls_and_htmx_gets_only_the_live_part(console, small_study):
    record_runs(small_study.cells.first(), [True], payload_bytes=1000)
    page = console.get(url(small_study)).content.decode()
    assert 'hx-trigger="every 5s"' in page and 'class="badge state-running">running<' in page
    assert "1/8 runs" in page
    fragment = console.get(url(small_study), HTTP_HX_REQUEST="true").content.decode()
    assert '<div id="study-live"' in fragment and "<html" not in fragment
    assert "1/8 runs" in fragment and 'id="study-figures"' in fragment


def test_before_any_run_the_page_says_the_charts_are_coming(console, small_study):
    page = console.get(url(small_study)).content.decode()
    assert "No run recorded yet" in page
    assert "0/8 runs" in page


def test_the_studies_list_shows_each_study_with_its_grid_state_and_runs(console, small_study, micro_base):
    finish(small_study)
    later = create_study(
        {"name": "second", "bases": [micro_base.name], **SMALL_GRID, "ranks": [2]}, actor=Actor.system("test")
    )
    page = console.get("/studies/").content.decode()
    assert page.index(f"#{later.pk} second") < page.index(f"#{small_study.pk} tiny")
    by = "\N{MULTIPLICATION SIGN}"
    assert f"4 cells {by} 2 people {by} 1 seed" in page and f"2 cells {by} 2 people {by} 1 seed" in page
    assert "8/8 runs" in page and "0/4 runs" in page
    assert 'state-finished">finished' in page and 'state-running">running' in page
    assert micro_base.name in page and "by ops" in page


def test_the_exports_hold_every_recorded_run(console, small_study):
    finish(small_study)
    response = console.get(url(small_study, "results.csv"))
    assert response["Content-Type"].startswith("text/csv")
    assert f"study-{small_study.pk}-results.csv" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 8
    assert tuple(rows[0]) == RESULT_COLUMNS
    assert {(r["rank"], r["init"]) for r in rows} == {
        ("1", "default"),
        ("1", "tail"),
        ("4", "default"),
        ("4", "tail"),
    }
    assert sum(r["passed"] == "True" for r in rows) == 6

    body = console.get(url(small_study, "results.json")).json()
    assert body["study"]["state"] == "finished" and body["study"]["runs_done"] == 8
    assert len(body["cells"]) == 4 and len(body["runs"]) == 8
    assert body["study"]["recommendations"][0]["chosen"]["rank"] == 4


def test_an_unknown_study_is_a_404(console):
    assert console.get("/studies/999/").status_code == 404
    assert console.get("/studies/999/results.csv").status_code == 404


def test_a_study_job_page_and_the_jobs_list_link_back_to_the_study(console, small_study):
    cell = small_study.cells.select_related("job").first()
    page = console.get(f"/jobs/{cell.job_id}/").content.decode()
    assert f'href="/studies/{small_study.pk}/"' in page and cell.job.params["cell_label"] in page
    listing = console.get("/jobs/?kind=study").content.decode()
    assert listing.count(f'href="/studies/{small_study.pk}/"') == 4


def test_a_long_list_of_cells_that_fell_short_is_cut_to_the_cheapest_dozen(console, micro_base, operator):
    study = create_study(
        {"name": "wide", "bases": [micro_base.name], **SMALL_GRID, "ranks": [1, 2, 4, 8, 16, 32, 64]},
        actor=Actor.from_user(operator, via="console"),
    )
    for cell in study.cells.all():  # 14 cells, none reliable
        record_runs(cell, [False, False], payload_bytes=1000 * cell.rank + (10 if cell.init == "tail" else 0))

    page = console.get(url(study)).content.decode()
    recommendation = page[
        page.index('id="recommendation"') : page.index("</section>", page.index('id="recommendation"'))
    ]
    assert recommendation.count("<tr><td>rank ") == 12
    assert "and 2 more: every cell is in the table below" in recommendation
