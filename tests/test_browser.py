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

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (CI installs it)"
    ),
]


@pytest.fixture
def open_console(live_server, django_user_model):
    """Log an operator in and yield the page. Set up data before opening it: while
    Playwright's event loop runs, ORM calls in this thread would open a second,
    never-closed database connection."""
    with_role(django_user_model.objects.create_user("operator", password="pw-operator-1"), "operator")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def session():
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
            page.fill("input[name=username]", "operator")
            page.fill("input[name=password]", "pw-operator-1")
            page.click("button[type=submit]")
            page.wait_for_url(f"{live_server.url}/")
            try:
                yield page
            finally:
                browser.close()

    return session


def test_the_console_pages_render_without_errors(open_console, live_server, make_revision, actor):
    from adapters_app.lifecycle.pointer import promote

    promote(make_revision(), actor=actor, reason="first")
    with open_console() as page:
        for name, path in [
            ("overview", "/"),
            ("people", "/people/"),
            ("person", "/people/alice/"),
            ("adapter", "/people/alice/assistant/"),
            ("revision", "/people/alice/assistant/r1/"),
            ("jobs", "/jobs/"),
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
            live.wait_for(timeout=60_000)
            page.locator("#playground").scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOTS / f"demo-playground-{handle}.png"), full_page=True)
            assert dogs[handle] in live.inner_text()
            assert dogs[other] not in live.inner_text()
        assert page.problems == []
