"""The console at scale: a bulk-loaded fleet, keyset pages and the page-time benchmark."""

import pytest
from django.core.management import CommandError, call_command

from adapters_app.models import Adapter, Person, Revision

pytestmark = pytest.mark.django_db


def test_bulk_seed_loads_people_adapters_and_a_live_revision_chain(capsys):
    call_command("bulk_seed", adapters=30, revisions_per_adapter=3, batch=7)
    assert (Person.objects.count(), Adapter.objects.count(), Revision.objects.count()) == (30, 30, 90)
    adapter = Adapter.objects.select_related("live_revision__parent").get(person__handle="load-0000030")
    assert adapter.live_revision.number == 3
    assert adapter.live_revision.parent.number == 2
    # Sequences continue after the loaded ids: a normal create still works.
    assert Person.objects.create(handle="zed").pk > 30


def test_bulk_seed_refuses_a_second_load_unless_asked_to_skip_it():
    call_command("bulk_seed", adapters=3)
    with pytest.raises(CommandError, match="exist already"):
        call_command("bulk_seed", adapters=3)
    call_command("bulk_seed", adapters=3, if_empty=True)
    assert Person.objects.count() == 3


def test_the_console_benchmark_times_every_page_it_promises(capsys):
    call_command("bulk_seed", adapters=20)
    call_command("bench_console", requests=3, warmup=1)
    table = capsys.readouterr().out
    for page in (
        "overview",
        "people, first page",
        "people, page at 90 %",
        "people, search",
        "adapter page",
        "revision page",
    ):
        assert page in table
    assert "p95 ms" in table
