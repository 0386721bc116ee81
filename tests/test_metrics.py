"""/metrics: Prometheus's text format, parsed with prometheus-client's own parser."""

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from adapters_app.lifecycle.inference import redis_client
from adapters_app.metrics.http import count_tokens
from adapters_app.models import ApiKey, Job, ResidencyStats, Worker
from tests.conftest import with_role

pytestmark = pytest.mark.django_db


def scrape(client, **extra) -> dict[str, list]:
    response = client.get("/metrics", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")  # Prometheus text format
    return {
        family.name: family.samples for family in text_string_to_metric_families(response.content.decode())
    }


def value(samples, sample: str | None = None, **labels) -> float:
    """The one sample (named `sample`, when a family has several kinds) with these labels."""
    [found] = [
        s.value
        for s in samples
        if (sample is None or s.name == sample) and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return found


@pytest.fixture
def worker(db):
    now = timezone.now()
    worker = Worker.objects.create(
        name="serve@host-a",
        hostname="host-a",
        pid=4242,
        queues=["mint", "mint.w.serve@host-a"],
        device="cpu",
        code_version="test",
        started_at=now,
        last_seen_at=now,
    )
    ResidencyStats.objects.create(
        worker=worker,
        pid=4242,
        base_digest="d" * 64,
        tier="device",
        memory="cpu",
        budget_bytes=2**30,
        max_entries=64,
        used_bytes=123_456,
        entries=3,
        hits=90,
        misses=10,
        evictions=2,
        cold_loads=10,
        cold_load_p50_ms=4.0,
        cold_load_p95_ms=12.0,
        updated_at=now,
    )
    return worker


def test_requests_are_counted_and_timed_per_endpoint_not_per_path(client, django_user_model):
    _, secret = ApiKey.issue(with_role(django_user_model.objects.create_user("ops"), "operator"))
    for _ in range(3):
        client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {secret}")
    client.get("/v1/models")  # no key: a 401, counted under its status
    client.get("/people/nobody-at-all/")  # a login redirect for an anonymous visitor

    families = scrape(client)
    requests = families["mint_http_requests"]
    assert (
        value(
            requests,
            endpoint="openai:models",
            method="GET",
            status="200",
            sample="mint_http_requests_total",
        )
        >= 3
    )
    assert (
        value(
            requests,
            endpoint="openai:models",
            method="GET",
            status="401",
            sample="mint_http_requests_total",
        )
        >= 1
    )
    assert not any("nobody-at-all" in str(s.labels) for s in requests)
    latency = families["mint_http_request_duration_seconds"]
    assert (
        value(
            latency,
            endpoint="openai:models",
            method="GET",
            le="+Inf",
            sample="mint_http_request_duration_seconds_bucket",
        )
        >= 4
    )


def test_tokens_generated_are_a_counter_whose_rate_is_tokens_per_second(client):
    before = scrape(client).get("mint_tokens", [])
    prior = value(before, kind="completion", sample="mint_tokens_total") if before else 0
    count_tokens(prompt_tokens=12, completion_tokens=30)
    after = scrape(client)["mint_tokens"]
    assert value(after, kind="completion", sample="mint_tokens_total") == prior + 30


def test_jobs_workers_and_each_workers_residency_are_read_at_the_scrape(client, worker, adapter):
    Job.objects.create(kind=Job.TRAIN, state=Job.RUNNING, adapter=adapter)
    families = scrape(client)

    assert value(families["mint_jobs"], kind="train", state="running") == 1
    assert value(families["mint_jobs"], kind="evaluate", state="queued") == 0
    assert value(families["mint_workers"], health="healthy") == 1
    where = dict(worker="serve@host-a", pid="4242", tier="device")
    assert value(families["mint_residency_bytes"], **where) == 123_456
    assert value(families["mint_residency_hits"], **where, sample="mint_residency_hits_total") == 90
    assert value(families["mint_residency_misses"], **where, sample="mint_residency_misses_total") == 10
    assert value(families["mint_residency_evictions"], **where, sample="mint_residency_evictions_total") == 2
    assert value(families["mint_residency_cold_load_seconds"], **where, quantile="0.95") == pytest.approx(
        0.012
    )


def test_queue_depth_counts_what_waits_in_redis_for_each_queue(client, worker, settings):
    queue = "mint.w.serve@host-a"
    redis_client().delete(queue)
    redis_client().rpush(queue, "a", "b")
    try:
        depths = scrape(client)["mint_queue_depth"]
        assert value(depths, queue=queue) == 2
        assert value(depths, queue=settings.CELERY_TASK_DEFAULT_QUEUE) >= 0
    finally:
        redis_client().delete(queue)


def test_metrics_are_refused_to_an_address_not_allowed_unless_it_bears_the_token(client, settings):
    settings.MINT_METRICS_ALLOW = "10.0.0.0/8"
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    settings.MINT_METRICS_TOKEN = "s3cret-scraper"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-scraper").status_code == 200
