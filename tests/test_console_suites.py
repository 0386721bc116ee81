"""The console's view of suite evaluations, promotion gates and the playground.

Evaluations are recorded through the real `record_suite_results`; gates through
`configure_gate`. Only the playground's happy path needs a worker (marked integration).
"""

import json
import re
from types import SimpleNamespace

import pytest
from django.urls import reverse

from adapters_app.lifecycle.datasets import upload_dataset
from adapters_app.lifecycle.evaluations import record_suite_results
from adapters_app.lifecycle.gates import configure_gate, gate_of
from adapters_app.lifecycle.pointer import auto_promote, promote
from adapters_app.models import AuditEvent, Job

QUESTION = "What is my dog called?"


def _jsonl(rows: list[dict]) -> bytes:
    return "\n".join(json.dumps(row) for row in rows).encode() + b"\n"


def _item(suite: str, item_id: str, question: str, expected: str) -> dict:
    return {
        "suite": suite,
        "item_id": item_id,
        "messages": [{"role": "user", "content": question}],
        "expected": expected,
        "check": {"kind": "contains", "value": expected},
    }


SUITE_SET = _jsonl(
    [
        _item("recall", "recall.dog", QUESTION, "Rex"),
        _item("tool", "tool.weather", "Weather in Lisbon?", "get_weather"),
        _item("retention", "retention.capital", "Capital of France?", "Paris"),
    ]
)
OTHER_SUITE_SET = _jsonl([_item("recall", "recall.city", "Where do I live?", "Lisbon")])


def graded(suite: str, outcomes: list[bool]) -> list[SimpleNamespace]:
    """Graded items as a worker reports them: item i passes when outcomes[i]."""
    return [
        SimpleNamespace(
            item_id=f"{suite}.{i}",
            suite=suite,
            prompt=f"{QUESTION} (variant {i})",
            expected="Rex",
            got="Your dog is called Rex." if passed else "Your dog is Biscuit.",
            passed=passed,
            detail="mentions 'Rex'" if passed else "does not mention 'Rex'",
        )
        for i, passed in enumerate(outcomes)
    ]


def evaluate(adapter, dataset, revision, **suites: tuple[int, int]) -> None:
    """Record `suite=(passed, total)` scores for a revision (or the bare base when None)."""
    results = [
        item
        for suite, (passed, total) in suites.items()
        for item in graded(suite, [i < passed for i in range(total)])
    ]
    record_suite_results(base=adapter.base, revision=revision, dataset=dataset, results=results, job=None)


@pytest.fixture
def console(client, django_user_model, actor):
    client.force_login(django_user_model.objects.get(pk=actor.user_id))
    return client


@pytest.fixture
def eval_set(alice, actor):
    return upload_dataset(alice, SUITE_SET, name="alice-suites.jsonl", purpose="eval", actor=actor)[0]


def url(name: str, *extra) -> str:
    return reverse(f"console:{name}", args=["alice", "assistant", *extra])


def form_html(page: str, action: str) -> str:
    start = page.index(f'action="{url(action)}"')
    return page[page.rindex("<form", 0, start) : page.index("</form>", start)]


# --- revision page ------------------------------------------------------------------------


def test_revision_page_shows_each_suite_score_beside_the_bare_base_on_the_same_set(
    console, adapter, eval_set, make_revision, actor
):
    revision = make_revision()
    other_set = upload_dataset(adapter.person, OTHER_SUITE_SET, name="other", purpose="eval", actor=actor)[0]
    evaluate(adapter, other_set, None, recall=(10, 10))  # another set: must not be compared
    evaluate(adapter, eval_set, None, recall=(2, 10), retention=(10, 10))
    evaluate(adapter, eval_set, revision, recall=(9, 10), retention=(9, 10))

    response = console.get(url("revision", "r1"))

    rows = [(r.suite, r.score, r.base_score) for r in response.context["suite_results"]]
    assert rows == [("recall", 0.9, 0.2), ("retention", 0.9, 1.0)]
    page = response.content.decode()
    assert "+0.700" in page and "-0.100" in page
    assert "9 / 10" in page


def test_revision_page_uses_the_latest_evaluation_of_each_suite(console, adapter, eval_set, make_revision):
    revision = make_revision()
    evaluate(adapter, eval_set, revision, recall=(1, 10))
    evaluate(adapter, eval_set, revision, recall=(8, 10))
    response = console.get(url("revision", "r1"))
    [recall] = response.context["suite_results"]
    assert recall.score == 0.8
    assert recall.base_score is None
    assert "Evaluate the bare base on the same set" in response.content.decode()


def test_revision_page_lists_failed_items_first(console, adapter, eval_set, make_revision):
    revision = make_revision()
    record_suite_results(
        base=adapter.base,
        revision=revision,
        dataset=eval_set,
        results=graded("recall", [True, False, True, False]),
        job=None,
    )
    page = console.get(url("revision", "r1")).content.decode()
    items = page[page.index('id="items-recall"') :]
    order = re.findall(r"<code>(recall\.\d)</code>", items)
    assert order == ["recall.1", "recall.3", "recall.0", "recall.2"]
    assert "Your dog is Biscuit." in items and "does not mention &#x27;Rex&#x27;" in items
    assert "2 failed of 4" in items
    assert '<details id="items-recall" class="suite-items" open>' in page


def test_a_long_item_table_starts_folded(console, adapter, eval_set, make_revision):
    revision = make_revision()
    evaluate(adapter, eval_set, revision, recall=(5, 30))
    page = console.get(url("revision", "r1")).content.decode()
    assert '<details id="items-recall" class="suite-items">' in page
    assert "25 failed of 30" in page


def test_revision_page_shows_a_failing_gate_with_each_check(console, adapter, eval_set, make_revision, actor):
    configure_gate(adapter, eval_dataset=eval_set, actor=actor)
    revision = make_revision()
    evaluate(adapter, eval_set, None, retention=(10, 10))
    evaluate(adapter, eval_set, revision, recall=(5, 10), tool=(9, 10), retention=(10, 10))

    response = console.get(url("revision", "r1"))

    gate = response.context["gate"]
    assert gate.configured and not gate.passed
    page = response.content.decode()
    checks = page[page.index('class="compact gate-checks"') :]
    checks = checks[: checks.index("</table>")]
    assert [name for name in re.findall(r'<th scope="row">(\w+)</th>', checks)] == [
        "recall",
        "tool",
        "retention_drop",
    ]
    assert "0.500" in checks and "&gt;= 0.8" in checks
    assert "&lt;= 0.02" in checks
    assert "recall 0.500 (needs &gt;= 0.8)" in page
    assert 'class="badge gate-fail"' in page


def test_revision_page_says_when_the_gate_is_not_configured_or_passes(
    console, adapter, eval_set, make_revision, actor
):
    revision = make_revision()
    assert "Not configured" in console.get(url("revision", "r1")).content.decode()

    configure_gate(adapter, eval_dataset=eval_set, actor=actor)
    assert "was not evaluated on the adapter" in console.get(url("revision", "r1")).content.decode()

    evaluate(adapter, eval_set, revision, recall=(10, 10), tool=(10, 10))
    page = console.get(url("revision", "r1")).content.decode()
    assert "Passed: r1 meets every threshold" in page


def test_revision_page_links_to_the_playground_for_itself(console, adapter, make_revision):
    make_revision()
    page = console.get(url("revision", "r1")).content.decode()
    assert f"{url('adapter')}?revision=r1#playground" in page
    assert f'action="{url("playground")}"' in page


def test_heldout_evaluations_still_show_loss_and_token_accuracy(console, adapter, dataset, make_revision):
    from adapters_app.models import Evaluation

    revision = make_revision()
    Evaluation.objects.create(
        base=adapter.base,
        revision=revision,
        dataset=dataset,
        dataset_sha256=dataset.sha256,
        metrics={"loss": 0.75, "token_accuracy": 0.625, "tokens": 8, "examples": 1},
    )
    page = console.get(url("revision", "r1")).content.decode()
    assert "0.7500" in page and "0.625" in page
    assert console.get(url("revision", "r1")).context["suite_results"] == []


# --- adapter page: chart, revisions table, gate -----------------------------------------------


def test_adapter_chart_has_one_trace_per_suite_across_revisions(
    console, adapter, eval_set, make_revision, actor
):
    configure_gate(adapter, eval_dataset=eval_set, actor=actor)
    r1 = make_revision()
    r2 = make_revision(parent=r1)
    evaluate(adapter, eval_set, None, recall=(1, 10), retention=(10, 10))
    evaluate(adapter, eval_set, r1, recall=(5, 10), tool=(6, 10), retention=(10, 10))
    evaluate(adapter, eval_set, r2, recall=(9, 10), tool=(9, 10), retention=(10, 10))

    response = console.get(url("adapter"))

    traces = response.context["suite_chart"]["data"]
    assert [t["name"] for t in traces] == ["recall", "tool", "retention"]
    assert [(t["x"], t["y"]) for t in traces] == [
        (["r1", "r2"], [0.5, 0.9]),
        (["r1", "r2"], [0.6, 0.9]),
        (["r1", "r2"], [1.0, 1.0]),
    ]
    assert all("revision %{x}" in t["hovertemplate"] for t in traces)
    # the bare base is a reference line per suite, not an extra trace
    assert {shape["y0"] for shape in response.context["suite_chart"]["layout"]["shapes"]} == {0.1, 1.0}
    page = response.content.decode()
    assert 'id="suite-chart-data"' in page


def test_revisions_table_shows_a_gate_badge_and_latest_suite_scores(
    console, adapter, eval_set, make_revision, actor
):
    configure_gate(adapter, eval_dataset=eval_set, actor=actor)
    r1 = make_revision()
    make_revision(parent=r1)
    r3 = make_revision(parent=r1)
    evaluate(adapter, eval_set, r1, recall=(5, 10))
    evaluate(adapter, eval_set, r3, recall=(9, 10), tool=(10, 10))

    response = console.get(url("adapter"))

    gates = {rev.label: (rev.gate.passed, rev.suite_scores) for rev in response.context["revisions"]}
    assert gates == {
        "r1": (False, [("recall", 0.5)]),
        "r2": (False, []),
        "r3": (True, [("recall", 0.9), ("tool", 1.0)]),
    }
    page = response.content.decode()
    table = page[page.index("<h2>Revisions</h2>") : page.index("<h2>Pointer history</h2>")]
    assert table.count('class="badge gate-pass"') == 1
    assert table.count('class="badge gate-fail"') == 2
    assert "recall 0.90" in table and "tool 1.00" in table


def test_revisions_table_shows_a_dash_when_no_gate_is_configured(console, adapter, make_revision):
    make_revision()
    page = console.get(url("adapter")).content.decode()
    table = page[page.index("<h2>Revisions</h2>") : page.index("<h2>Pointer history</h2>")]
    assert 'title="No evaluation set on the adapter\'s gate">—</span>' in table


def test_gate_card_shows_the_effective_thresholds(console, adapter, eval_set, actor):
    configure_gate(adapter, eval_dataset=eval_set, thresholds={"recall": {"min": 0.95}}, actor=actor)
    response = console.get(url("adapter"))
    thresholds = {t["name"]: t["value"] for t in response.context["thresholds"]}
    assert thresholds == {
        "recall": 0.95,
        "tool": 0.8,
        "preference": 0.7,
        "leakage": 0.9,
        "update": 0.8,
        "retention_drop": 0.02,
    }
    form = form_html(response.content.decode(), "gate")
    assert 'name="gate_recall" type="number" step="0.01" min="0" max="1" value="0.95"' in form
    assert "default 0.8" in form
    assert f'<option value="{eval_set.pk}" selected>' in form
    assert "csrfmiddlewaretoken" in form and "data-confirm=" in form


def test_gate_form_sets_thresholds_and_is_audited(console, adapter, eval_set):
    response = console.post(
        url("gate"),
        {
            "eval_dataset": eval_set.pk,
            "gate_recall": "0.9",
            "gate_tool": "0.75",
            "gate_preference": "0.7",
            "gate_leakage": "0.9",
            "gate_retention_drop": "0.05",
            "auto_promote": "on",
        },
        follow=True,
    )
    adapter.refresh_from_db()
    assert adapter.eval_dataset == eval_set
    assert adapter.auto_promote
    assert gate_of(adapter)["recall"] == {"min": 0.9}
    assert gate_of(adapter)["retention_drop"] == {"max": 0.05}
    event = AuditEvent.objects.get(action="adapter.configure_gate")
    assert (event.actor_name, event.via) == ("olivia", "console")
    assert event.after["gate"]["tool"] == {"min": 0.75}
    assert "auto-promotion on" in response.content.decode()


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "lots"])
def test_gate_form_shows_a_bad_threshold_and_changes_nothing(console, adapter, eval_set, bad):
    response = console.post(url("gate"), {"eval_dataset": eval_set.pk, "gate_recall": bad}, follow=True)
    assert "recall: min must be a number between 0 and 1" in response.content.decode()
    adapter.refresh_from_db()
    assert (adapter.eval_dataset, adapter.gate) == (None, {})
    assert not AuditEvent.objects.filter(action="adapter.configure_gate").exists()


def test_gate_form_refuses_a_training_dataset_as_the_evaluation_set(console, adapter, dataset):
    response = console.post(url("gate"), {"eval_dataset": dataset.pk}, follow=True)
    assert "Choose one of this person&#x27;s evaluation sets" in response.content.decode()
    adapter.refresh_from_db()
    assert adapter.eval_dataset is None


def test_gate_form_refuses_auto_promotion_without_an_evaluation_set(console, adapter):
    response = console.post(url("gate"), {"auto_promote": "on"}, follow=True)
    assert "auto-promotion needs an evaluation dataset" in response.content.decode()
    adapter.refresh_from_db()
    assert not adapter.auto_promote


# --- adapter page: train and evaluate forms ------------------------------------------------


def test_train_form_offers_only_training_format_datasets(console, adapter, dataset, eval_set):
    page = console.get(url("adapter")).content.decode()
    train = form_html(page, "train")
    assert f'<option value="{dataset.pk}"' in train
    assert f'<option value="{eval_set.pk}"' not in train
    evaluate_form = form_html(page, "evaluate")
    assert f'<option value="{dataset.pk}"' in evaluate_form
    assert f'<option value="{eval_set.pk}"' in evaluate_form


def test_train_form_disables_auto_promotion_without_an_evaluation_set(console, adapter, dataset):
    train = form_html(console.get(url("adapter")).content.decode(), "train")
    assert 'name="auto_promote" type="checkbox" disabled' in train
    assert "needs an evaluation set" in train


def test_train_form_auto_promotion_defaults_to_the_adapters_setting(
    console, adapter, dataset, eval_set, actor
):
    configure_gate(adapter, eval_dataset=eval_set, auto_promote=True, actor=actor)
    train = form_html(console.get(url("adapter")).content.decode(), "train")
    assert 'name="auto_promote" type="checkbox" checked' in train

    console.post(url("train"), {"dataset": dataset.pk, "auto_promote": "on"})
    console.post(url("train"), {"dataset": dataset.pk})
    assert [job.params["auto_promote"] for job in Job.objects.order_by("pk")] == [True, False]


def test_training_on_an_evaluation_set_is_refused_with_a_message(console, adapter, eval_set):
    response = console.post(url("train"), {"dataset": eval_set.pk}, follow=True)
    assert "is an evaluation set" in response.content.decode()
    assert not Job.objects.exists()


# --- overview ---------------------------------------------------------------------------


def test_overview_lists_gate_failures_with_links_to_the_adapter(
    console, adapter, eval_set, make_revision, actor
):
    configure_gate(adapter, eval_dataset=eval_set, actor=actor)
    revision = make_revision()
    evaluate(adapter, eval_set, revision, recall=(1, 10))
    assert not auto_promote(revision, actor=actor)
    promote(revision, actor=actor, reason="demo", override_reason="the person asked for it")

    page = console.get(reverse("console:overview")).content.decode()

    card = page[page.index('id="gate-failures"') :]
    assert "auto-promotion refused" in card and "gate overridden" in card
    assert "the person asked for it" in card
    assert "recall 0.100 (needs &gt;= 0.8)" in card
    assert card.count(f'href="{adapter.get_absolute_url()}#gate"') == 2


def test_overview_without_gate_failures_says_so(console):
    page = console.get(reverse("console:overview")).content.decode()
    assert "No revision has failed its gate" in page


# --- playground -------------------------------------------------------------------------


def test_playground_form_offers_every_revision_and_preselects_the_asked_one(
    console, adapter, make_revision, actor
):
    r1 = make_revision()
    make_revision(parent=r1)
    promote(r1, actor=actor)
    form = form_html(console.get(url("adapter"), {"revision": "r2"}).content.decode(), "playground")
    assert 'hx-post="' in form and "csrfmiddlewaretoken" in form
    assert '<option value="r2" selected>' in form
    assert '<option value="r1">r1 (live)</option>' in form


def test_playground_without_a_worker_shows_the_error_in_each_column(
    console, settings, adapter, make_revision
):
    settings.CELERY_TASK_DEFAULT_QUEUE = "no-worker-listens-here"
    settings.MINT_INFERENCE_TIMEOUT_SECONDS = 1
    make_revision()
    response = console.post(url("playground"), {"prompt": QUESTION, "revision": "r1"}, HTTP_HX_REQUEST="true")

    assert response.status_code == 200
    fragment = response.content.decode()
    assert "<html" not in fragment
    answers = [(a.model, a.error) for a in response.context["playground"].answers]
    assert answers[0] == (
        "alice/assistant",
        "The model `alice/assistant` has no live revision yet; promote one first",
    )
    assert answers[1] == ("alice/assistant@r1", "no worker answered in time; is a worker running?")
    # the bare base is not asked after no worker answered: it would only wait as long again
    assert answers[2] == (adapter.base.name, "no worker answered in time; is a worker running?")
    assert fragment.count('class="playground-answer"') == 3
    assert "no worker answered in time" in fragment


def test_playground_without_htmx_renders_the_adapter_page_with_the_answers(console, adapter, make_revision):
    make_revision()
    response = console.post(url("playground"), {"prompt": "  ", "revision": "r1"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "<html" in page and 'id="playground-result"' in page
    assert "Type a prompt to compare the answers." in page


def test_playground_requires_post(console, adapter):
    assert console.get(url("playground")).status_code == 405


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_playground_answers_with_live_chosen_and_base_side_by_side(
    client, django_user_model, actor, adapter, make_revision, celery_worker_process
):
    client.force_login(django_user_model.objects.get(pk=actor.user_id))
    r1 = make_revision()
    make_revision(parent=r1)
    promote(r1, actor=actor)

    response = client.post(url("playground"), {"prompt": QUESTION, "revision": "r2"}, HTTP_HX_REQUEST="true")

    answers = response.context["playground"].answers
    assert [(a.title, a.model, a.served_by, a.error) for a in answers] == [
        ("live", "alice/assistant", "r1", ""),
        ("revision r2", "alice/assistant@r2", "r2", ""),
        ("bare base", adapter.base.name, adapter.base.name, ""),
    ]
    assert all(a.text for a in answers)
    fragment = response.content.decode()
    assert fragment.count('<pre class="generation">') == 3
    for model in ("alice/assistant", "alice/assistant@r2", adapter.base.name):
        assert f"<code>{model}</code>" in fragment
