"""The web server and beat as production runs them: deploy/Procfile's lines (gunicorn with
deploy/gunicorn.conf.py after collectstatic; celery beat), DEBUG off and the documented
production settings, on the test database and Redis, with the session's real worker
answering /v1 and running the sweeps. Requests come as from the TLS proxy in front
(X-Forwarded-Proto: https)."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.inference import redis_client
from adapters_app.lifecycle.pointer import promote
from adapters_app.management import processes
from adapters_app.models import ApiKey, Job
from tests.conftest import wait_for_job, wait_until, with_role
from tests.test_deploy_files import procfile
from tests.test_settings import PRODUCTION

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

COMPLETIONS = "/v1/chat/completions"
FROM_THE_PROXY = {"X-Forwarded-Proto": "https"}
TEN_YEARS = 315360000  # whitenoise's max-age for a file whose name carries its hash


class Gunicorn:
    def __init__(self, port: int, process: subprocess.Popen, log_path):
        self.port, self.process, self.log_path = port, process, log_path

    def request(self, method: str, path: str, *, body=None, headers=None) -> http.client.HTTPResponse:
        """The response with its body unread: a stream is read as it arrives."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = json.dumps(body) if body is not None else None
        sent = {**FROM_THE_PROXY, **({"Content-Type": "application/json"} if data else {}), **(headers or {})}
        connection.request(method, path, body=data, headers=sent)
        return connection.getresponse()

    def get(self, path: str, **headers) -> tuple[http.client.HTTPResponse, bytes]:
        response = self.request("GET", path, headers=headers)
        return response, response.read()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def production_env(**extra) -> dict[str, str]:
    """What a process of the Procfile gets: the production settings, the session's database,
    Redis, store and queue, and this virtualenv's commands (gunicorn, celery) on its PATH."""
    return {
        **PRODUCTION,
        "ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SETTINGS_MODULE": "mintweb.settings",
        "DATABASE_URL": processes.database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "MINT_STORE": settings.MINT_STORE,
        "MINT_QUEUE": settings.CELERY_TASK_DEFAULT_QUEUE,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        **extra,
    }


def start(process_type: str, log_path: Path, **env) -> subprocess.Popen:
    """The Procfile's line for `process_type`, run by a shell as Procfile runners do."""
    return processes.spawn(["bash", "-c", procfile()[process_type]], log_path, production_env(**env))


@pytest.fixture(scope="module")
def gunicorn(django_db_setup, redis_server, celery_worker_process, tmp_path_factory):
    """The Procfile's web line on a free port: static files collected into its own var folder,
    then one gunicorn process of four threads (one, so that a request finds it warm: a
    process's first /v1 request imports for a second or more)."""
    var = tmp_path_factory.mktemp("web-var")
    port = processes.free_port()
    process = start(
        "web",
        var / "web.log",
        MINT_VAR_DIR=str(var),
        MINT_WEB_BIND=f"127.0.0.1:{port}",
        MINT_WEB_WORKERS="1",
        MINT_WEB_THREADS="4",
    )
    server = Gunicorn(port, process, var / "web.log")

    def answers() -> bool:
        """gunicorn answers /login/"""
        assert process.poll() is None, f"the web process exited:\n{server.log()}"
        try:
            return server.get("/login/")[0].status == 200
        except OSError:
            return False

    wait_until(answers, timeout=90)
    yield server
    processes.stop(process)


@pytest.fixture
def operator_key(django_user_model):
    user = with_role(django_user_model.objects.create_user("ops"), "operator")
    return ApiKey.issue(user, concurrent_streams=1)[1]


@pytest.fixture
def alices_live_adapter(make_revision):
    promote(make_revision(), actor=Actor.system())
    return "alice/assistant"


def chat(model: str, max_tokens: int) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me about my dog."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def next_event(response: http.client.HTTPResponse) -> str:
    """The next server-sent event's data, read off the socket line by line."""
    data = []
    while line := response.readline():
        if line == b"\n":
            return "\n".join(data)
        assert line.startswith(b"data: "), line
        data.append(line.decode().removeprefix("data: ").rstrip("\n"))
    raise AssertionError(f"the stream ended inside an event: {data}")


def test_a_chat_stream_arrives_event_by_event_while_it_is_generated(
    gunicorn, operator_key, alices_live_adapter
):
    auth = {"Authorization": f"Bearer {operator_key}"}
    stream = gunicorn.request("POST", COMPLETIONS, body=chat(alices_live_adapter, 500), headers=auth)
    assert stream.status == 200, stream.read()
    assert stream.headers["Content-Type"] == "text/event-stream"
    assert stream.headers["Transfer-Encoding"] == "chunked"  # sent as it comes, no length known
    first = next_event(stream)
    assert json.loads(first)["choices"][0]["delta"]["role"] == "assistant"

    # The key may hold one stream at a time and this one still holds it (500 tokens take
    # seconds): the first event came as the answer began, not buffered until it was over.
    refused = gunicorn.request("POST", COMPLETIONS, body=chat(alices_live_adapter, 4), headers=auth)
    assert refused.status == 429, (refused.read(), stream.read())
    assert "concurrent streams" in json.loads(refused.read())["error"]["message"]

    events = [first]
    while events[-1] != "[DONE]":
        events.append(next_event(stream))
    chunks = [json.loads(event) for event in events[:-1]]
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([piece for piece in pieces if piece]) > 1, "the answer came in several pieces"
    assert chunks[-1]["usage"]["completion_tokens"] > 1

    # Over, and its slot given back: the key may stream again.
    again = gunicorn.request("POST", COMPLETIONS, body=chat(alices_live_adapter, 4), headers=auth)
    assert again.status == 200 and again.read().endswith(b"data: [DONE]\n\n")


def test_static_files_are_served_under_hashed_names_with_a_ten_year_cache_header(gunicorn):
    _, page = gunicorn.get("/login/")
    [script] = re.findall(rb'src="(/static/mint/console\.[0-9a-f]{12}\.js)"', page)

    response, body = gunicorn.get(script.decode())
    assert response.status == 200 and b"htmx" in body  # console.js itself
    assert response.headers["Cache-Control"] == f"max-age={TEN_YEARS}, public, immutable"
    compressed, _ = gunicorn.get(script.decode(), **{"Accept-Encoding": "gzip"})
    assert compressed.headers["Content-Encoding"] == "gzip"


def test_the_management_api_answers_over_https_only(gunicorn, operator_key, alice):
    response, body = gunicorn.get("/api/people", Authorization=f"Bearer {operator_key}")
    assert response.status == 200, body
    assert [person["handle"] for person in json.loads(body)["data"]] == ["alice"]
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")

    # A request the proxy did not mark as HTTPS is sent there.
    plain = gunicorn.request("GET", "/api/people", headers={"X-Forwarded-Proto": "http"})
    assert plain.status == 301
    assert plain.headers["Location"] == f"https://127.0.0.1:{gunicorn.port}/api/people"


def test_every_request_is_in_the_access_log_with_its_time(gunicorn):
    gunicorn.get("/login/?from=access-log")
    wait_until(lambda: re.search(r'"GET /login/\?from=access-log HTTP/1.1" 200 \d+ \d+ms', gunicorn.log()))


def test_beat_from_the_procfile_sends_the_sweep_that_fails_a_job_whose_worker_died(
    adapter, celery_worker_process, tmp_path
):
    long_ago = timezone.now() - timedelta(hours=1)
    job = Job.objects.create(
        kind=Job.TRAIN, adapter=adapter, state=Job.RUNNING, worker="gone@nowhere", heartbeat_at=long_ago
    )
    beat = start("beat", tmp_path / "beat.log", MINT_VAR_DIR=str(tmp_path), MINT_SWEEP_EVERY_SECONDS="1")
    try:
        wait_for_job(job, timeout=90)
    finally:
        processes.stop(beat)
        # The session's worker removes orphan blobs at once: no sweep may be left to run
        # while a later test stores a payload before the row that names it.
        wait_until(lambda: redis_client().llen(settings.CELERY_TASK_DEFAULT_QUEUE) == 0)
    assert job.state == Job.FAILED and "presumed dead" in job.error, (tmp_path / "beat.log").read_text()
    assert "Scheduler: Sending due task sweep-stale-jobs" in (tmp_path / "beat.log").read_text()
