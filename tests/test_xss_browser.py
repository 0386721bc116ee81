"""Script payloads where the console shows people's data, in a real browser.

An admin types them into the console's own forms (a person's display name, an adapter's
description, an evaluation set's name and rows); a model's answers carry them too (an
evaluation's outputs, an answer a person corrected), and so do a job's log and a pointer
move's reason. Every page that shows them is opened: each shows the payloads as text, no
element they spell exists, no script ran (`window.__xss` stays undefined, no dialog
opened) and the browser reported no Content-Security-Policy violation, so escaping alone
held. Then one script is injected on purpose, to show that the policy would have stopped
it had escaping failed. The audit page (mallory's events) is saved as
test-output/screenshots/audit-script-payloads.png (`make screenshots` copies it to docs/).
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import FACTS, with_role
from tests.test_browser import SCREENSHOTS, needs_chromium, open_console  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]

# Under test-output/ (a test must not change tracked files: a worker started later would
# report a dirty code version); `make screenshots` copies it to docs/screenshots/.
SCREENSHOT = SCREENSHOTS / "audit-script-payloads.png"

PAYLOADS = (
    "<script>window.__xss=1</script>",
    '<img src=x onerror="window.__xss=1">',
    '"><svg onload=window.__xss=1>',
    "'><details open ontoggle=alert(1)>",
)
ALL = " ".join(PAYLOADS)

# Elements or code the payloads would bring if a page let them through as markup. (The
# console's own scripts all have a src; json_script's carry data, not code.)
INJECTED = """() => [
    ...document.querySelectorAll("img[src=x], svg[onload], details[ontoggle], [onerror], [onload]"),
    ...[...document.scripts].filter((s) => !s.src && s.type !== "application/json"),
].length"""


def eval_rows() -> list:
    from workers.engine.examples import Message
    from workers.engine.persona_world import EvalItem

    return [
        EvalItem(
            "recall",
            f"mallory.recall.{n}",
            (Message("user", f"What did I call myself? {payload}"),),
            f"You called yourself {payload}",
            {"kind": "contains", "value": "called"},
        )
        for n, payload in enumerate(PAYLOADS)
    ]


def enter_payloads_in_the_console(page, base_url: str, tmp_path: Path) -> None:
    from workers.engine.suites import items_jsonl

    page.goto(f"{base_url}/people/")
    page.fill("#new-handle", "mallory")
    page.fill("#new-display-name", ALL)
    page.get_by_role("button", name="Add person").click()
    page.wait_for_url(f"{base_url}/people/mallory/")

    page.fill("#adapter-name", "assistant")
    page.fill("#adapter-description", ALL)
    page.get_by_role("button", name="Create adapter").click()
    page.wait_for_url(f"{base_url}/people/mallory/assistant/")

    page.goto(f"{base_url}/people/mallory/")
    upload = tmp_path / "payloads.jsonl"
    upload.write_bytes(items_jsonl(eval_rows()))
    page.set_input_files("#dataset-file", str(upload))
    page.fill("#dataset-name", ALL)
    page.select_option("#dataset-purpose", "eval")
    page.get_by_role("button", name="Upload dataset").click()
    page.get_by_text("Uploaded").first.wait_for()


def answer_with_payloads(tiny_payload: bytes, actor) -> dict:
    """What the model side brings: a revision of mallory's adapter, promoted for a reason,
    its evaluation on the uploaded set (the rows, and answers, with payloads), an answer
    served and corrected, and a failed job whose log and error carry payloads."""
    from adapters_app.lifecycle.datasets import upload_dataset
    from adapters_app.lifecycle.evaluations import record_suite_results
    from adapters_app.lifecycle.pointer import promote
    from adapters_app.lifecycle.revisions import create_revision
    from adapters_app.lifecycle.updates import record_feedback, remember_answer
    from adapters_app.models import Adapter, Dataset, Job
    from workers.engine.training import TrainingConfig

    adapter = Adapter.objects.select_related("person", "base").get(person__handle="mallory", name="assistant")
    uploaded = Dataset.objects.get(person=adapter.person, purpose=Dataset.EVAL)
    assert uploaded.name == ALL  # stored as typed: escaping is the pages' job
    facts = upload_dataset(adapter.person, FACTS, name="facts", actor=actor)[0]
    revision = create_revision(
        adapter,
        tiny_payload,
        dataset=facts,
        training_config=TrainingConfig(steps=2).as_dict(),
        parent=None,
        job=None,
        actor=actor,
    )
    promote(revision, actor=actor, reason=ALL)
    record_suite_results(
        base=adapter.base,
        revision=revision,
        dataset=uploaded,
        results=[
            SimpleNamespace(
                item_id=row.item_id,
                suite=row.suite,
                prompt=row.messages[-1].content,
                expected=row.expected,
                got=f"I am {payload}",
                passed=False,
                detail=payload,
            )
            for row, payload in zip(eval_rows(), PAYLOADS, strict=True)
        ],
        job=None,
    )
    remember_answer(
        "cmpl-payloads",
        revision=revision,
        prompt=f"What is my name? {ALL}",
        generations=[{"text": f"Your name is {ALL}"}],
    )
    record_feedback("cmpl-payloads", rating=-1, correction=f"My name is {ALL}", note=ALL, actor=actor)
    job = Job.objects.create(
        kind=Job.EVALUATE,
        adapter=adapter,
        revision=revision,
        dataset=uploaded,
        log=ALL,
        created_by=actor.name,
    )
    assert job.claim(f"worker-{PAYLOADS[0]}")
    assert job.fail(f"ValueError: {ALL}")
    return {"revision": revision.label, "job": job.pk}


def test_script_payloads_show_as_text_and_never_run(
    open_console,  # noqa: F811
    live_server,
    django_user_model,
    micro_base,
    tiny_payload,
    actor,
    tmp_path,
):
    with_role(django_user_model.objects.create_user("admin", password="pw-admin-123"), "admin")
    with open_console("admin", "pw-admin-123") as page:
        enter_payloads_in_the_console(page, live_server.url, tmp_path)
        assert page.problems == []

    # Between the browser sessions: no Playwright loop runs while the ORM works here.
    made = answer_with_payloads(tiny_payload, actor)

    # Pages that show the payloads whole, as text; the overview and the job list cut a
    # failed job's error short in a table cell and keep it whole in the cell's title.
    in_full = [
        "/people/",
        "/people/mallory/",
        "/people/mallory/assistant/",
        f"/people/mallory/assistant/{made['revision']}/",
        f"/jobs/{made['job']}/",
        "/audit/",
        "/audit/?person=mallory",
    ]
    cut_short = ["/", "/jobs/"]
    with open_console() as page:
        dialogs = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        shown = {}
        for path in in_full + cut_short:
            page.goto(f"{live_server.url}{path}")
            page.wait_for_load_state("networkidle")
            assert page.evaluate("typeof window.__xss") == "undefined", path
            assert page.evaluate(INJECTED) == 0, path
            text = page.inner_text("body")
            shown[path] = [p for p in PAYLOADS if p in text]
            if path in cut_short:
                cell = page.locator(".error-line", has_text="ValueError: <script>").first
                assert cell.get_attribute("title") == f"ValueError: {ALL}", path
            if path == "/audit/?person=mallory":
                page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert dialogs == []
        assert page.problems == []
        assert shown == {
            **{path: list(PAYLOADS) for path in in_full},
            **{path: [PAYLOADS[0]] for path in cut_short},
        }, json.dumps(shown, indent=1)

        # Had escaping failed, the policy stands behind it: an inline script is refused,
        # and the refusal reaches the listener every browser test relies on.
        page.goto(f"{live_server.url}/audit/")
        ran = page.evaluate(
            """() => {
                const script = document.createElement("script");
                script.textContent = "window.__xss = 1";
                document.body.append(script);
                return window.__xss;
            }"""
        )
        assert ran is None
        page.wait_for_timeout(200)
        assert any("CSP violation: script-src" in p for p in page.problems), page.problems
