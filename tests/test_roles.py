"""Roles: viewers read, operators act on adapters, admins manage people and bases.

The rule lives in the lifecycle services, so every door (console, API, CLI)
enforces it; the console also hides what a role may not use and answers a
forged request with a 403."""

import pytest
from django.urls import reverse

from adapters_app.lifecycle import roles
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.audit import export_audit
from adapters_app.lifecycle.errors import Forbidden
from adapters_app.lifecycle.people import create_person
from adapters_app.lifecycle.pointer import promote
from adapters_app.lifecycle.revisions import download_revision
from adapters_app.models import Adapter, ApiKey, AuditEvent
from tests.conftest import with_role

pytestmark = pytest.mark.django_db


@pytest.fixture
def user(django_user_model):
    def make(name: str, role: str | None):
        created = django_user_model.objects.create_user(name, password=f"pw-{name}-12345")
        return with_role(created, role) if role else created

    return make


def test_a_user_in_no_group_is_a_viewer_and_a_superuser_is_an_admin(user, django_user_model):
    assert roles.role_of(user("vera", None)) == roles.VIEWER
    assert roles.role_of(user("otto", "operator")) == roles.OPERATOR
    boss = django_user_model.objects.create_superuser("boss", password="pw-boss-12345")
    assert roles.role_of(boss) == roles.ADMIN


def test_each_role_includes_the_ones_before_it():
    assert roles.allows(roles.VIEWER, "infer") and not roles.allows(roles.VIEWER, "promote")
    assert roles.allows(roles.OPERATOR, "promote") and not roles.allows(roles.OPERATOR, "person.create")
    assert all(roles.allows(roles.ADMIN, action) for action in roles.REQUIRED)


def test_the_services_refuse_an_action_the_actors_role_does_not_allow(user, make_revision):
    viewer = Actor.from_user(user("vera", None), via="api")
    operator = Actor.from_user(user("otto", "operator"), via="api")
    revision = make_revision()
    with pytest.raises(Forbidden, match="promote needs the operator role"):
        promote(revision, actor=viewer)
    with pytest.raises(Forbidden, match=r"person\.create needs the admin role"):
        create_person("zoe", actor=operator)
    promote(revision, actor=operator)
    assert Adapter.objects.get().live_revision == revision


def test_a_viewer_sees_no_action_buttons_and_a_forged_post_gets_a_403(client, user, make_revision):
    revision = make_revision()
    client.force_login(user("vera", None))
    page = client.get(reverse("console:adapter", args=["alice", "assistant"])).content.decode()
    for action in ("train", "evaluate", "promote", "rollback", "gate"):
        assert reverse(f"console:{action}", args=["alice", "assistant"]) not in page, action
    assert "need the operator role" in page

    forged = client.post(
        reverse("console:promote", args=["alice", "assistant"]), {"revision": revision.label}
    )
    assert forged.status_code == 403
    assert Adapter.objects.get().live_revision is None
    people = client.get(reverse("console:people")).content.decode()
    assert reverse("console:person_create") not in people


def test_an_operator_sees_the_adapter_actions_but_not_the_admins(client, user, make_revision):
    make_revision()
    client.force_login(user("otto", "operator"))
    page = client.get(reverse("console:adapter", args=["alice", "assistant"])).content.decode()
    assert reverse("console:promote", args=["alice", "assistant"]) in page
    person_page = client.get(reverse("console:person", args=["alice"])).content.decode()
    assert reverse("console:adapter_create", args=["alice"]) not in person_page
    assert reverse("console:dataset_upload", args=["alice"]) in person_page


def test_the_api_answers_a_viewers_key_with_403_on_a_state_change(client, user, make_revision):
    revision = make_revision()
    _, raw = ApiKey.issue(user("vera", None))
    response = client.post(
        "/api/adapters/alice/assistant/promote",
        data={"revision": revision.label},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw}",
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


def test_a_viewer_may_not_download_weights_or_export_the_audit_log(client, user, make_revision):
    """A personal adapter memorises its person's data: its weights are as sensitive as the
    dataset, and the audit log names everyone's actions. Operators may take them; viewers not."""
    make_revision()
    client.force_login(user("vera", None))
    download = reverse("console:download", args=["alice", "assistant", "r1"])
    page = client.get(reverse("console:revision", args=["alice", "assistant", "r1"])).content.decode()
    assert download not in page
    assert client.get(download).status_code == 403
    audit_page = client.get(reverse("console:audit")).content.decode()
    assert reverse("console:audit_export") not in audit_page
    assert client.get(reverse("console:audit_export")).status_code == 403
    assert not AuditEvent.objects.filter(action__in=["revision.download", "audit.export"]).exists()


def test_the_api_refuses_a_viewers_key_a_download(client, user, make_revision):
    make_revision()
    _, raw = ApiKey.issue(user("vera", None))
    response = client.get("/api/revisions/alice/assistant/r1/download", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 403
    assert "revision.download needs the operator role" in response.json()["error"]["message"]


def test_the_download_service_refuses_a_viewer_whatever_the_door(user, make_revision):
    revision = make_revision()
    viewer = Actor.from_user(user("vera", None), via="cli")
    with pytest.raises(Forbidden, match=r"revision\.download needs the operator role"):
        download_revision(revision, actor=viewer)
    with pytest.raises(Forbidden, match=r"audit\.export needs the operator role"):
        export_audit(AuditEvent.objects.all(), actor=viewer)


def test_every_download_is_audited_with_who_and_which_door(client, user, make_revision):
    revision = make_revision()
    otto = user("otto", "operator")
    client.force_login(otto)
    console = client.get(reverse("console:download", args=["alice", "assistant", "r1"]))
    assert console.status_code == 200 and console["Content-Type"] == "application/gzip"
    _, raw = ApiKey.issue(otto)
    api = client.get("/api/revisions/alice/assistant/r1/download", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.status_code == 200
    downloads = AuditEvent.objects.filter(action="revision.download").order_by("id")
    assert [(event.actor_name, event.via) for event in downloads] == [("otto", "console"), ("otto", "api")]
    assert all(event.person_handle == "alice" for event in downloads)
    assert downloads[0].after == {"sha256": revision.sha256, "number": 1}
    exported = client.get(reverse("console:audit_export"), {"action": "revision."})
    assert exported.status_code == 200
    assert b"".join(exported.streaming_content).decode().count("revision.download") == 2
