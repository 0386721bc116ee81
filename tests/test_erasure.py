"""Erasure on request, through the API (admins) and the command line: the person and
everything made from their data go; an audit tombstone says what, not the data."""

import pytest
from django.core.management import CommandError, call_command

from adapters_app.lifecycle.storage import get_store
from adapters_app.models import Adapter, ApiKey, AuditEvent, Dataset, Person, Revision
from tests.conftest import with_role

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator_call(client, django_user_model):
    _, raw = ApiKey.issue(with_role(django_user_model.objects.create_user("otto"), "operator"))

    def call(path: str, body: dict):
        return client.post(
            path, data=body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {raw}"
        )

    return call


def test_an_admin_erases_a_person_with_their_adapters_revisions_datasets_and_blobs(
    api, make_revision, eval_set
):
    revision = make_revision()
    blobs = [revision.sha256, *Dataset.objects.values_list("sha256", flat=True)]
    assert all(get_store().exists(sha) for sha in blobs)

    erased = api("post", "/api/people/alice/erase", {"reason": "asked to be forgotten"})

    assert erased == {"erased": "alice", "adapters": 1, "revisions": 1, "datasets": 2, "study_runs": 0}
    assert not Person.objects.exists() and not Adapter.objects.exists() and not Revision.objects.exists()
    assert not Dataset.objects.exists()
    assert not any(get_store().exists(sha) for sha in blobs)
    tombstone = AuditEvent.objects.get(action="person.erase")
    assert tombstone.person_handle == "alice" and tombstone.after["reason"] == "asked to be forgotten"


def test_a_person_with_a_retrain_chain_and_a_promotion_history_is_erased_whole(make_revision, actor):
    from adapters_app.lifecycle.people import erase_person
    from adapters_app.lifecycle.pointer import promote, rollback
    from adapters_app.models import PointerEvent

    first = make_revision()
    second = make_revision(parent=first)
    third = make_revision(parent=second)
    promote(first, actor=actor, override_reason="test")
    promote(third, actor=actor, override_reason="test")
    rollback(first.adapter, to=first, actor=actor, reason="regressed")

    counts = erase_person(first.adapter.person, actor=actor, reason="asked to be forgotten")

    assert counts["revisions"] == 3
    assert not Revision.objects.exists() and not PointerEvent.objects.exists()
    assert not Person.objects.exists()


def test_an_operator_may_not_erase_anyone(operator_call, adapter):
    response = operator_call("/api/people/alice/erase", {"reason": "asked"})
    assert response.status_code == 403
    assert "person.erase needs the admin role" in response.json()["error"]["message"]
    assert Person.objects.filter(handle="alice").exists()


def test_erasure_needs_a_reason_and_a_person_that_exists(api, adapter):
    api("post", "/api/people/alice/erase", {"reason": "  "}, expect=400)
    api("post", "/api/people/nobody/erase", {"reason": "asked"}, expect=404)
    assert Person.objects.filter(handle="alice").exists()


def test_the_command_erases_a_person_and_says_what_went(adapter, dataset, capsys):
    call_command("erase_person", "alice", reason="asked by email")
    assert "erased alice: adapters 1, revisions 0, datasets 1, study runs 0" in capsys.readouterr().out
    assert not Person.objects.exists()
    with pytest.raises(CommandError, match="no person"):
        call_command("erase_person", "alice", reason="again")


# --- from the console ----------------------------------------------------------------------


@pytest.fixture
def admin_console(client, actor, django_user_model):
    client.force_login(django_user_model.objects.get(pk=actor.user_id))
    return client


def test_an_admin_erases_a_person_from_their_page_after_typing_the_handle(admin_console, adapter, dataset):
    page = admin_console.get("/people/alice/").content.decode()
    assert "Erase this person and everything made from their data" in page

    refused = admin_console.post("/people/alice/erase", {"reason": "asked", "confirm": "alic"}, follow=True)
    assert "Nothing was erased: type alice to confirm." in refused.content.decode()
    assert Person.objects.filter(handle="alice").exists()

    done = admin_console.post("/people/alice/erase", {"reason": "asked", "confirm": "alice"}, follow=True)
    assert done.redirect_chain[-1][0] == "/people/"
    assert "Erased alice (adapters 1, revisions 0, datasets 1, study runs 0)." in done.content.decode()
    assert not Person.objects.exists() and not Dataset.objects.exists()


def test_an_operator_sees_no_erase_form_and_a_forged_post_is_refused(client, django_user_model, adapter):
    client.force_login(with_role(django_user_model.objects.create_user("otto"), "operator"))
    assert 'action="/people/alice/erase"' not in client.get("/people/alice/").content.decode()
    assert client.post("/people/alice/erase", {"reason": "asked", "confirm": "alice"}).status_code == 403
    assert Person.objects.filter(handle="alice").exists()
