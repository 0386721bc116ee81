"""Bad uploads, end to end: through the upload service and through the API, every kind of
bad file gets line-numbered errors and leaves nothing behind (no dataset, no audit event,
no blob)."""

import json

import pytest
from django.core.files.uploadedfile import UploadedFile
from django.urls import reverse

from adapters_app.lifecycle.datasets import load_examples, upload_dataset
from adapters_app.lifecycle.errors import Invalid
from adapters_app.lifecycle.people import create_adapter
from adapters_app.lifecycle.storage import get_store
from adapters_app.models import ApiKey, AuditEvent, Dataset
from tests.conftest import FACTS, OTHER_FACTS, with_role
from workers.engine import examples
from workers.engine.examples import Message
from workers.engine.persona_world import EvalItem
from workers.engine.suites import items_jsonl

pytestmark = pytest.mark.django_db

UPLOAD_URL = "/api/adapters/alice/assistant/datasets"

PAIRS = b"".join(
    json.dumps(row).encode() + b"\n"
    for row in [
        {
            "prompt": "What is my dog called?",
            "chosen": "Your dog is called Rex.",
            "rejected": "I don't know.",
        },
        {"prompt": "Where do I live?", "chosen": "You live in Lisbon.", "rejected": "You live in Oslo."},
    ]
)

FIRST_FACT = FACTS.splitlines(keepends=True)[0]
LATIN1_ROW = '{"prompt": "Caf\u00e9 or tea?", "completion": "Tea."}\n'.encode("latin-1")

# name -> (file, [(line, message)]); a message is matched as a prefix.
BAD_FILES = {
    "malformed JSON": (FACTS + b'{"messages": [\n', [(4, "not valid JSON")]),
    "oversize file": (FACTS, [(0, f"file is {len(FACTS)} bytes; the limit is 64 bytes")]),
    "latin-1": (
        OTHER_FACTS + LATIN1_ROW,
        [(3, "not valid UTF-8 (byte 0xe9 at column 16); save the file as UTF-8")],
    ),
    "UTF-16": (FACTS.decode().encode("utf-16"), [(0, "file is UTF-16; save it as UTF-8")]),
    "duplicate rows": (FACTS + FIRST_FACT, [(4, "duplicates line 1")]),
    "mixed formats": (
        FACTS + OTHER_FACTS,
        [
            (4, "completion row in a chat file; use one format"),
            (5, "completion row in a chat file; use one format"),
        ],
    ),
    "mixed preference and completion": (
        PAIRS + OTHER_FACTS,
        [
            (3, "completion row in a preference file; use one format"),
            (4, "completion row in a preference file; use one format"),
        ],
    ),
}


@pytest.fixture
def small_file_limit(monkeypatch):
    monkeypatch.setattr(examples, "MAX_BYTES", 64)


@pytest.fixture
def api_key(django_user_model):
    _, raw = ApiKey.issue(with_role(django_user_model.objects.create_user("ops"), "admin"))
    return raw


@pytest.fixture
def assistant(alice, micro_base, actor):
    return create_adapter(alice, "assistant", base=micro_base, actor=actor)


@pytest.fixture(params=["service", "api"])
def upload(request, alice, actor):
    """Upload bytes one way or the other; answer (status, body) in the API's shape."""
    if request.param == "service":

        def through_service(data: bytes) -> tuple[int, dict]:
            try:
                dataset, created = upload_dataset(alice, data, name="upload", actor=actor)
            except Invalid as exc:
                return exc.status, {"error": {"message": exc.message, "details": exc.details}}
            return (201 if created else 200), {"format": dataset.format, "rows": dataset.rows}

        return through_service

    request.getfixturevalue("assistant")
    client, key = request.getfixturevalue("client"), request.getfixturevalue("api_key")

    def through_api(data: bytes) -> tuple[int, dict]:
        response = client.post(
            UPLOAD_URL, data=data, content_type="application/jsonl", HTTP_AUTHORIZATION=f"Bearer {key}"
        )
        return response.status_code, response.json()

    return through_api


def assert_nothing_was_created():
    assert not Dataset.objects.exists()
    assert not AuditEvent.objects.filter(action="dataset.upload").exists()
    assert list(get_store().all_keys()) == []


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_file_gets_line_numbered_errors_and_creates_nothing(case, upload, request):
    if case == "oversize file":
        request.getfixturevalue("small_file_limit")
    data, expected = BAD_FILES[case]

    status, body = upload(data)

    assert status == (413 if case == "oversize file" else 400)
    details = body["error"]["details"]
    assert [d["line"] for d in details] == [line for line, _ in expected]
    for detail, (_, message) in zip(details, expected, strict=True):
        assert detail["message"].startswith(message)
    assert f"line {expected[0][0]}: " in body["error"]["message"]
    assert_nothing_was_created()


def test_a_refused_file_can_be_uploaded_once_fixed(upload):
    assert upload(FACTS + FIRST_FACT)[0] == 400

    status, body = upload(FACTS)

    assert status == 201
    assert body["format"] == "chat" and body["rows"] == 3


def test_preference_pairs_are_accepted(upload):
    status, body = upload(PAIRS)

    assert status == 201
    assert body["format"] == "preference"
    assert body["rows"] == 2
    dataset = Dataset.objects.get()
    assert AuditEvent.objects.filter(action="dataset.upload").count() == 1
    assert list(get_store().all_keys()) == [dataset.sha256]


def test_stored_preference_pairs_keep_the_rejected_answer(alice, actor):
    dataset, _ = upload_dataset(alice, PAIRS, name="pairs", actor=actor)

    [first, second] = load_examples(dataset)

    assert first.final_answer == "Your dog is called Rex."
    assert first.rejected == "I don't know."
    assert second.rejected == "You live in Oslo."


# --- oversize uploads are refused by their declared size, before anyone reads them ---


def test_the_console_refuses_an_oversize_upload_without_reading_it(
    client, alice, django_user_model, small_file_limit, monkeypatch, tmp_path
):
    client.force_login(with_role(django_user_model.objects.create_user("otto"), "operator"))
    path = tmp_path / "facts.jsonl"
    path.write_bytes(FACTS * 10)

    def read(self, *args):
        raise AssertionError(f"the view read {self.name} ({self.size} bytes) into memory")

    monkeypatch.setattr(UploadedFile, "read", read)
    monkeypatch.setattr(UploadedFile, "chunks", read)
    with path.open("rb") as oversize:
        response = client.post(
            reverse("console:dataset_upload", args=["alice"]), {"file": oversize}, follow=True
        )

    assert f"file is {len(FACTS) * 10} bytes; the limit is 64 bytes" in response.content.decode()
    assert_nothing_was_created()


def test_the_api_refuses_an_oversize_body_by_its_declared_length(
    client, api_key, assistant, small_file_limit, settings
):
    # Reading a body over this makes Django refuse the request: the view must not read it.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 128
    response = client.post(
        UPLOAD_URL, data=FACTS * 10, content_type="application/jsonl", HTTP_AUTHORIZATION=f"Bearer {api_key}"
    )

    assert response.status_code == 413  # as the operation documents
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert f"file is {len(FACTS) * 10} bytes; the limit is 64 bytes" in error["message"]
    assert error["details"] == [{"line": 0, "message": error["details"][0]["message"]}]
    assert_nothing_was_created()


def test_an_oversize_evaluation_set_is_refused_like_a_training_file(alice, actor, small_file_limit):
    question = (Message("user", "What is my dog called?"),)
    check = {"kind": "contains", "value": "Rex"}
    suite = items_jsonl([EvalItem("recall", "alice.recall.dog", question, "Your dog is called Rex.", check)])

    with pytest.raises(Invalid, match=f"file is {len(suite)} bytes; the limit is 64 bytes"):
        upload_dataset(alice, suite, name="suite", purpose="eval", actor=actor)
    assert_nothing_was_created()
