"""A footprint study in a real browser, run by a real Celery worker.

The operator launches a small grid on the micro base from the form and watches the
study page until every cell is done: the page updates itself (htmx), draws the charts
and names the recommendation, with no console error or failed request. The final page
is saved as test-output/screenshots/study-page.png.
"""

import csv
from pathlib import Path

import pytest

from adapters_app.lifecycle.reliability import SUITES
from adapters_app.lifecycle.studies import create_study
from adapters_app.models import BaseModel, Job, Study, StudyCell, StudyRun
from tests.test_browser import SCREENSHOTS, needs_chromium, open_console  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True), needs_chromium]


def test_an_operator_launches_a_study_and_watches_it_finish(
    open_console,  # noqa: F811
    live_server,
    celery_worker_process,
    micro_base,
):
    with open_console() as page:
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Studies").click()
        page.get_by_role("link", name="New study").click()
        page.wait_for_url("**/studies/new")

        page.fill("#study-name", "smallest reliable micro adapter")
        for name, keep in (
            ("ranks", {"1", "4"}),
            ("targets", {"attention"}),
            # Two cells: grading a cell's adapters and the bare base dominates its time (~40 s on
            # two busy CPU cores), so a larger grid would not fit the test's few minutes.
            ("inits", {"default"}),
            ("bases", {micro_base.name}),
        ):
            for box in page.locator(f"input[name={name}]").all():
                box.set_checked(box.get_attribute("value") in keep)
        page.fill("#study-seeds", "1")
        page.fill("#study-people", "2")
        # Small enough for the micro base in seconds; it ships no replay corpus.
        page.fill("#study-steps", "8")
        page.fill("#study-batch_size", "4")
        page.fill("#study-learning_rate", "0.01")
        page.fill("#study-replay", "0")
        # 2 ranks x 1 target set x 1 init x 1 seed x 2 people, counted as the operator types.
        assert page.locator("#study-runs").inner_text() == "4"
        page.get_by_role("button", name="Start study").click()
        page.wait_for_url("**/studies/*/")
        page.get_by_text("queued: 2 cells").wait_for()

        # Everything from here on arrives by polling: the document is never reloaded.
        page.evaluate("window.stillTheSameDocument = true")
        live = page.locator("#study-live")
        from playwright.sync_api import expect

        try:
            # A locator's wait, not wait_for_function: Playwright compiles that one's predicate
            # with eval in the page, which the console's Content-Security-Policy refuses.
            expect(live.locator("h2 .badge").first).not_to_have_text("running", timeout=240_000)
        finally:
            page.screenshot(path=str(SCREENSHOTS / "study-page.png"), full_page=True)
        status = live.locator("h2 .badge").first.inner_text()
        assert status == "finished", (
            f"{live.inner_text()}\n{celery_worker_process.log_path.read_text()[-3000:]}"
        )
        assert page.evaluate("window.stillTheSameDocument") is True
        assert "4/4 runs" in live.locator("[role=progressbar]").first.inner_text()
        assert live.locator("table.study-cells .badge.state-done").count() == 2
        assert page.get_by_role("button", name="Cancel study").count() == 0

        # Each chart was drawn by plotly (an svg inside its element).
        group = f"{micro_base.name}-attention"
        for chart in ("pass", "collapse", "scores"):
            page.locator(f"[data-figure={chart}-chart-{group}] .main-svg").first.wait_for()
        # The pass-rate chart has a line for the init, through both ranks' sizes.
        trace = page.locator(f"[data-figure=pass-chart-{group}] .scatterlayer .trace")
        assert trace.count() == 1 and trace.locator(".point").count() == 2
        recommendation = page.locator("#recommendation")
        assert recommendation.get_by_role("heading", name=micro_base.name).is_visible()
        assert recommendation.locator(".badge").first.inner_text() in ("recommended", "none")

        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(SCREENSHOTS / "study-page.png"), full_page=True)
        assert page.problems == []


def test_choosing_people_of_the_fleet_swaps_the_cohort_fields_and_counts_their_runs(
    open_console,  # noqa: F811
    live_server,
    micro_base,
):
    with open_console() as page:
        page.goto(f"{live_server.url}/studies/new")
        assert page.locator("#study-people").is_visible() and page.locator("#study-adapters").is_hidden()

        page.check("input[name=cohort][value=fleet]")
        assert page.locator("#study-people").is_hidden() and page.locator("#study-world-seed").is_hidden()
        page.fill("#study-adapters", "alice/assistant\nbob/assistant\nalice/assistant")
        # The default grid (1 base x 6 ranks x 2 target sets x 4 inits x 3 seeds) for the two
        # different adapters named: a handle named twice is one member.
        assert page.locator("#study-runs").inner_text() == "288"
        page.screenshot(path=str(SCREENSHOTS / "study-new-fleet-cohort.png"), full_page=True)

        page.check("input[name=cohort][value=generated]")
        assert page.locator("#study-adapters").is_hidden() and page.locator("#study-people").is_visible()
        assert page.locator("#study-runs").inner_text() == "576"  # 4 generated people
        assert page.problems == []


# The cross-base Scale Up study measured for the README (docs/results/, issue 16): its page,
# rebuilt from the raw CSV of its runs, is the screenshot the README points to.
SCALE_UP_CSV = Path(__file__).resolve().parent.parent / "docs" / "results" / "scale-up-four-bases-study.csv"
SHARED_RECIPE = ("steps", "batch_size", "replay")


def study_from_results_csv(path: Path, actor) -> Study:
    """The study a results CSV came from, with its runs as the worker recorded them. The
    bases are registered by name only: the page reads rows, never weights."""
    rows = list(csv.DictReader(path.open()))
    bases = list(dict.fromkeys(row["base"] for row in rows))
    for name in bases:
        BaseModel.objects.get_or_create(
            name=name, defaults={"path": f"/models/{name}", "digest": name.ljust(64, "0"), "parameters": 1}
        )
    rates = {row["base"]: float(row["learning_rate"]) for row in rows}
    study = create_study(
        {
            "name": "scale up across four bases (measured)",
            "bases": bases,
            "ranks": sorted({int(row["rank"]) for row in rows}),
            "targets": list(dict.fromkeys(row["targets"] for row in rows)),
            "inits": list(dict.fromkeys(row["init"] for row in rows)),
            "seeds": sorted({int(row["seed"]) for row in rows}),
            "people": len({row["person"] for row in rows}),
            "training": {key: type_of(rows[0][key]) for key in SHARED_RECIPE}
            | {"learning_rate": rates[bases[0]]},
            "training_per_base": {base: {"learning_rate": rate} for base, rate in rates.items()},
        },
        actor=actor,
    )
    cells = {(c.base.name, c.rank, c.targets, c.init): c for c in study.cells.select_related("base")}
    for row in rows:
        cell = cells[(row["base"], int(row["rank"]), row["targets"], row["init"])]
        StudyCell.objects.filter(pk=cell.pk).update(
            **{key: int(row[key]) for key in ("trainable_parameters", "stored_parameters", "payload_bytes")}
        )
        StudyRun.objects.create(
            cell=cell,
            person=row["person"],
            seed=int(row["seed"]),
            scores={s: float(row[f"score_{s}"]) for s in SUITES},
            bare_scores={s: float(row[f"bare_{s}"]) for s in SUITES},
            passed=row["passed"] == "True",
            gate_failures=[f for f in row["gate_failures"].split("; ") if f],
            collapsed=row["collapsed"] == "True",
            collapse_reasons=[r for r in row["collapse_reasons"].split("; ") if r],
            first_loss=float(row["first_loss"]),
            final_loss=float(row["final_loss"]),
            train_seconds=float(row["train_seconds"]),
        )
    Job.objects.filter(pk__in=[c.job_id for c in cells.values()]).update(state=Job.SUCCEEDED)
    return study


def type_of(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def test_the_cross_base_scale_up_study_shows_each_base_with_its_charts_and_recommendation(
    open_console,  # noqa: F811
    live_server,
    actor,
):
    study = study_from_results_csv(SCALE_UP_CSV, actor)
    bases = study.grid["bases"]
    assert len(bases) == 4
    with open_console() as page:
        page.goto(f"{live_server.url}{study.get_absolute_url()}")
        live = page.locator("#study-live")
        assert live.locator("h2 .badge").first.inner_text() == "finished"
        recommendation = page.locator("#recommendation")
        for base in bases:
            assert recommendation.get_by_role("heading", name=base).is_visible()
            for target in study.grid["targets"]:
                for chart in ("pass", "collapse", "scores"):
                    page.locator(f"[data-figure={chart}-chart-{base}-{target}] .main-svg").first.wait_for()
            # Each base's own learning rate is on the page beside the shared recipe.
            rate = study.training_per_base[base]["learning_rate"]
            assert f"{base}: learning_rate={rate}" in page.locator(".per-base-recipe").all_inner_texts()
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(SCREENSHOTS / "study-page-four-bases.png"), full_page=True)
        assert page.problems == []
