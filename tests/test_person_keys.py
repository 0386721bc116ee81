"""Person keys: an application serving one person may ask only that person's adapters."""

import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from adapters_app.lifecycle import keys
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.people import create_adapter, create_person, erase_person
from adapters_app.models import ApiKey, AuditEvent
from tests.conftest import with_role


@pytest.fixture
def bob(actor, micro_base):
    person = create_person("bob", display_name="Bob", actor=actor)
    create_adapter(person, "assistant", base=micro_base, actor=actor)
    return person


@pytest.fixture
def alice_key(adapter, actor):
    """A key for alice (all her adapters); its secret."""
    return keys.issue_person_key(adapter.person, actor=actor, name="alice's app")


def call(client, method: str, path: str, secret: str, body=None):
    return getattr(client, method)(
        path,
        data=json.dumps(body) if body is not None else None,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )


def chat(client, secret: str, model: str):
    return call(
        client,
        "post",
        "/v1/chat/completions",
        secret,
        {"model": model, "messages": [{"role": "user", "content": "Hi"}]},
    )


def test_a_person_key_gets_the_same_404_for_another_persons_adapter_as_for_no_adapter_at_all(
    client, alice_key, bob
):
    _, secret = alice_key
    other = chat(client, secret, "bob/assistant")
    missing = chat(client, secret, "carol/assistant")
    assert other.status_code == missing.status_code == 404
    # Bob's adapter has no live revision: an operator would be told so. The key is not.
    assert other.json()["error"]["message"] == "The model `bob/assistant` does not exist"
    assert other.json()["error"]["code"] == missing.json()["error"]["code"] == "model_not_found"
    pinned = chat(client, secret, "bob/assistant@r1")
    assert pinned.status_code == 404


def test_a_person_key_sees_only_its_persons_live_adapters_in_the_model_list(
    client, alice_key, bob, make_revision, dataset, tiny_payload, actor
):
    from adapters_app.lifecycle.datasets import upload_dataset
    from adapters_app.lifecycle.pointer import promote
    from adapters_app.lifecycle.revisions import create_revision

    promote(make_revision(), actor=actor)  # alice/assistant goes live, and so does bob's
    bobs_data = upload_dataset(bob, dataset_bytes(dataset), name="facts", actor=actor)[0]
    promote(
        create_revision(
            bob.adapters.get(),
            tiny_payload,
            dataset=bobs_data,
            training_config=dict(steps=2),
            parent=None,
            job=None,
            actor=actor,
        ),
        actor=actor,
    )

    _, secret = alice_key
    listed = call(client, "get", "/v1/models", secret).json()["data"]
    assert [model["id"] for model in listed] == ["alice/assistant"]


def dataset_bytes(dataset) -> bytes:
    from adapters_app.lifecycle.storage import get_store

    return get_store().get(dataset.sha256)


def test_a_key_that_allows_the_base_lists_and_admits_it_but_never_another_adapter(alice, micro_base, actor):
    key, _ = keys.issue_person_key(alice, actor=actor, allow_base=True)
    scope = keys.scope_of(key)
    assert scope.admit(micro_base.name).base == micro_base.name
    assert list(scope.bases(type(micro_base).objects.all())) == [micro_base]
    with pytest.raises(keys.NotFound):
        scope.admit("bob/assistant")


def test_a_key_bound_to_one_adapter_may_not_ask_its_persons_other_adapters(adapter, micro_base, actor):
    create_adapter(adapter.person, "diary", base=micro_base, actor=actor)
    key, _ = keys.issue_person_key(adapter.person, actor=actor, adapter=adapter)
    scope = keys.scope_of(key)
    assert scope.admit("alice/assistant@r2").pin == "r2"
    with pytest.raises(keys.NotFound):
        scope.admit("alice/diary")
    with pytest.raises(keys.NotFound):
        scope.admit(micro_base.name)


def management_operations(client, secret) -> list[tuple[str, str]]:
    document = client.get("/api/openapi.json").json()
    operations = []
    for path, methods in document["paths"].items():
        if not path.startswith("/api/"):
            continue
        concrete = re.sub(r"\{(\w+)\}", lambda m: "1" if m.group(1).endswith("id") else "alice", path)
        operations += [(method, concrete) for method in methods if method != "parameters"]
    return operations


def test_a_person_key_gets_403_on_every_management_endpoint(client, alice_key):
    _, secret = alice_key
    operations = management_operations(client, secret)
    assert len(operations) > 30  # every documented operation, not a sample
    refused = {
        (method, path): call(client, method, path, secret, {} if method != "get" else None)
        for method, path in operations
    }
    statuses = {operation: response.status_code for operation, response in refused.items()}
    assert set(statuses.values()) == {403}, statuses
    body = next(iter(refused.values())).json()
    assert body["error"]["code"] == "forbidden"
    assert "person key" in body["error"]["message"]


def test_revoked_and_expired_keys_get_401_and_their_attempts_are_audited_without_the_secret(
    client, alice_key, actor
):
    key, secret = alice_key
    expired, expired_secret = keys.issue_person_key(key.person, actor=actor)
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    keys.revoke_key(key, actor=actor)

    for refused_secret, state in [(secret, "revoked"), (expired_secret, "expired")]:
        for path in ["/v1/models", "/api/people"]:
            response = call(client, "get", path, refused_secret)
            assert response.status_code == 401
            assert response.json()["error"]["message"] == f"this API key is {state}"

    denials = AuditEvent.objects.filter(action="api_key.denied")
    assert sorted(event.after["reason"] for event in denials) == ["key expired"] * 2 + ["key revoked"] * 2
    for event in denials:
        assert secret not in json.dumps(event.after) + event.object_repr
        assert expired_secret not in json.dumps(event.after) + event.object_repr
        assert event.person_handle == "alice"


def test_every_scope_denial_is_audited_with_the_model_asked_for(client, alice_key, bob):
    key, secret = alice_key
    chat(client, secret, "bob/assistant")
    call(client, "get", "/api/people", secret)
    denials = AuditEvent.objects.filter(action="api_key.denied").order_by("pk")
    assert [(event.after["reason"], event.after.get("model")) for event in denials] == [
        ("model outside the key's scope", "bob/assistant"),
        ("management endpoint", None),
    ]
    assert all(event.actor_name == f"key mint_{key.prefix} (alice)" for event in denials)


def test_every_use_of_a_key_stamps_when_it_was_last_used(client, alice_key):
    key, secret = alice_key
    assert key.last_used_at is None
    call(client, "get", "/v1/models", secret)
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_only_a_hash_of_the_secret_is_stored(alice_key):
    key, secret = alice_key
    row = ApiKey.objects.filter(pk=key.pk).values().get()
    assert secret not in json.dumps(row, default=str)
    assert row["key_hash"] == keys.ApiKey.find(secret).key_hash


def test_erasing_a_person_deletes_their_keys(client, alice_key, actor):
    key, secret = alice_key
    erase_person(key.person, actor=actor, reason="asked to be forgotten")
    assert not ApiKey.objects.filter(pk=key.pk).exists()
    assert call(client, "get", "/v1/models", secret).status_code == 401


def test_only_admins_manage_keys(alice, django_user_model):
    operator = Actor.from_user(
        with_role(django_user_model.objects.create_user("oscar"), "operator"), via="api"
    )
    with pytest.raises(keys.Forbidden, match=r"key\.manage needs the admin role"):
        keys.issue_person_key(alice, actor=operator)
    with pytest.raises(keys.Forbidden):
        keys.keys_for(operator)


def test_a_key_for_one_adapter_must_name_one_of_its_persons(alice, bob, actor):
    with pytest.raises(keys.Invalid, match="bob/assistant is not one of alice's adapters"):
        keys.issue_person_key(alice, actor=actor, adapter=bob.adapters.get())


# --- the keys API --------------------------------------------------------------------------


def test_an_admin_issues_lists_changes_and_revokes_a_person_key_through_the_api(api, adapter):
    issued = api(
        "post",
        "/api/keys",
        {
            "person": "alice",
            "adapter": "assistant",
            "name": "app",
            "expires_in_days": 30,
            "requests_per_minute": 5,
        },
        expect=201,
    )
    assert issued["key"].startswith(f"mint_{issued['prefix']}_")
    assert (issued["kind"], issued["owner"], issued["state"]) == ("person", "alice/assistant", "active")
    assert issued["requests_per_minute"] == 5 and issued["tokens_per_minute"] is None

    listed = api("get", "/api/keys?person=alice")["data"]
    assert [key["prefix"] for key in listed] == [issued["prefix"]]
    assert "key" not in listed[0]  # the secret was shown once

    changed = api("patch", f"/api/keys/{issued['prefix']}", {"expires_in_days": None, "tokens_per_minute": 0})
    assert (changed["expires_at"], changed["tokens_per_minute"], changed["requests_per_minute"]) == (
        None,
        0,
        5,
    )

    revoked = api("post", f"/api/keys/{issued['prefix']}/revoke")
    assert revoked["state"] == "revoked"
    assert api("get", f"/api/keys/{issued['prefix']}")["revoked_at"] is not None
    assert list(
        AuditEvent.objects.filter(action__startswith="api_key.")
        .order_by("pk")
        .values_list("action", flat=True)
    ) == [
        "api_key.create",
        "api_key.change",
        "api_key.revoke",
    ]


def test_the_keys_api_refuses_bad_limits_and_unknown_people_by_name(api, alice):
    refused = api("post", "/api/keys", {"person": "alice", "requests_per_minute": -1}, expect=400)
    assert "requests_per_minute" in refused["error"]["details"]
    api("post", "/api/keys", {"person": "nobody"}, expect=404)
    api("patch", "/api/keys/ffffffff", {"tokens_per_minute": 1}, expect=404)
    assert api("patch", "/api/keys/ffffffff", {}, expect=400)["error"]["message"].startswith(
        "nothing to change"
    )


# --- the console's keys page -----------------------------------------------------------------


@pytest.fixture
def admin_console(client, actor, django_user_model):
    client.force_login(django_user_model.objects.get(pk=actor.user_id))
    return client


def test_an_admin_issues_a_person_key_in_the_console_and_sees_its_secret_once(admin_console, adapter):
    answer = admin_console.post(
        "/keys/issue",
        {
            "person": "alice",
            "adapter": "assistant",
            "name": "diary app",
            "expires_in_days": "7",
            "requests_per_minute": "30",
            "tokens_per_minute": "",
            "concurrent_streams": "0",
        },
    )
    assert answer.status_code == 201
    key = ApiKey.objects.get(person__handle="alice")
    secret = answer.context["issued"]["secret"]
    assert secret.startswith(f"mint_{key.prefix}_") and secret.encode() in answer.content
    assert (key.adapter.name, key.requests_per_minute, key.tokens_per_minute, key.concurrent_streams) == (
        "assistant",
        30,
        None,
        0,
    )
    assert key.expires_at is not None

    listing = admin_console.get("/keys/")
    assert f"mint_{key.prefix}_…".encode() in listing.content
    assert secret.encode() not in listing.content


def test_an_admin_sets_an_expiry_and_revokes_in_the_console(admin_console, alice_key):
    key, _ = alice_key
    admin_console.post(f"/keys/{key.prefix}/expiry", {"expires_in_days": "0.5"})
    key.refresh_from_db()
    assert key.expires_at is not None
    admin_console.post(f"/keys/{key.prefix}/revoke")
    key.refresh_from_db()
    assert key.state() == "revoked"
    assert b"revoked" in admin_console.get("/keys/").content


def test_the_console_names_what_was_wrong_with_a_key_it_could_not_issue(admin_console, alice):
    answer = admin_console.post(
        "/keys/issue", {"person": "alice", "requests_per_minute": "many"}, follow=True
    )
    assert b"Requests per minute must be a whole number" in answer.content
    assert not ApiKey.objects.exists()


def test_only_admins_see_and_use_the_keys_page(client, django_user_model, alice_key):
    operator = with_role(django_user_model.objects.create_user("oscar"), "operator")
    client.force_login(operator)
    assert client.get("/keys/").status_code == 403
    assert client.post(f"/keys/{alice_key[0].prefix}/revoke").status_code == 403
    assert b'href="/keys/"' not in client.get("/").content
