"""Every answer under /api/ and /v1/ is JSON in its API's error shape: Django's own errors
(no route, a body too large, a crash) too, and text the database cannot hold is refused by
name instead of failing the query. Each of these was a 500 or an HTML page the fuzz tests
(tests/test_fuzz_api.py, tests/test_fuzz_properties.py) found."""

import json

import pytest
from django.test import Client

from adapters_app.models import ApiKey, Person
from tests.conftest import with_role

pytestmark = pytest.mark.django_db


@pytest.fixture
def key(django_user_model, micro_base):
    return ApiKey.issue(with_role(django_user_model.objects.create_user("ops"), "admin"))[1]


@pytest.fixture
def call(client, key):
    def call(method: str, path: str, body=None, *, raw: bytes | None = None):
        data = raw if raw is not None else json.dumps(body) if body is not None else None
        return getattr(client, method)(
            path, data=data, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
        )

    return call


def management_error(response, status: int) -> dict:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert isinstance(error["code"], str) and error["message"]
    return error


def openai_error(response, status: int) -> dict:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_a_path_no_route_serves_is_a_json_404_in_each_apis_shape(call):
    error = management_error(call("get", "/api/jobs/null"), 404)
    assert error == {"code": "unknown_route", "message": "no route GET /api/jobs/null"}
    error = openai_error(call("post", "/v1/embeddings", {}), 404)
    assert (error["code"], error["type"]) == ("unknown_route", "invalid_request_error")


def test_a_missing_model_is_still_model_not_found_under_v1(call):
    error = openai_error(call("post", "/v1/completions", {"model": "bob/x", "prompt": "Hi"}), 404)
    assert error["code"] == "model_not_found"


def test_the_console_keeps_djangos_own_404_page(admin_client):
    response = admin_client.get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_a_body_over_the_servers_limit_is_a_json_413(call, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    response = call("post", "/api/people", {"handle": "alice", "display_name": "A" * 2048})
    error = management_error(response, 413)
    assert error["code"] == "request_too_large"
    assert not Person.objects.exists()


def test_an_uncaught_exception_under_the_apis_is_a_json_500(key, monkeypatch):
    from adapters_app.lifecycle import people

    def crash(handle):
        raise RuntimeError("a bug")

    monkeypatch.setattr(people, "get_person", crash)
    client = Client(raise_request_exception=False)
    response = client.get("/api/people/alice/adapters", HTTP_AUTHORIZATION=f"Bearer {key}")
    error = management_error(response, 500)
    assert error["code"] == "server_error" and "a bug" not in error["message"]


@pytest.mark.parametrize(
    "path, body, where",
    [
        ("/api/people", {"handle": "alice", "display_name": "Al\x00ice"}, "display_name"),
        ("/api/people", {"handle": "alice", "display_name": "Al\ud800ice"}, "display_name"),
        ("/api/adapters/alice/assistant/train", {"dataset": "\x00"}, "dataset"),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": "\ud800"}]},
            "0.content",
        ),
    ],
)
def test_text_the_database_cannot_hold_is_refused_naming_where_it_is(call, adapter, path, body, where):
    response = call("post", path, raw=json.dumps(body).encode())
    error = response.json()["error"]
    assert response.status_code == 400, error
    assert where in error["message"] and "which is not text" in error["message"]


@pytest.mark.parametrize("url", ["/api/people?after=%00", "/api/people/a%00b/adapters", "/v1/models?x=%00"])
def test_a_url_holding_a_nul_character_is_a_400_not_a_failed_query(call, url):
    response = call("get", url)
    assert response.status_code == 400
    assert "NUL character" in response.json()["error"]["message"]


def test_a_handle_with_a_trailing_newline_is_not_a_handle(call):
    error = management_error(call("post", "/api/people", {"handle": "alice\n"}), 400)
    assert "not a valid name" in error["message"]
    assert not Person.objects.exists()


def test_a_dataset_named_by_a_superscript_digit_is_not_found(call, adapter, dataset):
    error = management_error(call("post", "/api/adapters/alice/assistant/train", {"dataset": "²"}), 404)
    assert error["message"] == "no dataset '²' for alice"


# 4,301 digits: more than int() converts. U+0661 is ARABIC-INDIC DIGIT ONE, which \d matched.
@pytest.mark.parametrize("ref", ["r" + "9" * 4301, "r\u0661"])
def test_a_revision_is_named_in_ascii_digits_of_a_sane_length(call, make_revision, ref):
    make_revision()
    response = call("get", f"/api/revisions/alice/assistant/{ref}/download")
    error = management_error(response, 400)
    assert "is not a revision reference" in error["message"]
