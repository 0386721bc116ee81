"""Per-key limits, counted in Redis: requests and tokens per minute, concurrent streams, and
the caps every /v1 request meets."""

import json
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings as django_settings

from adapters_app.lifecycle import keys, limits
from adapters_app.lifecycle.errors import Invalid, RateLimited
from adapters_app.management import processes
from adapters_app.models import ApiKey
from tests.conftest import wait_until, with_role


@pytest.fixture
def operator_key(django_user_model):
    def issue(**limits_):
        user = with_role(django_user_model.objects.create_user(f"ops{ApiKey.objects.count()}"), "operator")
        return ApiKey.issue(user, **limits_)

    return issue


def get(client, path: str, secret: str):
    return client.get(path, HTTP_AUTHORIZATION=f"Bearer {secret}")


def test_a_key_past_its_requests_per_minute_gets_429_with_retry_after_in_openais_shape(client, operator_key):
    _, secret = operator_key(requests_per_minute=2)
    answers = [get(client, "/v1/models", secret) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    refused = answers[-1]
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert refused.json()["error"] == {
        "message": refused.json()["error"]["message"],
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert "requests per minute: limit 2" in refused.json()["error"]["message"]


def test_the_management_api_counts_the_same_requests_and_answers_in_its_own_shape(client, operator_key):
    _, secret = operator_key(requests_per_minute=1)
    assert get(client, "/api/people", secret).status_code == 200
    refused = get(client, "/v1/models", secret)  # one count for the key, whichever API
    assert refused.status_code == 429
    refused = get(client, "/api/people", secret)
    assert refused.status_code == 429 and "Retry-After" in refused
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_key_without_its_own_limit_takes_the_deployments_and_zero_means_none(
    client, operator_key, settings
):
    settings.MINT_KEY_REQUESTS_PER_MINUTE = 1
    _, defaulted = operator_key()
    _, unlimited = operator_key(requests_per_minute=0)
    assert [get(client, "/v1/models", defaulted).status_code for _ in range(2)] == [200, 429]
    assert {get(client, "/v1/models", unlimited).status_code for _ in range(5)} == {200}


def test_tokens_are_reserved_before_the_worker_and_settled_to_what_was_used(operator_key):
    key, _ = operator_key(tokens_per_minute=100)
    first = limits.admit_generation(key, max_tokens=60, n=1, stream=False)
    with pytest.raises(RateLimited, match="tokens per minute: limit 100, requested 60") as refused:
        limits.admit_generation(key, max_tokens=60, n=1, stream=False)
    assert refused.value.limit == "tokens" and 1 <= refused.value.retry_after <= 60

    first.finish(used_tokens=25)  # the answer was short: 35 tokens come back
    second = limits.admit_generation(key, max_tokens=60, n=1, stream=False)
    second.finish(used_tokens=60)
    with pytest.raises(RateLimited):
        limits.admit_generation(key, max_tokens=20, n=1, stream=False)


def test_a_request_asking_more_tokens_than_a_minute_allows_is_refused_outright(operator_key):
    key, _ = operator_key(tokens_per_minute=100)
    with pytest.raises(Invalid, match=r"max_tokens x n \(128\) exceeds this key's tokens_per_minute \(100\)"):
        limits.admit_generation(key, max_tokens=64, n=2, stream=False)


def test_a_key_holds_at_most_its_concurrent_streams_until_one_ends(operator_key):
    key, _ = operator_key(concurrent_streams=2)
    held = [limits.admit_generation(key, max_tokens=8, n=1, stream=True) for _ in range(2)]
    with pytest.raises(RateLimited, match="concurrent streams for this key: limit 2"):
        limits.admit_generation(key, max_tokens=8, n=1, stream=True)
    assert limits.admit_generation(key, max_tokens=8, n=1, stream=False)  # not a stream: no slot
    held[0].finish(used_tokens=8)
    held[0].finish(used_tokens=8)  # a second finish gives nothing back twice
    limits.admit_generation(key, max_tokens=8, n=1, stream=True)
    with pytest.raises(RateLimited):
        limits.admit_generation(key, max_tokens=8, n=1, stream=True)


def test_a_v1_body_over_the_cap_is_a_413_naming_the_limit(client, operator_key, settings):
    settings.MINT_V1_MAX_BODY_BYTES = 1000
    _, secret = operator_key()
    body = json.dumps({"model": "m", "prompt": "x" * 2000})
    response = client.post(
        "/v1/completions", data=body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )
    assert response.status_code == 413
    assert response.json()["error"]["message"] == (
        f"the request body ({len(body)} bytes) is larger than the limit of 1000 bytes"
    )


def test_max_tokens_and_n_over_their_caps_are_400s_naming_the_field(client, operator_key):
    _, secret = operator_key()
    for field, value in [("max_tokens", 100_000), ("n", 1000)]:
        response = client.post(
            "/v1/completions",
            data=json.dumps({"model": "m", "prompt": "hi", field: value}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {secret}",
        )
        assert response.status_code == 400
        assert response.json()["error"]["param"] == field


# --- two web processes, one Redis ------------------------------------------------------------


@pytest.fixture
def two_web_processes(transactional_db, tmp_path, redis_server, unused_port_pair):
    """Two web servers of this project, in their own processes, on the test database."""
    env = {
        "DJANGO_SETTINGS_MODULE": "mintweb.settings",
        "MINT_VAR_DIR": str(django_settings.VAR_DIR),
        "DATABASE_URL": processes.database_url(),
        "REDIS_URL": django_settings.REDIS_URL,
    }
    started = [
        processes.spawn(
            [sys.executable, "manage.py", "serve_web", f"127.0.0.1:{port}", "--noreload"],
            tmp_path / f"web-{port}.log",
            env,
        )
        for port in unused_port_pair
    ]
    urls = [f"http://127.0.0.1:{port}" for port in unused_port_pair]

    def up(url: str) -> bool:
        try:
            urllib.request.urlopen(f"{url}/v1/models", timeout=2)
        except urllib.error.HTTPError:
            return True  # it answered (a 401: no key)
        except OSError:
            return False
        return True

    wait_until(lambda: all(up(url) for url in urls), timeout=60)
    yield urls
    for process in started:
        processes.stop(process)


@pytest.fixture
def unused_port_pair() -> list[int]:
    return [processes.free_port(), processes.free_port()]


def fetch(url: str, secret: str) -> tuple[int, str | None]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {secret}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, None
    except urllib.error.HTTPError as refused:
        return refused.code, refused.headers.get("Retry-After")


@pytest.mark.integration
def test_a_burst_past_a_keys_limit_across_two_web_processes_is_counted_once(
    two_web_processes, django_user_model
):
    user = with_role(django_user_model.objects.create_user("burst"), "operator")
    _, secret = ApiKey.issue(user, requests_per_minute=5)
    # One window for the whole burst: not in the last seconds of a minute.
    while time.time() % 60 > 50:
        time.sleep(1)
    targets = [f"{url}/v1/models" for url in two_web_processes] * 6
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        answers = list(pool.map(lambda url: fetch(url, secret), targets))

    # Counted per process, each would have let 5 through: 10 in all.
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * 5 + [429] * 7
    assert all(
        retry_after and 1 <= int(retry_after) <= 60 for status, retry_after in answers if status == 429
    )


def test_keys_limits_round_trip_through_the_lifecycle(operator_key, alice, actor):
    key, _ = keys.issue_person_key(alice, actor=actor, limits={"tokens_per_minute": 0})
    assert limits.limit_of(key, "tokens_per_minute") == 0
    assert limits.limit_of(key, "requests_per_minute") == django_settings.MINT_KEY_REQUESTS_PER_MINUTE
