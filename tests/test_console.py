"""The operator console: pages, action forms and the live job fragment.

Fixtures use the real lifecycle services and a real (micro) base model; no
Celery task is sent, because on_commit callbacks never run under the plain
`db` fixture.
"""

import io
import json
import tarfile

import pytest
from django.urls import reverse

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.base_models import ensure_micro_base
from adapters_app.lifecycle.datasets import upload_dataset
from adapters_app.lifecycle.people import create_adapter, create_person
from adapters_app.lifecycle.pointer import promote
from adapters_app.lifecycle.revisions import create_revision
from adapters_app.models import AuditEvent, Evaluation, Job, Person, PointerEvent
from tests.conftest import with_role
from workers.engine.training import TrainingConfig

pytestmark = pytest.mark.django_db

SYSTEM = Actor.system("test")


def _jsonl(rows: list[dict]) -> bytes:
    return "\n".join(json.dumps(row) for row in rows).encode() + b"\n"


def _chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


TRAIN_JSONL = _jsonl(
    [_chat("Favourite colour?", "Teal."), _chat("Coffee or tea?", "Tea, green."), _chat("Editor?", "Helix.")]
)
EVAL_JSONL = _jsonl([{"prompt": "Favourite colour?", "completion": "Teal."}])

_payloads: dict[str, bytes] = {}


def trained_payload(base) -> bytes:
    """A real PEFT payload from two training steps on the micro base (trained once per session)."""
    if base.digest not in _payloads:
        from workers.engine.base_models import load_base
        from workers.engine.examples import parse_jsonl
        from workers.engine.training import train_adapter

        loaded = load_base(base.path, base.digest)
        examples = parse_jsonl(TRAIN_JSONL).examples
        _payloads[base.digest] = train_adapter(
            loaded.model, loaded.tokenizer, examples, TrainingConfig(steps=2)
        ).payload
    return _payloads[base.digest]


@pytest.fixture(autouse=True)
def store(settings, tmp_path):
    settings.MINT_STORE = f"file://{tmp_path / 'store'}"


@pytest.fixture
def operator(django_user_model):
    return with_role(
        django_user_model.objects.create_user("ops", password="secret-pass", is_staff=True), "admin"
    )


@pytest.fixture
def console(client, operator):
    client.force_login(operator)
    return client


@pytest.fixture
def base():
    return ensure_micro_base(actor=SYSTEM)


@pytest.fixture
def person(base):
    return create_person("alice", display_name="Alice", actor=SYSTEM)


@pytest.fixture
def adapter(person, base):
    return create_adapter(person, "assistant", base=base, actor=SYSTEM)


@pytest.fixture
def dataset(person):
    return upload_dataset(person, TRAIN_JSONL, name="prefs.jsonl", actor=SYSTEM)[0]


@pytest.fixture
def eval_dataset(person):
    return upload_dataset(person, EVAL_JSONL, name="heldout.jsonl", purpose="eval", actor=SYSTEM)[0]


def make_revision(adapter, dataset, *, parent=None, final_loss=1.5):
    return create_revision(
        adapter,
        trained_payload(adapter.base),
        dataset=dataset,
        training_config=TrainingConfig(steps=2).as_dict(),
        parent=parent,
        job=None,
        actor=SYSTEM,
        final_loss=final_loss,
    )


@pytest.fixture
def r1(adapter, dataset):
    return make_revision(adapter, dataset, final_loss=2.0)


@pytest.fixture
def r2(adapter, dataset, r1):
    return make_revision(adapter, dataset, parent=r1, final_loss=1.2)


def adapter_url(name: str, *extra) -> str:
    return reverse(f"console:{name}", args=["alice", "assistant", *extra])


def running_job(adapter, dataset, *, step=4, total=10) -> Job:
    job = Job.objects.create(
        kind=Job.TRAIN, adapter=adapter, dataset=dataset, total_steps=total, created_by="ops"
    )
    assert job.claim("worker-a")
    job.report_progress(step, total, [[s, 3.0 - 0.1 * s] for s in range(1, step + 1)])
    return job


# --- access --------------------------------------------------------------------------


def test_it_requires_login(client, r1):
    urls = [
        reverse("console:overview"),
        reverse("console:people"),
        reverse("console:person", args=["alice"]),
        adapter_url("adapter"),
        adapter_url("revision", "r1"),
        adapter_url("download", "r1"),
        reverse("console:jobs"),
        reverse("console:audit"),
        reverse("console:adapters"),
        reverse("console:revisions"),
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/login/?next="), url


def test_it_refuses_actions_without_login(client, r1):
    response = client.post(adapter_url("promote"), {"revision": "r1", "reason": "x"})
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")
    assert not PointerEvent.objects.exists()


def test_login_page_logs_an_operator_in(client, operator):
    assert client.get(reverse("console:login")).status_code == 200
    response = client.post(reverse("console:login"), {"username": "ops", "password": "secret-pass"})
    assert response.status_code == 302
    assert client.get(reverse("console:overview")).status_code == 200


def test_logout_is_a_post_button(console):
    page = console.get(reverse("console:overview")).content.decode()
    assert f'action="{reverse("console:logout")}"' in page
    response = console.post(reverse("console:logout"))
    assert response.status_code == 302
    assert console.get(reverse("console:overview")).status_code == 302


# --- overview and lists --------------------------------------------------------------


def test_overview_lists_counts(console, r2):
    promote(r2, actor=SYSTEM, reason="first release")
    response = console.get(reverse("console:overview"))
    assert response.status_code == 200
    assert response.context["counts"] == {"people": 1, "adapters": 1, "revisions": 2, "live_adapters": 1}
    page = response.content.decode()
    assert reverse("console:people") in page
    assert reverse("console:revisions") in page
    assert "first release" in page


def test_overview_shows_active_jobs_with_progress_and_recent_failures(console, adapter, dataset):
    running_job(adapter, dataset, step=3, total=10)
    failed = Job.objects.create(kind=Job.EVALUATE, adapter=adapter, dataset=dataset, created_by="ops")
    failed.fail("RuntimeError: out of memory")
    page = console.get(reverse("console:overview")).content.decode()
    assert 'role="progressbar"' in page
    assert "3/10" in page
    assert "out of memory" in page


def test_overview_empty_state_tells_the_operator_what_to_do(console):
    page = console.get(reverse("console:overview")).content.decode()
    assert "No jobs are queued or running" in page
    assert "No revision has been promoted yet" in page


def test_people_search_filters_by_handle(console, person):
    create_person("bob", actor=SYSTEM)
    response = console.get(reverse("console:people"), {"q": "ali"})
    assert [p.handle for p in response.context["page"].object_list] == ["alice"]


def test_people_list_pages_by_fifty_with_cursors_that_keep_the_search(console):
    Person.objects.bulk_create(Person(handle=f"p{i:03d}") for i in range(120))
    Person.objects.create(handle="zed")
    first = console.get(reverse("console:people"), {"q": "p"})
    handles = [p.handle for p in first.context["page"].object_list]
    assert handles == [f"p{i:03d}" for i in range(50)]
    page = first.context["page"]
    assert not page.has_previous and page.has_next and "q=p" in page.next_query

    second = console.get(reverse("console:people") + "?" + page.next_query)
    assert second.context["page"].object_list[0].handle == "p050"
    third = console.get(reverse("console:people") + "?" + second.context["page"].next_query)
    assert [p.handle for p in third.context["page"].object_list] == [f"p{i:03d}" for i in range(100, 120)]
    assert not third.context["page"].has_next

    back = console.get(reverse("console:people") + "?" + third.context["page"].previous_query)
    assert [p.handle for p in back.context["page"].object_list] == [f"p{i:03d}" for i in range(50, 100)]
    assert back.context["page"].has_previous and back.context["page"].has_next


def test_people_list_counts_each_persons_adapters_and_live_ones(console, r2):
    promote(r2, actor=SYSTEM, reason="first")
    create_person("bob", actor=SYSTEM)
    rows = {
        p.handle: (p.adapter_count, p.live_count)
        for p in console.get(reverse("console:people")).context["page"].object_list
    }
    assert rows == {"alice": (1, 1), "bob": (0, 0)}


def test_a_damaged_page_link_goes_back_to_the_first_page_with_the_same_search_and_says_why(console, person):
    response = console.get(reverse("console:people"), {"q": "ali", "after": "not-a-cursor!"}, follow=True)
    assert response.redirect_chain == [(reverse("console:people") + "?q=ali", 302)]
    assert [p.handle for p in response.context["page"].object_list] == ["alice"]
    assert "damaged" in response.content.decode()


def test_every_list_pages_by_cursor_newest_first(console, adapter, dataset):
    for _ in range(55):
        Job.objects.create(kind=Job.EVALUATE, adapter=adapter, dataset=dataset, created_by="ops")
    first = console.get(reverse("console:jobs")).context["page"]
    second = console.get(reverse("console:jobs") + "?" + first.next_query).context["page"]
    ids = [job.pk for job in first.object_list + second.object_list]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 55


def test_the_adapters_list_filters_by_base_model(console, adapter):
    shown = console.get(reverse("console:adapters"), {"base": adapter.base.name}).context["page"].object_list
    assert [a.handle for a in shown] == ["alice/assistant"]
    assert console.get(reverse("console:adapters"), {"base": "other"}).context["page"].object_list == []


def test_the_adapters_list_filters_by_gate_status_and_when_last_trained(console, r1, base):
    create_adapter(Person.objects.get(handle="alice"), "drafts", base=base, actor=SYSTEM)

    def shown(**params):
        return [
            a.handle for a in console.get(reverse("console:adapters"), params).context["page"].object_list
        ]

    assert shown(gate="ungated") == ["alice/assistant"]
    assert shown(gate="untrained") == ["alice/drafts"]
    assert shown(trained="1d") == ["alice/assistant"]
    assert shown(trained="never") == ["alice/drafts"]
    assert shown(trained="older") == []
    # A value no form offers is ignored rather than failing the page.
    assert shown(gate="bogus", trained="bogus") == ["alice/assistant", "alice/drafts"]


def test_the_adapters_list_sorts_by_training_recency_leaving_out_untrained_ones(
    console, adapter, dataset, base
):
    bob = create_person("bob", actor=SYSTEM)
    later = create_adapter(bob, "assistant", base=base, actor=SYSTEM)
    make_revision(adapter, dataset)
    make_revision(later, upload_dataset(bob, TRAIN_JSONL, name="b.jsonl", actor=SYSTEM)[0])
    create_adapter(bob, "untrained", base=base, actor=SYSTEM)

    def shown(sort):
        response = console.get(reverse("console:adapters"), {"sort": sort})
        return [a.handle for a in response.context["page"].object_list], response.content.decode()

    assert shown("trained")[0] == ["bob/assistant", "alice/assistant"]
    assert "leaves out adapters with no revision yet" in shown("trained")[1]
    assert shown("stalest")[0] == ["alice/assistant", "bob/assistant"]
    assert shown("newest")[0] == ["bob/untrained", "bob/assistant", "alice/assistant"]
    assert shown("handle")[0] == ["alice/assistant", "bob/assistant", "bob/untrained"]


def test_the_people_list_sorts_newest_first_on_request(console, person):
    create_person("aaron", actor=SYSTEM)
    handles = [
        p.handle
        for p in console.get(reverse("console:people"), {"sort": "newest"}).context["page"].object_list
    ]
    assert handles == ["aaron", "alice"]


def test_the_adapter_page_shows_lineage_and_marks_a_branch_point(console, adapter, dataset, r1, r2):
    make_revision(adapter, dataset, parent=r1)
    response = console.get(adapter_url("adapter"))
    by_label = {rev.label: rev for rev in response.context["revisions"]}
    assert [child.label for child in by_label["r1"].child_revisions] == ["r2", "r3"]
    assert by_label["r2"].child_revisions == []
    assert response.content.decode().count("branch point</span>") == 1


def test_the_adapter_page_says_which_healthy_workers_hold_it_in_memory(console, r1):
    from datetime import timedelta

    from django.utils import timezone

    from adapters_app.models import ResidentAdapter, Worker

    now = timezone.now()

    def worker(name, seen_ago):
        return Worker.objects.create(
            name=name,
            hostname="h",
            pid=1,
            device="cpu",
            code_version="t",
            started_at=now,
            last_seen_at=now - timedelta(seconds=seen_ago),
        )

    assert "the next request loads it cold" in console.get(adapter_url("adapter")).content.decode()
    for held_by in (worker("serve-1@h", 0), worker("gone@h", 3600)):
        ResidentAdapter.objects.create(
            worker=held_by,
            pid=2,
            tier="cpu",
            sha256=r1.sha256,
            revision=r1,
            bytes=2048,
            loaded_at=now,
            uses=3,
        )
    page = console.get(adapter_url("adapter")).content.decode()
    assert "In memory on" in page
    assert "serve-1@h</a> (r1, batched server, CPU memory, 2.0\xa0KB, 3 uses)" in page
    assert "gone@h" not in page


def test_person_page_shows_adapters_datasets_and_history(console, r2):
    promote(r2, actor=SYSTEM, reason="better recall")
    page = console.get(reverse("console:person", args=["alice"])).content.decode()
    assert "alice/assistant" in page
    assert "prefs.jsonl" in page
    assert "better recall" in page
    assert r2.get_absolute_url() in page


def test_empty_pages_tell_the_operator_what_to_do_next(console, adapter):
    person_page = console.get(reverse("console:person", args=["alice"])).content.decode()
    assert "No datasets yet. Upload a JSONL file below" in person_page
    adapter_page = console.get(adapter_url("adapter")).content.decode()
    assert "No revisions yet" in adapter_page
    assert "No dataset to train on" in adapter_page
    assert "Nothing is live, so there is nothing to roll back" in adapter_page


def test_unknown_person_is_404(console):
    assert console.get(reverse("console:person", args=["nobody"])).status_code == 404


def test_person_form_creates_a_person(console):
    response = console.post(reverse("console:person_create"), {"handle": "carol"})
    assert response.status_code == 302
    assert Person.objects.filter(handle="carol").exists()


def test_person_form_shows_a_refusal_as_a_message(console, person):
    response = console.post(reverse("console:person_create"), {"handle": "alice"}, follow=True)
    assert "already exists" in response.content.decode()


def test_adapter_form_creates_an_adapter_on_a_base(console, person, base):
    response = console.post(
        reverse("console:adapter_create", args=["alice"]), {"name": "coder", "base": base.pk}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("console:adapter", args=["alice", "coder"])


def test_upload_form_stores_a_dataset(console, person, operator):
    upload = io.BytesIO(TRAIN_JSONL)
    upload.name = "mine.jsonl"
    response = console.post(
        reverse("console:dataset_upload", args=["alice"]), {"file": upload, "purpose": "train"}, follow=True
    )
    assert "Uploaded mine.jsonl: 3 chat rows" in response.content.decode()
    dataset = person.datasets.get()
    assert dataset.created_by == "ops"


def test_upload_form_reports_line_numbered_errors_and_stores_nothing(console, person):
    upload = io.BytesIO(TRAIN_JSONL + b"{not json}\n")
    upload.name = "bad.jsonl"
    response = console.post(
        reverse("console:dataset_upload", args=["alice"]), {"file": upload, "purpose": "train"}, follow=True
    )
    assert "line 4" in response.content.decode()
    assert not person.datasets.exists()


# --- adapter page and its actions -----------------------------------------------------


def test_adapter_page_shows_revisions_evaluations_and_chart(console, r2, eval_dataset):
    Evaluation.objects.create(
        base=r2.adapter.base,
        revision=r2,
        dataset=eval_dataset,
        dataset_sha256=eval_dataset.sha256,
        metrics={"loss": 0.9, "token_accuracy": 0.625, "tokens": 8, "examples": 1},
    )
    response = console.get(adapter_url("adapter"))
    page = response.content.decode()
    assert r2.sha256[:12] in page
    assert "0.625" in page
    assert 'id="revision-chart-data"' in page
    traces = response.context["loss_chart"]["data"]
    assert [t["name"] for t in traces] == ["final training loss", "eval token accuracy"]
    assert traces[0]["y"] == [2.0, 1.2]


def test_every_action_form_posts_with_csrf_and_a_confirm(console, r2):
    promote(r2.parent, actor=SYSTEM, reason="first")
    promote(r2, actor=SYSTEM, reason="second")
    page = console.get(adapter_url("adapter")).content.decode()
    for action in ("train", "evaluate", "promote", "rollback"):
        url = adapter_url(action)
        start = page.index(f'action="{url}"')
        form = page[page.rindex("<form", 0, start) : page.index("</form>", start)]
        assert 'method="post"' in form, action
        assert "csrfmiddlewaretoken" in form, action
        assert "data-confirm=" in form, action
        if action in ("promote", "rollback"):
            assert 'name="reason"' in form, action


def test_pages_load_scripts_locally_never_from_a_cdn(console, r1):
    page = console.get(adapter_url("adapter")).content.decode()
    assert "/static/plotly/plotly.min.js" in page
    assert "/static/django_htmx/htmx-2.min.js" in page
    assert 'src="http' not in page and 'href="http' not in page


def test_train_form_queues_a_job_and_redirects_to_it(console, adapter, dataset):
    response = console.post(
        adapter_url("train"),
        {
            "dataset": dataset.pk,
            "rank": "4",
            "steps": "20",
            "seed": "7",
            "learning_rate": "0.01",
            "init": "gaussian",
        },
    )
    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == job.get_absolute_url()
    assert (job.kind, job.state, job.total_steps, job.created_by) == (Job.TRAIN, Job.QUEUED, 20, "ops")
    config = job.params["config"]
    assert {k: config[k] for k in ("rank", "seed", "learning_rate", "init")} == {
        "rank": 4,
        "seed": 7,
        "learning_rate": 0.01,
        "init": "gaussian",
    }
    assert AuditEvent.objects.filter(action="job.train", actor_name="ops", via="console").exists()


def test_train_form_shows_an_invalid_config_as_a_message(console, adapter, dataset):
    response = console.post(adapter_url("train"), {"dataset": dataset.pk, "rank": "0"}, follow=True)
    assert "invalid training config" in response.content.decode()
    assert not Job.objects.exists()


def test_train_form_refuses_another_persons_dataset(console, adapter):
    bob = create_person("bob", actor=SYSTEM)
    other, _ = upload_dataset(bob, TRAIN_JSONL, name="bobs.jsonl", actor=SYSTEM)
    response = console.post(adapter_url("train"), {"dataset": other.pk}, follow=True)
    assert "Choose one of this person" in response.content.decode()
    assert not Job.objects.exists()


@pytest.mark.parametrize("posted", ["x", "1e309", "-1", "<script>"])
def test_a_hand_made_post_naming_no_row_gets_the_forms_message_not_a_server_error(console, adapter, posted):
    for action, choose in (("train", "Choose one of this person"), ("evaluate", "Choose one of this person")):
        response = console.post(adapter_url(action), {"dataset": posted}, follow=True)
        assert response.status_code == 200 and choose in response.content.decode()
    response = console.post("/people/alice/new-adapter", {"name": "writer", "base": posted}, follow=True)
    assert response.status_code == 200 and "Choose a base model" in response.content.decode()
    response = console.post(adapter_url("gate"), {"eval_dataset": posted}, follow=True)
    assert response.status_code == 200 and "evaluation sets (format suite)" in response.content.decode()
    assert not Job.objects.exists()


def test_evaluate_form_can_target_the_bare_base(console, r1, eval_dataset):
    console.post(adapter_url("evaluate"), {"dataset": eval_dataset.pk, "revision": ""})
    console.post(adapter_url("evaluate"), {"dataset": eval_dataset.pk, "revision": "r1"})
    jobs = list(Job.objects.order_by("pk"))
    assert [(j.kind, j.revision_id) for j in jobs] == [(Job.EVALUATE, None), (Job.EVALUATE, r1.pk)]


def test_promote_form_moves_the_pointer(console, r1):
    response = console.post(adapter_url("promote"), {"revision": "r1", "reason": "looks good"}, follow=True)
    r1.adapter.refresh_from_db()
    assert r1.adapter.live_revision_id == r1.pk
    event = PointerEvent.objects.get()
    assert (event.action, event.actor, event.reason) == ("promote", "ops", "looks good")
    assert "alice/assistant now serves r1" in response.content.decode()


def test_promote_of_the_live_revision_shows_the_conflict(console, r1):
    promote(r1, actor=SYSTEM)
    response = console.post(adapter_url("promote"), {"revision": "r1", "reason": "again"}, follow=True)
    assert "already live" in response.content.decode()
    assert PointerEvent.objects.count() == 1


def test_rollback_requires_post(console, r1):
    assert console.get(adapter_url("rollback")).status_code == 405
    assert console.get(adapter_url("promote")).status_code == 405


def test_rollback_form_returns_to_the_previous_revision(console, r2):
    r1 = r2.parent
    promote(r1, actor=SYSTEM)
    promote(r2, actor=SYSTEM)
    console.post(adapter_url("rollback"), {"revision": "", "reason": "r2 forgets names"})
    r2.adapter.refresh_from_db()
    assert r2.adapter.live_revision_id == r1.pk
    event = PointerEvent.objects.first()
    assert (event.action, event.from_revision_id, event.to_revision_id) == ("rollback", r2.pk, r1.pk)
    assert event.reason == "r2 forgets names"


def test_rollback_to_a_never_live_revision_is_refused_with_a_message(console, r2):
    promote(r2, actor=SYSTEM)
    response = console.post(adapter_url("rollback"), {"revision": "r1", "reason": "x"}, follow=True)
    assert "was never live" in response.content.decode()


# --- revision page and download -------------------------------------------------------


def test_revision_page_shows_provenance(console, r2, dataset):
    response = console.get(adapter_url("revision", "r2"))
    page = response.content.decode()
    for fact in (r2.sha256, r2.base_digest, r2.code_version, dataset.sha256, "learning_rate", r2.init_method):
        assert str(fact) in page
    assert r2.parent.get_absolute_url() in page
    assert adapter_url("download", "r2") in page


def test_unknown_revision_is_404(console, r1):
    assert console.get(adapter_url("revision", "r9")).status_code == 404
    assert console.get(adapter_url("download", "r9")).status_code == 404


def test_download_returns_a_tar_with_peft_files(console, r1):
    response = console.get(adapter_url("download", "r1"))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/gzip"
    assert response["Content-Disposition"] == 'attachment; filename="alice-assistant-r1.tar.gz"'
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        names = set(archive.getnames())
        weights = archive.extractfile("adapter_model.safetensors").read()
        config = json.loads(archive.extractfile("adapter_config.json").read())
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= names
    assert weights == trained_payload(r1.adapter.base)
    assert config["peft_type"] == "LORA"


# --- jobs ---------------------------------------------------------------------------


def test_job_page_shows_progress_and_loss_chart(console, adapter, dataset):
    job = running_job(adapter, dataset, step=4, total=10)
    response = console.get(job.get_absolute_url())
    page = response.content.decode()
    assert "4 of 10 (40%)" in page
    assert "worker-a" in page
    assert 'id="loss-chart-data"' in page
    assert response.context["chart"]["data"][0]["x"] == [1, 2, 3, 4]
    assert response.context["eta"]


def test_job_progress_fragment_polls_while_active(console, adapter, dataset):
    job = running_job(adapter, dataset)
    response = console.get(job.get_absolute_url(), HTTP_HX_REQUEST="true")
    fragment = response.content.decode()
    assert fragment.lstrip().startswith("<section")
    assert "<html" not in fragment
    assert 'hx-trigger="every 1s"' in fragment
    assert 'id="loss-chart-data"' in fragment  # redrawn from it by static/mint/console.js


def test_job_progress_fragment_stops_polling_when_done(console, adapter, dataset):
    job = running_job(adapter, dataset, step=10, total=10)
    job.succeed(result={"final_loss": 0.5})
    fragment = console.get(job.get_absolute_url(), HTTP_HX_REQUEST="true").content.decode()
    assert "hx-trigger" not in fragment
    assert "succeeded" in fragment
    assert 'id="loss-chart-data"' in fragment  # redrawn from it by static/mint/console.js


def test_failed_job_shows_its_error_and_a_retry_button(console, adapter, dataset):
    job = running_job(adapter, dataset)
    job.fail("ValueError: boom\n\nTraceback ...")
    page = console.get(job.get_absolute_url()).content.decode()
    assert '<pre class="error-block">ValueError: boom' in page
    assert reverse("console:job_retry", args=[job.pk]) in page
    assert reverse("console:job_cancel", args=[job.pk]) not in page


def test_cancel_button_asks_a_running_job_to_stop(console, adapter, dataset):
    job = running_job(adapter, dataset)
    response = console.post(reverse("console:job_cancel", args=[job.pk]), follow=True)
    job.refresh_from_db()
    assert job.cancel_requested
    assert "will stop after its current step" in response.content.decode()


def test_cancel_of_a_finished_job_shows_the_conflict(console, adapter, dataset):
    job = running_job(adapter, dataset)
    job.succeed()
    response = console.post(reverse("console:job_cancel", args=[job.pk]), follow=True)
    assert "only queued or running jobs can be cancelled" in response.content.decode()


def test_retry_button_starts_a_new_job(console, adapter, dataset):
    job = running_job(adapter, dataset)
    job.fail("boom")
    response = console.post(reverse("console:job_retry", args=[job.pk]))
    retried = Job.objects.exclude(pk=job.pk).get()
    assert response["Location"] == retried.get_absolute_url()
    assert (retried.kind, retried.state, retried.dataset_id) == (Job.TRAIN, Job.QUEUED, dataset.pk)


def test_job_actions_require_post(console, adapter, dataset):
    job = running_job(adapter, dataset)
    assert console.get(reverse("console:job_cancel", args=[job.pk])).status_code == 405
    assert console.get(reverse("console:job_retry", args=[job.pk])).status_code == 405


def test_jobs_list_filters_by_state_and_kind(console, adapter, dataset):
    running_job(adapter, dataset)
    Job.objects.create(kind=Job.EVALUATE, adapter=adapter, dataset=dataset, created_by="ops")
    response = console.get(reverse("console:jobs"), {"state": "queued", "kind": "evaluate"})
    assert [j.kind for j in response.context["page"].object_list] == [Job.EVALUATE]
    response = console.get(reverse("console:jobs"), {"state": "running"})
    assert [j.kind for j in response.context["page"].object_list] == [Job.TRAIN]


def test_a_jobs_log_keeps_timestamped_lines_and_stops_at_its_limit(adapter, dataset, monkeypatch):
    job = Job.objects.create(kind=Job.TRAIN, adapter=adapter, dataset=dataset, created_by="ops")
    job.append_log("claimed by worker-a")
    job.append_log("step 1/10, loss 2.5")
    job.refresh_from_db()
    assert [line[9:] for line in job.log.splitlines()] == ["claimed by worker-a", "step 1/10, loss 2.5"]
    monkeypatch.setattr(Job, "LOG_LIMIT", len(job.log) + 10)
    job.append_log("a line too long to fit in what is left")
    job.append_log("and another")
    job.refresh_from_db()
    assert job.log.splitlines()[-1] == "(log full: later lines dropped)"
    assert job.log.count("log full") == 1


def test_a_suite_evaluation_jobs_page_shows_its_result_even_with_a_key_named_items(console, adapter, dataset):
    job = running_job(adapter, dataset)
    job.succeed(result={"scores": {"recall": 0.5}, "items": 2})
    page = console.get(reverse("console:job", args=[job.pk])).content.decode()
    assert "{&#x27;recall&#x27;: 0.5}" in page and '<th scope="row">items</th><td>2</td>' in page


def test_the_job_page_shows_its_log(console, adapter, dataset):
    job = running_job(adapter, dataset)
    job.append_log("claimed by worker-a")
    assert "claimed by worker-a" in console.get(reverse("console:job", args=[job.pk])).content.decode()


# --- audit --------------------------------------------------------------------------


def test_audit_log_lists_newest_first_and_filters_by_actor_and_person(console, r1):
    console.post(adapter_url("promote"), {"revision": "r1", "reason": "go"})
    create_person("bob", actor=SYSTEM)
    everything = console.get(reverse("console:audit")).context["page"].object_list
    assert everything[0].action == "person.create"
    by_ops = console.get(reverse("console:audit"), {"actor": "ops"}).context["page"].object_list
    assert [e.action for e in by_ops] == ["adapter.promote"]
    about_bob = console.get(reverse("console:audit"), {"person": "bob"}).context["page"].object_list
    assert [e.object_repr for e in about_bob] == ["bob"]


def test_audit_log_filters_by_action_prefix(console, r1):
    console.post(adapter_url("promote"), {"revision": "r1", "reason": "go"})
    adapter_events = console.get(reverse("console:audit"), {"action": "adapter."}).context["page"].object_list
    assert {e.action for e in adapter_events} == {"adapter.create", "adapter.promote"}


def test_audit_log_exports_the_filtered_events_as_csv(console, r1):
    import csv

    console.post(adapter_url("promote"), {"revision": "r1", "reason": "=HYPERLINK(evil)"})
    response = console.get(reverse("console:audit_export"), {"actor": "ops"})
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="mint-audit-')
    table = list(csv.DictReader(b"".join(response.streaming_content).decode().splitlines()))
    assert [row["action"] for row in table] == ["adapter.promote"]
    [promotion] = table
    assert promotion["actor"] == "ops" and promotion["person"] == "alice"
    assert '"reason":"=HYPERLINK(evil)"' in promotion["after"]
    # Exported everything: one row per event, newest first.
    everything = list(
        csv.DictReader(
            b"".join(console.get(reverse("console:audit_export")).streaming_content).decode().splitlines()
        )
    )
    assert len(everything) == AuditEvent.objects.count()
    assert everything[0]["action"] == "adapter.promote"


def test_an_exported_cell_that_a_spreadsheet_would_run_as_a_formula_is_quoted():
    from adapters_app.console.audit_csv import _cell

    assert _cell("=1+1") == "'=1+1" and _cell("@home") == "'@home" and _cell("alice") == "alice"


def test_adapters_and_revisions_lists_back_the_overview_counts(console, r2):
    promote(r2, actor=SYSTEM)
    live = console.get(reverse("console:adapters"), {"live": "yes"}).context["page"].object_list
    assert [a.handle for a in live] == ["alice/assistant"]
    assert not console.get(reverse("console:adapters"), {"live": "no"}).context["page"].object_list
    revisions = console.get(reverse("console:revisions")).context["page"].object_list
    assert [r.label for r in revisions] == ["r2", "r1"]


def test_a_retrain_starts_from_the_live_revisions_recipe(console, adapter, dataset, tiny_payload):
    from adapters_app.lifecycle.revisions import create_revision
    from workers.engine.training import TrainingConfig

    recipe = TrainingConfig(steps=150, batch_size=16, replay=0.5, targets="attention").as_dict()
    live = create_revision(
        adapter, tiny_payload, dataset=dataset, training_config=recipe, parent=None, job=None, actor=SYSTEM
    )
    promote(live, actor=SYSTEM, reason="first")
    form = console.get(adapter_url("adapter")).content.decode()
    assert 'name="steps" type="number" min="1" max="100000" value="150"' in form

    console.post(adapter_url("train"), {"dataset": dataset.pk, "steps": "200"})
    config = Job.objects.get().params["config"]
    assert (config["steps"], config["replay"], config["targets"], config["batch_size"]) == (
        200,
        0.5,
        "attention",
        16,
    )
