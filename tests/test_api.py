"""The management API and the OpenAI-compatible surface: auth, validation and error shapes."""

import json

import pytest

from adapters_app.models import ApiKey, AuditEvent, Dataset, Job
from tests.conftest import FACTS, OTHER_FACTS, with_role

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(django_user_model, micro_base):
    _, raw = ApiKey.issue(with_role(django_user_model.objects.create_user("ops"), "admin"))
    return raw


@pytest.fixture
def post(client, key):
    def post(path, body=None, *, raw: bytes | None = None, auth=True):
        headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if auth else {}
        data = raw if raw is not None else json.dumps(body or {})
        return client.post(path, data=data, content_type="application/json", **headers)

    return post


@pytest.fixture
def alice_adapter(post):
    assert post("/api/people", {"handle": "alice"}).status_code == 201
    assert post("/api/people/alice/adapters", {"name": "assistant"}).status_code == 201


def test_it_requires_a_valid_bearer_key(client, post):
    assert post("/api/people", {"handle": "x"}, auth=False).status_code == 401
    response = client.post(
        "/api/people", data="{}", content_type="application/json", HTTP_AUTHORIZATION="Bearer mint_nope_nope"
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_api_keys_are_stored_hashed(key):
    stored = ApiKey.objects.get()
    assert key not in (stored.key_hash, stored.prefix)
    assert len(stored.key_hash) == 64


def test_a_malformed_jsonl_upload_gets_line_numbered_errors_and_creates_nothing(
    post, alice_adapter, settings
):
    from adapters_app.lifecycle.storage import get_store

    bad = FACTS + b'{"messages": [{"role": "user", "content": "hi"}]}\nnot json at all\n'
    response = post("/api/adapters/alice/assistant/datasets", raw=bad)
    assert response.status_code == 400
    details = response.json()["error"]["details"]
    assert [d["line"] for d in details] == [4, 5]
    assert "assistant" in details[0]["message"] and "JSON" in details[1]["message"]
    assert not Dataset.objects.exists()
    assert list(get_store().all_keys()) == []
    assert not AuditEvent.objects.filter(action="dataset.upload").exists()


def test_uploading_the_same_file_twice_returns_the_same_dataset(post, alice_adapter):
    first = post("/api/adapters/alice/assistant/datasets", raw=FACTS)
    again = post("/api/adapters/alice/assistant/datasets", raw=FACTS)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["rows"] == 3


def test_training_config_errors_name_each_field(post, alice_adapter):
    dataset = post("/api/adapters/alice/assistant/datasets", raw=FACTS).json()
    response = post(
        "/api/adapters/alice/assistant/train",
        {"dataset": dataset["id"], "config": {"rank": 0, "init": "magic", "colour": 1}},
    )
    assert response.status_code == 400
    assert set(response.json()["error"]["details"]) == {"rank", "init", "colour"}
    assert not Job.objects.exists()


def test_names_are_validated_and_duplicates_conflict(post):
    assert post("/api/people", {"handle": "Not Valid"}).status_code == 400
    assert post("/api/people", {"handle": "alice"}).status_code == 201
    assert post("/api/people", {"handle": "alice"}).status_code == 409


def test_unknown_objects_are_404s(client, key, post):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    assert client.get("/api/adapters/nobody/nothing", **headers).status_code == 404
    assert client.get("/api/jobs/999", **headers).status_code == 404
    assert post("/api/people/nobody/adapters", {"name": "x"}).status_code == 404


def test_promoting_an_unknown_revision_is_a_404(post, alice_adapter):
    response = post("/api/adapters/alice/assistant/promote", {"revision": "r7"})
    assert response.status_code == 404
    assert "no revision" in response.json()["error"]["message"]


def test_people_are_listed_with_keyset_pagination(client, key, post):
    for handle in ("cara", "abe", "bo"):
        post("/api/people", {"handle": handle})
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    page = client.get("/api/people?limit=2", **headers).json()
    assert [p["handle"] for p in page["data"]] == ["abe", "bo"]
    rest = client.get(f"/api/people?limit=2&after={page['next_after']}", **headers).json()
    assert [p["handle"] for p in rest["data"]] == ["cara"] and rest["next_after"] is None


def test_a_page_limit_below_one_is_refused_and_one_above_the_most_is_capped(client, key, post):
    for handle in ("cara", "abe", "bo"):
        post("/api/people", {"handle": handle})
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    for bad in ("0", "-5"):
        response = client.get(f"/api/people?limit={bad}", **headers)
        assert response.status_code == 400
        assert (
            response.json()["error"]["message"]
            == "limit must be at least 1 (at most 100 rows come back a page)"
        )
    assert len(client.get("/api/people?limit=100000", **headers).json()["data"]) == 3


def test_a_persons_adapters_are_listed_by_name_a_page_at_a_time(client, key, post, alice_adapter):
    for name in ("writer", "coder"):
        post("/api/people/alice/adapters", {"name": name})
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}

    page = client.get("/api/people/alice/adapters?limit=2", **headers).json()
    assert [a["name"] for a in page["data"]] == ["assistant", "coder"] and page["next_after"] == "coder"
    rest = client.get("/api/people/alice/adapters?limit=2&after=coder", **headers).json()
    assert [a["id"] for a in rest["data"]] == ["alice/writer"] and rest["next_after"] is None
    assert client.get("/api/people/nobody/adapters", **headers).status_code == 404


def test_a_persons_datasets_are_listed_oldest_first_and_filtered_by_purpose(client, key, post, alice_adapter):
    url = "/api/adapters/alice/assistant/datasets"
    post(f"{url}?name=facts", raw=FACTS)
    post(f"{url}?name=more", raw=OTHER_FACTS)
    held_out = post(f"{url}?name=held-out&purpose=eval", raw=FACTS.replace(b"dog", b"cat")).json()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}

    page = client.get(f"{url}?limit=2", **headers).json()
    assert [d["name"] for d in page["data"]] == ["facts", "more"]
    rest = client.get(f"{url}?limit=2&after={page['next_after']}", **headers).json()
    assert [d["id"] for d in rest["data"]] == [held_out["id"]] and rest["next_after"] is None
    evaluation = client.get(f"{url}?purpose=eval", **headers).json()["data"]
    assert [(d["name"], d["sha256"]) for d in evaluation] == [("held-out", held_out["sha256"])]

    for bad in ("purpose=test", "after=x", "limit=many"):
        response = client.get(f"{url}?{bad}", **headers)
        assert response.status_code == 400, bad
        assert response.json()["error"]["message"]


def test_jobs_are_listed_newest_first_filtered_by_adapter_state_and_kind(client, key, post, alice_adapter):
    from adapters_app.models import Adapter

    post("/api/people/alice/adapters", {"name": "writer"})
    assistant, writer = Adapter.objects.get(name="assistant"), Adapter.objects.get(name="writer")
    done = Job.objects.create(kind=Job.TRAIN, adapter=assistant, state=Job.SUCCEEDED, log="trained\n")
    running = Job.objects.create(kind=Job.EVALUATE, adapter=assistant, state=Job.RUNNING)
    elsewhere = Job.objects.create(kind=Job.TRAIN, adapter=writer, state=Job.QUEUED)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}

    def ids(query: str) -> list[int]:
        return [job["id"] for job in client.get(f"/api/jobs?{query}", **headers).json()["data"]]

    page = client.get("/api/jobs?limit=2", **headers).json()
    assert [job["id"] for job in page["data"]] == [elsewhere.pk, running.pk]
    assert page["next_after"] == running.pk and "log" not in page["data"][0]  # the job's URL has it
    assert ids(f"limit=2&after={running.pk}") == [done.pk]
    assert ids("adapter=alice/assistant") == [running.pk, done.pk]
    assert ids("state=running") == [running.pk] and ids("kind=train") == [elsewhere.pk, done.pk]

    for bad in ("state=sleeping", "kind=dance", "after=yesterday"):
        assert client.get(f"/api/jobs?{bad}", **headers).status_code == 400, bad
    assert client.get("/api/jobs?adapter=alice/nothing", **headers).status_code == 404


def test_the_openapi_document_describes_every_route(client):
    doc = client.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for route in (
        "/api/people",
        "/api/adapters/{person}/{adapter}/train",
        "/api/jobs",
        "/api/jobs/{job_id}",
        "/api/people/{person}/adapters",
        "/api/revisions/{person}/{adapter}/{rev}/download",
        "/v1/chat/completions",
    ):
        assert route in doc["paths"]


def test_an_unknown_model_is_a_404_in_openai_error_shape(post):
    response = post(
        "/v1/chat/completions", {"model": "ghost/assistant", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert "ghost/assistant" in error["message"]


def test_bad_sampling_parameters_are_refused_before_reaching_a_worker(post, alice_adapter):
    for body in ({"max_tokens": 0}, {"temperature": 9}, {"top_p": 0}, {"n": 99}, {"stop": 5}):
        response = post("/v1/completions", {"model": "mint-micro", "prompt": "hi", **body})
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_models_lists_bases_and_live_adapters(client, key, make_revision):
    from adapters_app.lifecycle.actors import Actor
    from adapters_app.lifecycle.pointer import promote

    promote(make_revision(), actor=Actor.system())
    listed = client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}").json()
    assert {m["id"] for m in listed["data"]} == {"mint-micro", "alice/assistant"}


def test_it_only_allows_the_documented_methods(client, key):
    response = client.delete("/api/people", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 405
    assert response["Allow"] == "GET, POST"
