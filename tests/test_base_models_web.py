"""Base models over the API (/api/base-models) and in the console (/bases/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.utils import timezone

from adapters_app.lifecycle.base_models import IMPORTED_DIR
from adapters_app.lifecycle.people import create_adapter, create_person
from adapters_app.models import ApiKey, BaseModel, ResidencyStats, ResidentAdapter
from tests import tiny_models
from tests.conftest import with_role
from tests.test_workers import a_worker

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    model, tokenizer = tiny_models.tiny_llama()
    return tiny_models.write_gguf(model, tokenizer, tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


@pytest.fixture
def bases_dir(settings, tmp_path):
    settings.MINT_BASES_DIR = tmp_path / "bases"
    return Path(settings.MINT_BASES_DIR)


def registered_under(bases_dir):
    """The bases registered from this test's folder: the session's micro base (made by a
    session fixture, outside any test's transaction) lives elsewhere."""
    return BaseModel.objects.filter(path__startswith=str(bases_dir))


@pytest.fixture
def api(client, django_user_model, bases_dir):
    """call(method, path, body=None, role="admin"): the API as a user of that role."""
    keys = {}

    def call(method: str, path: str, body: dict | None = None, *, role: str = "admin"):
        if role not in keys:
            user = with_role(django_user_model.objects.create_user(f"api-{role}"), role)
            keys[role] = ApiKey.issue(user)[1]
        headers = {"HTTP_AUTHORIZATION": f"Bearer {keys[role]}"}
        if method == "GET":
            return client.get(path, **headers)
        return client.post(path, data=json.dumps(body or {}), content_type="application/json", **headers)

    return call


# --- API -----------------------------------------------------------------------------------


def test_an_admin_imports_a_gguf_over_the_api_and_a_repeat_is_a_200(api, tiny_gguf, bases_dir):
    created = api("POST", "/api/base-models", {"name": "tiny", "from": str(tiny_gguf)})
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["architecture"] == "LlamaForCausalLM"
    assert (body["context_length"], body["license"], body["serving_mode"]) == (256, "Apache-2.0", "batched")
    assert body["bytes_on_disk"] > 0 and body["adapters"] == 0
    again = api("POST", "/api/base-models", {"name": "tiny", "from": str(tiny_gguf)})
    assert again.status_code == 200
    assert again.json()["digest"] == body["digest"]
    assert registered_under(bases_dir).count() == 1


def test_an_operator_gets_a_403_and_nothing_is_imported(api, tiny_gguf, bases_dir):
    response = api("POST", "/api/base-models", {"name": "tiny", "from": str(tiny_gguf)}, role="operator")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert not registered_under(bases_dir).exists()
    assert not (bases_dir / IMPORTED_DIR).exists() or not any((bases_dir / IMPORTED_DIR).iterdir())


def test_it_refuses_a_bad_request_body_and_names_the_conflict(api, tiny_gguf):
    assert api("POST", "/api/base-models", {"from": str(tiny_gguf)}).status_code == 400
    both = api("POST", "/api/base-models", {"name": "x", "from": str(tiny_gguf), "package": "smollm2-135m"})
    assert both.status_code == 400 and "either" in both.json()["error"]["message"]
    assert api("POST", "/api/base-models", {"name": "x", "package": "gpt-5"}).status_code == 400
    missing = api("POST", "/api/base-models", {"name": "x", "from": "/nowhere/model.gguf"})
    assert missing.status_code == 400 and "does not exist" in missing.json()["error"]["message"]
    assert api("POST", "/api/base-models", {"name": "tiny", "from": str(tiny_gguf)}).status_code == 201
    twin = api("POST", "/api/base-models", {"name": "tiny-twin", "from": str(tiny_gguf)})
    assert twin.status_code == 409 and "already registered as 'tiny'" in twin.json()["error"]["message"]


def test_the_list_and_detail_show_each_base_with_its_serving_mode_and_adapters(api, micro_base, actor):
    create_adapter(create_person("alice", actor=actor), "assistant", base=micro_base, actor=actor)
    listed = api("GET", "/api/base-models", role="viewer")
    assert listed.status_code == 200
    [row] = listed.json()["data"]
    assert (row["name"], row["adapters"], row["serving_mode"]) == ("mint-micro", 1, "batched")
    assert row["digest"] == micro_base.digest and row["context_length"] == 1024
    detail = api("GET", "/api/base-models/mint-micro", role="viewer").json()
    assert detail["path"] == micro_base.path and detail["serving_reason"] == ""
    assert api("GET", "/api/base-models/nothing", role="viewer").status_code == 404


def test_the_openapi_document_describes_the_base_model_routes(client):
    doc = client.get("/api/openapi.json").json()
    assert {"get", "post"} <= set(doc["paths"]["/api/base-models"])
    assert "get" in doc["paths"]["/api/base-models/{name}"]
    assert "BaseModelDetail" in doc["components"]["schemas"]


# --- console -------------------------------------------------------------------------------


@pytest.fixture
def viewer(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("vera", password="pw-vera-12345"))
    return client


def test_the_bases_page_lists_each_base_with_what_is_loaded(viewer, micro_base, actor):
    create_adapter(create_person("alice", actor=actor), "assistant", base=micro_base, actor=actor)
    worker = a_worker("w1@host")
    ResidentAdapter.objects.create(
        worker=worker,
        pid=worker.pid,
        kind=ResidentAdapter.BASE,
        tier=ResidentAdapter.CPU,
        sha256=micro_base.digest,
        base=micro_base,
        bytes=123_456_789,
        loaded_at=timezone.now(),
    )
    page = viewer.get("/bases/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "mint-micro" in html and micro_base.digest[:12] in html
    assert "LlamaForCausalLM" in html and "1024 tokens" in html and "batched" in html
    assert "1 process · 117.7\xa0MB" in html
    assert 'href="/adapters/?base=mint-micro">1</a>' in html
    assert 'href="/bases/"' in viewer.get("/").content.decode()  # the nav link


def test_a_base_page_shows_its_facts_residency_and_adapters(viewer, micro_base, actor):
    adapter = create_adapter(create_person("alice", actor=actor), "assistant", base=micro_base, actor=actor)
    worker = a_worker("w1@host")
    ResidentAdapter.objects.create(
        worker=worker,
        pid=worker.pid,
        kind=ResidentAdapter.BASE,
        tier=ResidentAdapter.CPU,
        holder=ResidentAdapter.SERVING,
        sha256=micro_base.digest,
        base=micro_base,
        bytes=1000,
        loaded_at=timezone.now(),
    )
    ResidencyStats.objects.create(
        worker=worker,
        pid=worker.pid,
        base_digest=micro_base.digest,
        base=micro_base,
        tier=ResidencyStats.DEVICE,
        memory="cpu",
        budget_bytes=10_000,
        used_bytes=2_000,
        hits=7,
        misses=3,
        updated_at=timezone.now(),
    )
    html = viewer.get(micro_base.get_absolute_url()).content.decode()
    assert micro_base.digest in html and micro_base.path in html
    assert "w1@host" in html and "batched server" in html and "device (host memory)" in html
    assert f'href="{adapter.get_absolute_url()}"' in html
    assert "built by MinT" in html  # no import source: one of the project's own bases
    assert viewer.get("/bases/nothing/").status_code == 404


def test_an_imported_bases_page_shows_its_source_and_license(viewer, tiny_gguf, bases_dir, actor):
    from adapters_app.lifecycle.base_models import import_base_model

    base = import_base_model("tiny", tiny_gguf, actor=actor, license="MIT")
    html = viewer.get("/bases/tiny/").content.decode()
    assert str(tiny_gguf.resolve()) in html and "MIT" in html and "256 tokens" in html
    assert "108.0 k" in html  # 107,968 parameters, as people name a model's size
    assert base.digest in html


def test_an_admin_imports_from_the_console_and_an_operator_neither_sees_nor_may(
    client, django_user_model, tiny_gguf, bases_dir
):
    operator = with_role(django_user_model.objects.create_user("otto", password="pw-otto-123"), "operator")
    client.force_login(operator)
    assert 'action="/bases/import"' not in client.get("/bases/").content.decode()
    assert client.post("/bases/import", {"name": "tiny", "path": str(tiny_gguf)}).status_code == 403
    assert not registered_under(bases_dir).exists()

    admin = with_role(django_user_model.objects.create_user("ada", password="pw-ada-12345"), "admin")
    client.force_login(admin)
    assert 'action="/bases/import"' in client.get("/bases/").content.decode()
    refused = client.post("/bases/import", {"name": "tiny", "path": "/nowhere/x.gguf"}, follow=True)
    assert "does not exist" in refused.content.decode()
    assert not registered_under(bases_dir).exists()
    response = client.post("/bases/import", {"name": "tiny", "path": str(tiny_gguf), "license": "MIT"})
    base = BaseModel.objects.get(name="tiny")
    assert response.status_code == 302 and response["Location"] == base.get_absolute_url()
    assert base.license == "MIT"
