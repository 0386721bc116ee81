"""`manage.py load_test`, tiny: its own worker and web server, a bounded loop, a table."""

import io

import pytest
from django.core.management import call_command

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_the_load_test_serves_every_request_and_prints_the_table(micro_base, redis_server):
    out = io.StringIO()

    call_command("load_test", adapters=20, clients=4, requests=20, stdout=out)

    table = dict(line.split("  ", 1) for line in out.getvalue().splitlines() if "  " in line)
    table = {name.strip(): value.strip() for name, value in table.items()}
    assert table["failures"] == "0"
    assert table["requests"].startswith("20 ")
    assert table["throughput"].endswith("req/s")
    assert all(table[f"latency {q}"].endswith(" ms") for q in ("p50", "p95", "max"))
