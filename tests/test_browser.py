"""The console in a real browser: Debian's Chromium driven by Playwright.

Every page is checked for console errors and failed requests, and a
screenshot of each is saved under test-output/screenshots/.
"""

import contextlib
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import with_role
from workers.engine.base_family import BaseSpec, build_base

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-output" / "screenshots"

# Every browser test says by name that it did not run where Debian's chromium is missing.
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (CI installs it)"
)
pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]


CSP_VIOLATIONS_TO_CONSOLE = """
document.addEventListener("securitypolicyviolation", (event) => {
    console.error(`CSP violation: ${event.violatedDirective} refused ${event.blockedURI || "inline"}`
        + ` at ${event.sourceFile}:${event.lineNumber}: ${event.sample}`);
});
"""


@pytest.fixture
def open_console(live_server, django_user_model):
    """Log a user in (the operator unless told otherwise) and yield the page. Set up data
    before opening it: while Playwright's event loop runs, ORM calls in this thread would
    open a second, never-closed database connection."""
    with_role(django_user_model.objects.create_user("operator", password="pw-operator-1"), "operator")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def session(username: str = "operator", password: str = "pw-operator-1"):
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                ],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.problems = []
            page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
            # Whatever the Content-Security-Policy refuses (an inline script or handler, eval,
            # a style or image from elsewhere) is a fault of the page: the console's own code
            # must live within it. Chromium also logs these; this names the directive.
            page.add_init_script(CSP_VIOLATIONS_TO_CONSOLE)
            # A request the browser itself aborts when the next navigation starts
            # (a late favicon fetch, say) is not a fault; a missing file shows up
            # as a 4xx response below.
            page.on(
                "requestfailed",
                lambda r: (
                    r.failure != "net::ERR_ABORTED" and page.problems.append(f"failed: {r.url} ({r.failure})")
                ),
            )
            page.on("response", lambda r: r.status >= 400 and page.problems.append(f"{r.status}: {r.url}"))
            page.goto(f"{live_server.url}/login/")
            page.fill("input[name=username]", username)
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_url(f"{live_server.url}/")
            try:
                yield page
            finally:
                browser.close()

    return session


def test_the_console_pages_render_without_errors(open_console, live_server, make_revision, actor):
    from adapters_app.lifecycle.pointer import promote

    first = make_revision()
    promote(first, actor=actor, reason="first")
    make_revision(parent=first)
    with open_console() as page:
        for name, path in [
            ("overview", "/"),
            ("people", "/people/"),
            ("person", "/people/alice/"),
            ("adapters", "/adapters/?sort=trained"),
            ("adapter", "/people/alice/assistant/"),
            ("revision", "/people/alice/assistant/r1/"),
            ("compare", "/people/alice/assistant/r2/compare"),
            ("revisions", "/revisions/"),
            ("jobs", "/jobs/"),
            ("workers", "/workers/"),
            ("audit", "/audit/"),
        ]:
            page.goto(f"{live_server.url}{path}")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
        assert page.problems == []
        page.goto(f"{live_server.url}/people/alice/assistant/")
        assert page.locator("text=r1").first.is_visible()
        assert page.evaluate("typeof Plotly") == "object"
        assert page.evaluate("typeof htmx") == "object"


def test_an_operator_retrains_compares_and_rolls_back_and_a_viewer_cannot(
    open_console, live_server, celery_worker_process, make_revision, eval_set, actor, django_user_model
):
    """The operator's day in one flow, through the real worker: find a person, retrain
    their adapter and watch it finish without reloading, compare the new revision with
    the old, promote it, roll it back with a reason. Then a viewer sees no actions and
    a forged POST is refused."""
    from adapters_app.lifecycle.pointer import promote

    promote(make_revision(), actor=actor, reason="first revision")
    with_role(django_user_model.objects.create_user("viewer", password="pw-viewer-1"), "viewer")

    def shot(page, name):
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(SCREENSHOTS / f"flow-{name}.png"), full_page=True)

    with open_console() as page:
        page.on("dialog", lambda dialog: dialog.accept())  # the "are you sure?" confirmations

        # Find the person by search.
        page.get_by_role("navigation", name="Main").get_by_role("link", name="People").click()
        page.fill("#q", "ali")
        page.get_by_role("button", name="Search").click()
        shot(page, "1-people-search")
        page.get_by_role("link", name="alice", exact=True).click()
        shot(page, "2-person")
        page.get_by_role("link", name="alice/assistant").first.click()
        page.wait_for_url(f"{live_server.url}/people/alice/assistant/")

        # Start a retrain from the live revision's recipe, a little longer.
        page.fill("#train-steps", "60")
        page.get_by_role("button", name="Start training").click()
        page.wait_for_url("**/jobs/*/")
        page.evaluate("window.stillTheSameDocument = true")
        bar = page.locator("[role=progressbar][aria-valuenow='100']")
        bar.wait_for(timeout=180_000)
        page.get_by_text("Produced").wait_for(timeout=60_000)
        # The bar reached 100 % by polling alone: the document was never reloaded.
        assert page.evaluate("window.stillTheSameDocument") is True
        # …and the loss curve was redrawn from the polled fragments' data (static/mint/console.js).
        assert page.locator("#loss-chart .scatterlayer .trace path.js-line").get_attribute("d")
        assert "60/60" in bar.inner_text()
        # …and the finished job stopped offering to be cancelled.
        assert page.get_by_role("button", name="Cancel job").count() == 0
        shot(page, "3-job-finished")

        # Score both revisions on alice's evaluation set, through the worker.
        for label in ("r2", "r1"):
            page.goto(f"{live_server.url}/people/alice/assistant/")
            page.select_option("#eval-revision", label)
            page.get_by_role("button", name="Start evaluation").click()
            page.wait_for_url("**/jobs/*/")
            page.get_by_text("succeeded").first.wait_for(timeout=120_000)

        # Open the new revision and compare it with the live one.
        page.goto(f"{live_server.url}/people/alice/assistant/")
        page.get_by_role("link", name="r2").first.click()
        page.wait_for_url("**/assistant/r2/")
        shot(page, "4-revision")
        page.select_option("#compare-with", "r1")
        page.get_by_role("button", name="Compare").click()
        page.wait_for_url("**/r2/compare?with=r1")
        assert page.get_by_role("heading", name="Weight updates per module").is_visible()
        assert page.locator("#suites table").count() == 1  # both scored on alice-eval
        shot(page, "5-compare")

        # Promote r2, then roll back to r1 with a reason.
        page.goto(f"{live_server.url}/people/alice/assistant/")
        page.select_option("#promote-revision", "r2")
        page.fill("#promote-reason", "retrained on the latest facts")
        page.get_by_role("button", name="Promote to live").click()
        page.get_by_text("alice/assistant now serves r2").wait_for()
        page.fill("#rollback-reason", "r2 forgets the dog's name")
        page.get_by_role("button", name="Roll back").click()
        page.get_by_text("alice/assistant rolled back to r1").wait_for()
        history = page.locator("section", has=page.get_by_role("heading", name="Pointer history"))
        newest = history.locator("tbody tr").first
        assert "rollback" in newest.inner_text() and "r2 forgets the dog's name" in newest.inner_text()
        shot(page, "6-adapter-after-rollback")
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Overview").click()
        shot(page, "0-overview")
        assert page.problems == []

    with open_console("viewer", "pw-viewer-1") as page:
        page.goto(f"{live_server.url}/people/alice/assistant/")
        for action in ("Start training", "Start evaluation", "Promote to live", "Roll back", "Save gate"):
            assert page.get_by_role("button", name=action).count() == 0, action
        shot(page, "7-viewer-adapter")
        assert page.problems == []
        # A forged rollback, with a valid CSRF token: the server refuses the role, not the token.
        with page.expect_navigation() as forged:
            page.evaluate(
                """() => {
                    const form = document.createElement("form");
                    form.method = "post";
                    form.action = "/people/alice/assistant/rollback";
                    const token = document.querySelector("input[name=csrfmiddlewaretoken]").value;
                    for (const [name, value] of [["csrfmiddlewaretoken", token], ["reason", "forged"]]) {
                        const input = document.createElement("input");
                        input.name = name;
                        input.value = value;
                        form.appendChild(input);
                    }
                    document.body.appendChild(form);
                    form.submit();
                }"""
            )
        assert forged.value.status == 403
        shot(page, "8-viewer-forged-post-403")


# The demo's recipe at test scale: a family base small enough to pretrain in seconds.
DEMO_TEST_BASE = BaseSpec(
    "mint-xs",
    hidden_size=96,
    layers=2,
    heads=4,
    intermediate_size=256,
    steps=400,
    batch_size=16,
    corpus_rows=4000,
    vocab_size=512,
)


@pytest.fixture(scope="session")
def demo_base_folder(tmp_path_factory):
    return build_base(DEMO_TEST_BASE, tmp_path_factory.mktemp("bases") / DEMO_TEST_BASE.name)


def test_the_demo_fleet_answers_each_person_with_their_own_state(
    open_console, live_server, celery_worker_process, demo_base_folder, actor
):
    """The demo's generated people, trained and promoted through the real worker: in the
    playground, Alice's adapter names Alice's dog and Bob's names Bob's."""
    from adapters_app import demo_fleet
    from adapters_app.lifecycle.base_models import register_base_model
    from workers.engine.persona_world import generate_world

    base = register_base_model(DEMO_TEST_BASE.name, demo_base_folder, actor=actor)
    world = generate_world(demo_fleet.DEMO_WORLD_SEED, people=2)
    dogs = {person.handle: person.facts["dog"] for person in world.people}
    adapters = demo_fleet.seed(
        base,
        actor=actor,
        people=2,
        training={"steps": 300, "learning_rate": 0.01, "batch_size": 16},
        log=lambda line: None,
        timeout=600,
    )
    assert {a.handle for a in adapters} == {"alice/assistant", "bob/assistant"}
    assert all(a.live_revision_id for a in adapters)

    with open_console() as page:
        for handle, other in (("alice", "bob"), ("bob", "alice")):
            page.goto(f"{live_server.url}/people/{handle}/assistant/")
            page.fill("#playground-prompt", "What is my dog called?")
            page.click("text=Answer side by side")
            live = page.locator(f"section.playground-answer[aria-label='Answer of {handle}/assistant']")
            # Past the server's own wait (MINT_INFERENCE_TIMEOUT_SECONDS, 120 s): under load the
            # session's worker may finish another test's job first, and a timeout then shows
            # as the server's message in the column rather than as a bare browser timeout.
            live.wait_for(timeout=150_000)
            page.locator("#playground").scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOTS / f"demo-playground-{handle}.png"), full_page=True)
            assert dogs[handle] in live.inner_text()
            assert dogs[other] not in live.inner_text()
        assert page.problems == []
