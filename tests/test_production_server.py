"""The web server as production runs it: gunicorn with deploy/gunicorn.conf.py, DEBUG off and
the documented production settings, static files collected, on the test database and Redis,
with the session's real worker answering /v1. Requests come as from the TLS proxy in front
(X-Forwarded-Proto: https)."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys

import pytest
from django.conf import settings

from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.pointer import promote
from adapters_app.management import processes
from adapters_app.models import ApiKey
from tests.conftest import wait_until, with_role
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


@pytest.fixture(scope="module")
def gunicorn(django_db_setup, redis_server, celery_worker_process, tmp_path_factory):
    """gunicorn on a free port: one process of four threads (so a request finds it warm: a
    process's first /v1 request imports for a second or more), its own var folder (static
    files collected into it first, as every deploy does), everything else the session's."""
    var = tmp_path_factory.mktemp("web-var")
    port = processes.free_port()
    env = {
        **PRODUCTION,
        "ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SETTINGS_MODULE": "mintweb.settings",
        "MINT_VAR_DIR": str(var),
        "DATABASE_URL": processes.database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "MINT_STORE": settings.MINT_STORE,
        "MINT_QUEUE": settings.CELERY_TASK_DEFAULT_QUEUE,
        "MINT_WEB_BIND": f"127.0.0.1:{port}",
        "MINT_WEB_WORKERS": "1",
        "MINT_WEB_THREADS": "4",
    }
    collected = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=settings.BASE_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert collected.returncode == 0, collected.stderr
    log_path = var / "gunicorn.log"
    process = processes.spawn(
        [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py"], log_path, env, append=False
    )
    server = Gunicorn(port, process, log_path)

    def answers() -> bool:
        """gunicorn answers /login/"""
        assert process.poll() is None, f"gunicorn exited:\n{server.log()}"
        try:
            return server.get("/login/")[0].status == 200
        except OSError:
            return False

    wait_until(answers, timeout=60)
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
