"""Roles: viewers read, operators act on adapters, admins manage people and bases.

The rule lives in the lifecycle services, so every door (console, API, CLI)
enforces it; the console also hides what a role may not use and answers a
forged request with a 403."""

import pytest
from django.urls import reverse

from adapters_app.lifecycle import roles
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.errors import Forbidden
from adapters_app.lifecycle.people import create_person
from adapters_app.lifecycle.pointer import promote
from adapters_app.models import Adapter, ApiKey
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
