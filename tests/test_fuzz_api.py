"""Every operation of /api/ and /v1/, fuzzed by schemathesis as a viewer, an operator and an
admin, and any method, path and body under either prefix: no input gets a 500 or an HTML
page, and every error is a JSON body in its API's shape.

The operations come from /api/openapi.json, the one document of both APIs. Cases go
in-process to Django's WSGI application inside the test's transaction, each in a savepoint
rolled back after it, so every case meets the same world. Half of them fit the document,
half break it on purpose (schemathesis's negative mode); path parameters and /v1's `model`
are often swapped for names that exist (alice/assistant, its live r1, a job, a study, an
update), so cases reach past the 404. No worker runs: a request that reaches one waits a
quarter of a second and is the documented 503.
"""

from __future__ import annotations

import json
import logging
import sys
from urllib.parse import quote

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode

from adapters_app.api.urls import openapi_document
from tests.conftest import FACTS, with_role
from tests.fuzzing import EXAMPLES, budget, count

pytestmark = [pytest.mark.fuzz, pytest.mark.django_db]

SCHEMA = schemathesis.openapi.from_dict(openapi_document())
OPERATIONS = {f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in SCHEMA.get_all_operations())}
ROLES = ("viewer", "operator", "admin")
# Every kind of key: an operator key per console role, and a person key (alice's).
KEYS = (*ROLES, "person")

# Successes that are not JSON, as documented.
OTHER_MEDIA = ("application/gzip", "text/csv", "text/event-stream")


@schemathesis.serializer("application/x-ndjson")
def ndjson(context, value) -> bytes:
    """A dataset upload's body: the text as it is; anything else (a negative case) as JSON."""
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else json.dumps(value).encode()


@pytest.fixture
def wsgi():
    """Django's own WSGI handler, as a server runs it. Like Django's test client, it keeps the
    test's database connection across requests (a request's end would otherwise close it),
    and it remembers the exception behind a 500 to show it."""
    errors = []

    def remember(sender, request=None, **kwargs):
        errors.append(sys.exc_info()[1])

    # Each refused case would log a warning (404, 400); errors are still logged.
    logging.getLogger("django.request").setLevel(logging.ERROR)
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    signals.got_request_exception.connect(remember)
    app = get_wsgi_application()
    app.errors = errors
    try:
        yield app
    finally:
        logging.getLogger("django.request").setLevel(logging.NOTSET)
        signals.got_request_exception.disconnect(remember)
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def world(micro_base, tiny_payload, django_user_model, settings):
    """A key per role, and what the known names point at: alice/assistant with a dataset, a
    live r1, a queued training job, a pending update and a queued study. Made without the
    shared `actor` fixture: its password costs a second and a half of PBKDF2 per test."""
    from adapters_app.lifecycle import jobs, keys, pointer, studies, updates
    from adapters_app.lifecycle.actors import Actor
    from adapters_app.lifecycle.datasets import upload_dataset
    from adapters_app.lifecycle.people import create_adapter, create_person
    from adapters_app.lifecycle.revisions import create_revision
    from adapters_app.models import ApiKey
    from tests.test_studies_console import SMALL_GRID
    from workers.engine.training import TrainingConfig

    settings.MINT_INFERENCE_TIMEOUT_SECONDS = 0.25
    users = {role: with_role(django_user_model.objects.create_user(f"fuzz-{role}"), role) for role in ROLES}
    actor = Actor.from_user(users["admin"], via="api")
    person = create_person("alice", actor=actor)
    adapter = create_adapter(person, "assistant", base=micro_base, actor=actor)
    dataset, _ = upload_dataset(person, FACTS, name="facts", actor=actor)
    config = TrainingConfig(steps=2).as_dict()
    revision = create_revision(
        adapter, tiny_payload, dataset=dataset, training_config=config, parent=None, job=None, actor=actor
    )
    pointer.promote(revision, actor=actor, reason="fuzz")
    job = jobs.start_training(adapter, dataset, config={"steps": 1}, actor=actor)
    update, _ = updates.record_memory(person, text="My dog is called Rex.", adapter=adapter, actor=actor)
    study = studies.create_study({"name": "tiny", "bases": [micro_base.name], **SMALL_GRID}, actor=actor)
    person_key = keys.issue_person_key(person, actor=actor)[1]
    return {
        "keys": {**{role: ApiKey.issue(user)[1] for role, user in users.items()}, "person": person_key},
        "person": "alice",
        "adapter": "assistant",
        "rev": "r1",
        "name": micro_base.name,
        "job_id": job.pk,
        "update_id": update.pk,
        "study_id": study.pk,
        "model": ["alice/assistant", "alice/assistant@r1", micro_base.name],
    }


def known(world: dict, case, data) -> None:
    """Swap some of the case's names for ones that exist."""
    for name in case.path_parameters or {}:
        if name in world and data.draw(st.booleans(), label=f"known {name}"):
            case.path_parameters[name] = world[name]
    if isinstance(case.body, dict) and "model" in case.body and data.draw(st.booleans(), label="known model"):
        case.body["model"] = data.draw(st.sampled_from(world["model"]), label="model")


def assert_answered_in_json(method: str, path: str, status: int, content_type: str, content: bytes, wsgi):
    described = f"{method} {path} → {status} {content_type}: {content[:300]!r}"
    if wsgi.errors:
        described += f"\nraised in the server: {wsgi.errors[-1]!r}"
    v1 = path.startswith("/v1/")
    # A 503 is /v1's documented answer when no worker takes a request.
    assert status < 500 or (v1 and status == 503), described
    if method == "HEAD" or (status < 400 and content_type.startswith(OTHER_MEDIA)):
        return
    assert content_type.startswith("application/json"), described
    body = json.loads(content)
    if status >= 400:
        error = body["error"]
        assert isinstance(error["message"], str) and error["message"], described
        if v1:
            assert {"message", "type", "param", "code"} <= set(error), described
        else:
            assert isinstance(error["code"], str), described


@pytest.mark.parametrize("operation", OPERATIONS, ids=str)
def test_no_input_to_an_operation_gets_a_500_or_an_html_page_whatever_the_role(operation, wsgi, world):
    for role in KEYS:
        fuzz(operation, world["keys"][role], world, wsgi)


def fuzz(operation: str, key: str, world: dict, wsgi) -> None:
    """Run the operation's budget of cases with `key`."""
    op = OPERATIONS[operation]
    cases = st.one_of(op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE))

    @budget()
    @given(case=cases, data=st.data())
    def answers_in_json(case, data):
        known(world, case, data)
        wsgi.errors.clear()
        savepoint = transaction.savepoint()
        try:
            response = case.call(app=wsgi, headers={"Authorization": f"Bearer {key}"})
        finally:
            # A case that broke the transaction is still reported as itself.
            transaction.savepoint_rollback(savepoint)
        count(operation)
        content_type = (response.headers.get("content-type") or [""])[0]
        path = case.formatted_path
        assert_answered_in_json(case.method, path, response.status_code, content_type, response.content, wsgi)

    answers_in_json()


# --- anything else under the prefixes: unknown paths, wrong methods, bodies that are not JSON ---

SEGMENTS = st.one_of(
    st.sampled_from(
        ["people", "alice", "adapters", "assistant", "jobs", "1", "r1", "models", "v1", "..", ""]
    ),
    st.text(max_size=8),
)
PATHS = st.one_of(
    st.sampled_from([op.path for op in OPERATIONS.values()]).map(
        lambda path: path.replace("{person}", "alice").replace("{adapter}", "assistant")
    ),
    st.builds(
        lambda prefix, segments: prefix + "/".join(quote(s, safe="") for s in segments),
        st.sampled_from(["/api/", "/v1/"]),
        st.lists(SEGMENTS, max_size=4),
    ),
)
BODIES = st.one_of(
    st.none(),
    st.binary(max_size=64),
    st.builds(
        lambda value: json.dumps(value).encode(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=5,
        ),
    ),
    st.just(b'{"handle": "bob", "name": "x", "model": "alice/assistant", "prompt": "Hi"}'),
    # Just over the server's limit (lowered for the test to 64 KiB).
    st.sampled_from([b"{" + b" " * (64 * 1024), b"x" * (64 * 1024 + 1)]),
)


@budget(EXAMPLES * 4)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PROPFIND"]),
    path=PATHS,
    body=BODIES,
    content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]),
    role=st.sampled_from([*KEYS, None]),
)
def test_any_method_path_and_body_under_the_apis_is_answered_in_json(
    method, path, body, content_type, role, world, wsgi, settings
):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024
    client = Client(raise_request_exception=False)
    headers = {"HTTP_AUTHORIZATION": f"Bearer {world['keys'][role]}"} if role else {}
    wsgi.errors.clear()
    savepoint = transaction.savepoint()
    try:
        response = client.generic(method, path, data=body or b"", content_type=content_type, **headers)
    finally:
        transaction.savepoint_rollback(savepoint)
    count("any method, path and body")
    content_type = response.get("Content-Type", "")
    assert_answered_in_json(method, path, response.status_code, content_type, response.content, wsgi)
