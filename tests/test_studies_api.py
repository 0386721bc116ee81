"""The footprint study API: launch, validation, roles, cancel/resume, listing, results."""

import csv
import io

import pytest

from adapters_app.lifecycle.studies import RESULT_COLUMNS
from adapters_app.models import ApiKey, AuditEvent, BaseModel, Job, Study, StudyCell
from tests.conftest import with_role
from tests.test_studies_console import SMALL_GRID, finish, record_runs

pytestmark = pytest.mark.django_db


@pytest.fixture
def small(micro_base) -> dict:
    return {"name": "tiny", "bases": [micro_base.name], **SMALL_GRID}


@pytest.fixture
def viewer_call(client, django_user_model):
    _, raw = ApiKey.issue(with_role(django_user_model.objects.create_user("vera"), "viewer"))

    def call(method: str, path: str, body=None):
        return getattr(client, method)(
            path, data=body or {}, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {raw}"
        )

    return call


def test_posting_a_study_writes_its_cells_and_a_queued_study_job_for_each(api, small):
    created = api("post", "/api/studies", small, expect=201)
    study = Study.objects.get()
    assert created["study"]["id"] == study.pk and created["study"]["state"] == "running"
    assert created["study"]["runs_total"] == 8 and created["study"]["runs_done"] == 0
    assert created["study"]["alpha_per_rank"] == 2
    assert [(c["rank"], c["init"], c["state"]) for c in created["cells"]] == [
        (1, "default", "queued"),
        (4, "default", "queued"),
        (1, "tail", "queued"),
        (4, "tail", "queued"),
    ]
    jobs = Job.objects.filter(pk__in=[c["job"] for c in created["cells"]])
    assert jobs.count() == 4
    assert {(j.kind, j.state, j.adapter_id, j.params["study"]) for j in jobs} == {
        (Job.STUDY, Job.QUEUED, None, study.pk)
    }
    assert AuditEvent.objects.filter(action="study.create", actor_name="ops", via="api").count() == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"bases": ["ghost-base"]}, "bases"),
        ({"ranks": [0, 4]}, "ranks"),
        ({"inits": ["default", "lora-plus"]}, "inits"),
        (
            {
                "ranks": [1, 2, 4, 8, 16, 32],
                "targets": ["attention", "all-linear"],
                "inits": ["default", "pissa", "olora", "tail"],
                "seeds": 10,
                "people": 20,
            },
            "grid",
        ),
        ({"training": {"rank": 8}}, "training"),
        ({"training": {"steps": 0}}, "training"),
        ({"training_per_base": {"ghost-base": {"learning_rate": 0.01}}}, "training_per_base"),
        ({"training_per_base": {"mint-micro": {"rank": 8}}}, "training_per_base"),
        ({"training_per_base": {"mint-micro": {"learning_rate": -1}}}, "training_per_base"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_an_invalid_study_gets_field_errors_and_writes_nothing(api, small, change, field):
    body = api("post", "/api/studies", {**small, **change}, expect=400)
    assert body["error"]["code"] == "invalid_request"
    assert field in body["error"]["details"]
    assert Study.objects.count() == 0 and StudyCell.objects.count() == 0 and Job.objects.count() == 0


def test_a_viewer_key_may_read_studies_but_not_launch_cancel_or_resume_them(api, viewer_call, small):
    study_id = api("post", "/api/studies", small, expect=201)["study"]["id"]
    assert viewer_call("get", f"/api/studies/{study_id}").status_code == 200
    for method, path in [
        ("post", "/api/studies"),
        ("post", f"/api/studies/{study_id}/cancel"),
        ("post", f"/api/studies/{study_id}/resume"),
    ]:
        response = viewer_call(method, path, small)
        assert response.status_code == 403, path
        assert response.json()["error"]["code"] == "forbidden"
    assert Study.objects.count() == 1 and not Job.objects.filter(state=Job.CANCELLED).exists()


def test_cancel_then_resume(api, small):
    study_id = api("post", "/api/studies", small, expect=201)["study"]["id"]
    cancelled = api("post", f"/api/studies/{study_id}/cancel")
    assert cancelled["cancelled_cells"] == 4 and cancelled["study"]["state"] == "cancelled"
    assert {c["state"] for c in cancelled["cells"]} == {"cancelled"}
    assert api("post", f"/api/studies/{study_id}/cancel", expect=409)["error"]["code"] == "conflict"

    resumed = api("post", f"/api/studies/{study_id}/resume", expect=202)
    assert resumed["resumed_cells"] == 4 and resumed["study"]["state"] == "running"
    assert {c["job"] for c in resumed["cells"]}.isdisjoint({c["job"] for c in cancelled["cells"]})
    assert api("post", f"/api/studies/{study_id}/resume", expect=409)["error"]["code"] == "conflict"


def test_studies_are_listed_newest_first_with_keyset_pagination(api, small):
    ids = [
        api("post", "/api/studies", {**small, "name": f"s{i}"}, expect=201)["study"]["id"] for i in range(3)
    ]
    page = api("get", "/api/studies?limit=2")
    assert [s["id"] for s in page["data"]] == ids[::-1][:2]
    assert page["data"][0]["state"] == "running" and page["data"][0]["runs_total"] == 8
    rest = api("get", f"/api/studies?limit=2&after={page['next_after']}")
    assert [s["id"] for s in rest["data"]] == [ids[0]] and rest["next_after"] is None
    api("get", "/api/studies?after=abc", expect=400)


def test_the_detail_reports_progress_reliability_and_the_recommendation(api, small):
    study_id = api("post", "/api/studies", small, expect=201)["study"]["id"]
    finish(Study.objects.get(pk=study_id))
    detail = api("get", f"/api/studies/{study_id}")
    assert detail["study"]["state"] == "finished" and detail["study"]["runs_done"] == 8
    assert detail["study"]["cells"] == {"done": 4}
    [recommendation] = detail["study"]["recommendations"]
    assert recommendation["chosen"]["rank"] == 4 and recommendation["chosen"]["init"] == "default"
    assert recommendation["chosen"]["pass_rate"] == 1.0
    rank_one = [c for c in detail["cells"] if c["rank"] == 1]
    assert {c["reliability"]["pass_rate"] for c in rank_one} == {0.5}
    assert all(c["payload_bytes"] and c["reliability"]["runs"] == 2 for c in detail["cells"])


def test_results_come_as_json_or_streamed_csv_with_each_runs_recipe(api, small):
    study_id = api("post", "/api/studies", {**small, "training": {"learning_rate": 0.001}}, expect=201)[
        "study"
    ]["id"]
    finish(Study.objects.get(pk=study_id))
    results = api("get", f"/api/studies/{study_id}/results")
    assert len(results["runs"]) == 8 and len(results["cells"]) == 4
    assert set(results["runs"][0]) == set(RESULT_COLUMNS)
    response = api("get", f"/api/studies/{study_id}/results?format=csv")
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(rows) == 8 and tuple(rows[0]) == RESULT_COLUMNS
    assert {(row["rank"], row["learning_rate"], row["alpha"]) for row in rows} == {
        ("1", "0.001", "2"),
        ("4", "0.001", "8"),
    }
    api("get", f"/api/studies/{study_id}/results?format=xml", expect=400)


def test_an_unknown_study_is_a_404(api):
    assert api("get", "/api/studies/999", expect=404)["error"]["code"] == "not_found"
    api("post", "/api/studies/999/cancel", expect=404)
    api("get", "/api/studies/999/results", expect=404)


def test_the_openapi_document_describes_the_study_routes(client):
    doc = client.get("/api/openapi.json").json()
    for route in (
        "/api/studies",
        "/api/studies/{study_id}",
        "/api/studies/{study_id}/cancel",
        "/api/studies/{study_id}/resume",
        "/api/studies/{study_id}/results",
    ):
        assert route in doc["paths"], route
    assert {"Study", "StudyCell", "StudyDetail", "StudyRequest"} <= set(doc["components"]["schemas"])


def test_a_learning_rate_set_for_one_base_trains_only_that_bases_cells(api, small):
    # Validation needs only the name registered; no cell of this base is trained here.
    BaseModel.objects.create(name="pretrained", path="/models/pretrained", digest="p" * 64, parameters=1000)
    body = {
        **small,
        "bases": ["mint-micro", "pretrained"],
        "ranks": [4],
        "inits": ["default"],
        "training": {"learning_rate": 0.01},
        "training_per_base": {"pretrained": {"learning_rate": 0.0005}},
    }
    study_id = api("post", "/api/studies", body, expect=201)["study"]["id"]
    for cell in StudyCell.objects.filter(study_id=study_id):
        record_runs(cell, [True, True], payload_bytes=4000)
    detail = api("get", f"/api/studies/{study_id}")
    assert detail["study"]["training_per_base"] == {"pretrained": {"learning_rate": 0.0005}}
    rows = api("get", f"/api/studies/{study_id}/results")["runs"]
    assert {(row["base"], row["learning_rate"]) for row in rows} == {
        ("mint-micro", 0.01),
        ("pretrained", 0.0005),
    }
