"""/api/ and /v1 are declared once: the generated document matches the routes served, and a
request that does not fit its schema is a 400 in each API's error shape, naming the field."""

import json
import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from adapters_app.models import ApiKey
from tests.conftest import with_role

# Not operations of either API: the document itself, and ninja's marker of where an API is
# mounted (it answers 404).
NOT_OPERATIONS = {"openapi", "api-root"}
SAMPLE_ARGUMENT = {"int": "1", "str": "x"}


def served_routes() -> dict[str, str]:
    """Every route under /api/ and /v1/ in the URL resolver: {document path: a URL that hits it}."""
    routes = {}

    def walk(patterns, prefix: str):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern) and pattern.name not in NOT_OPERATIONS:
                route = prefix + str(pattern.pattern)
                if route.startswith(("api/", "v1/")):
                    document_path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
                    url = "/" + re.sub(
                        r"<(?:(\w+):)?\w+>", lambda m: SAMPLE_ARGUMENT[m.group(1) or "str"], route
                    )
                    routes[document_path] = url

    walk(get_resolver().url_patterns, "")
    return routes


def test_the_document_describes_every_route_and_method_served_and_nothing_else(client):
    """Each route says which methods it serves in the Allow header of a 405 (sent before any
    key is checked); those must be exactly the document's operations."""
    document = client.get("/api/openapi.json").json()
    served = set()
    for document_path, url in served_routes().items():
        response = client.generic("PROPFIND", url)
        assert response.status_code == 405, url
        served |= {(document_path, method.strip().lower()) for method in response["Allow"].split(",")}
    documented = {(path, method) for path, operations in document["paths"].items() for method in operations}
    assert served == documented
    assert {("/api/people", "post"), ("/api/jobs/{job_id}", "get"), ("/v1/chat/completions", "post")} <= (
        served
    )


def test_every_documented_operation_takes_an_api_key_and_documents_its_errors(client):
    document = client.get("/api/openapi.json").json()
    assert document["components"]["securitySchemes"]["ApiKeyBearer"]["scheme"] == "bearer"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["security"] == [{"ApiKeyBearer": []}], (path, method)
            assert "401" in operation["responses"], (path, method)
            assert "429" in operation["responses"], (path, method)  # every key has limits


@pytest.fixture
def post(client, django_user_model, micro_base):
    _, key = ApiKey.issue(with_role(django_user_model.objects.create_user("ops"), "admin"))

    def post(path: str, body: dict):
        return client.post(
            path, data=json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
        )

    return post


@pytest.mark.django_db
def test_a_body_that_does_not_fit_its_schema_is_a_400_naming_the_field(post):
    assert post("/api/people", {"handle": "alice"}).status_code == 201
    assert post("/api/people/alice/adapters", {"name": "assistant"}).status_code == 201

    response = post("/api/adapters/alice/assistant/gate", {"auto_promote": "yes"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert list(error["details"]) == ["auto_promote"]
    assert "auto_promote" in error["message"]


@pytest.mark.django_db
def test_v1_names_the_field_in_openais_error_object(post):
    chat = {"model": "mint-micro", "messages": [{"role": "robot", "content": "hi"}]}
    response = post("/v1/chat/completions", chat)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "messages.0.role" in error["message"]


@pytest.mark.django_db
def test_a_body_that_is_not_a_json_object_is_refused_by_name(post, client):
    response = post("/api/people", ["alice"])
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "request body must be a JSON object"


@pytest.mark.django_db
def test_responses_render_domain_objects_in_the_shapes_clients_have_always_had(
    client, django_user_model, make_revision, dataset, actor, micro_base
):
    from adapters_app.lifecycle.pointer import promote
    from adapters_app.models import Job

    revision = make_revision()
    promote(revision, actor=actor, reason="first")
    adapter = revision.adapter
    job = Job.objects.create(kind=Job.TRAIN, adapter=adapter, dataset=dataset, log="one\ntwo\n")
    _, key = ApiKey.issue(with_role(django_user_model.objects.create_user("vera"), "viewer"))
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}

    detail = client.get(f"/api/adapters/{adapter.handle}", **headers).json()
    assert (detail["id"], detail["live"], detail["base"]) == (adapter.handle, "r1", micro_base.name)
    assert detail["created_at"] == adapter.created_at.isoformat()  # microseconds and +00:00, as ever
    [event] = detail["pointer_history"]
    assert (event["action"], event["from"], event["to"], event["reason"]) == ("promote", None, "r1", "first")
    [listed] = detail["revisions"]
    assert listed["provenance"]["dataset_sha256"] == dataset.sha256 and listed["parent"] is None
    assert set(detail["gate"]) == {"eval_dataset", "thresholds", "auto_promote"}

    listed_job = client.get("/api/jobs", **headers).json()["data"][0]
    assert listed_job["dataset"] == dataset.pk and "log" not in listed_job
    assert "loss" not in listed_job["progress"]
    full_job = client.get(f"/api/jobs/{job.pk}", **headers).json()
    assert full_job["log"] == ["one", "two"] and full_job["progress"]["loss"] == []
