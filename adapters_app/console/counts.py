"""Fleet counts for the overview that stay cheap at a million adapters.

`COUNT(*)` reads every row (or index entry): tens to hundreds of milliseconds on
a table of millions, on every view of the overview. Above EXACT_BELOW rows the
overview shows PostgreSQL's own estimate instead (the planner's row count,
refreshed by autovacuum's ANALYZE), marked as approximate; small fleets and
other databases get exact counts.
"""

from __future__ import annotations

import json

from django.db import connection
from django.db.models import QuerySet

from adapters_app.models import Adapter, Person, Revision

EXACT_BELOW = 100_000


def fleet_counts() -> tuple[dict[str, int], set[str]]:
    """(counts, names of the counts that are estimates)."""
    queries = {
        "people": Person.objects.all(),
        "adapters": Adapter.objects.all(),
        "revisions": Revision.objects.all(),
        "live_adapters": Adapter.objects.filter(live_revision__isnull=False),
    }
    counts, estimated = {}, set()
    for name, queryset in queries.items():
        guess = _planner_rows(queryset)
        if guess is not None and guess >= EXACT_BELOW:
            counts[name] = guess
            estimated.add(name)
        else:
            counts[name] = queryset.count()
    return counts, estimated


def _planner_rows(queryset: QuerySet) -> int | None:
    if connection.vendor != "postgresql":
        return None
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return int(plan[0]["Plan"]["Plan Rows"])
