"""`manage.py load_test`, tiny: its own worker and web server, a bounded loop, a table."""

import io

import pytest
from django.core.management import call_command

from adapters_app.models import ApiKey

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_the_load_test_serves_every_request_and_prints_the_table(micro_base, redis_server, django_user_model):
    out = io.StringIO()
    earlier_run, _ = ApiKey.issue(django_user_model.objects.create(username="load-test"), name="load test")

    call_command("load_test", adapters=20, clients=4, requests=20, stdout=out)

    table = dict(line.split("  ", 1) for line in out.getvalue().splitlines() if "  " in line)
    table = {name.strip(): value.strip() for name, value in table.items()}
    assert table["failures"] == "0"
    assert table["requests"].startswith("20 ")
    assert table["throughput"].endswith("req/s")
    assert all(table[f"latency {q}"].endswith(" ms") for q in ("p50", "p95", "max"))
    # Each run issues a key and revokes the previous run's: one live key, not one per run.
    earlier_run.refresh_from_db()
    assert earlier_run.revoked_at is not None
    assert ApiKey.objects.filter(name="load test", revoked_at=None).count() == 1


def test_a_streamed_load_test_also_times_the_first_text(micro_base, redis_server):
    out = io.StringIO()

    call_command("load_test", adapters=4, clients=2, requests=4, max_tokens=40, stream=True, stdout=out)

    lines = [line.split("  ", 1) for line in out.getvalue().splitlines() if "  " in line]
    table = {name.strip(): value.strip() for name, value in lines if name.strip()}
    assert table["failures"] == "0"
    assert "streamed" in table["requests"]
    first, total = (int(table[f"{row} p50"].removesuffix(" ms")) for row in ("first text", "latency"))
    assert 0 < first <= total
    assert "40 completion tokens per answer" in out.getvalue()  # the bare micro base talks to the end
