"""The filters and sort orders the console's lists offer.

Each sort is a keyset order (adapters_app.console.keyset) backed by an index, and
each filter narrows on an indexed column, so a list of a million adapters pages
as fast filtered as unfiltered. Unknown values fall back to the default rather
than failing: they come from hand-edited or old URLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Q, QuerySet
from django.http import QueryDict
from django.utils import timezone

from adapters_app.models import Adapter


@dataclass(frozen=True, slots=True)
class Sort:
    label: str
    order: tuple[str, ...]
    # Rows this order cannot place (a NULL key) are left out, and the page says so.
    requires: Q | None = None
    leaves_out: str = ""


ADAPTER_SORTS = {
    "handle": Sort("handle A→Z", ("person__handle", "name")),
    "trained": Sort(
        "recently trained",
        ("-last_trained_at", "-id"),
        Q(last_trained_at__isnull=False),
        "adapters with no revision yet",
    ),
    "stalest": Sort(
        "longest since training",
        ("last_trained_at", "id"),
        Q(last_trained_at__isnull=False),
        "adapters with no revision yet",
    ),
    "newest": Sort("newest adapters", ("-created_at", "-id")),
}
PEOPLE_SORTS = {
    "handle": Sort("handle A→Z", ("handle",)),
    "newest": Sort("newest first", ("-created_at", "-id")),
}

# "Last trained" windows: value -> (label, condition relative to now).
TRAINED_WINDOWS = {
    "1d": ("in the last 24 hours", timedelta(days=1)),
    "7d": ("in the last 7 days", timedelta(days=7)),
    "30d": ("in the last 30 days", timedelta(days=30)),
    "older": ("more than 30 days ago", None),
    "never": ("never", None),
}


def chosen(params: QueryDict, name: str, options: dict) -> str:
    """The option the URL names, or "" when it names none of them."""
    value = params.get(name, "")
    return value if value in options else ""


def sort_of(params: QueryDict, sorts: dict[str, Sort]) -> tuple[str, Sort]:
    key = chosen(params, "sort", sorts) or next(iter(sorts))
    return key, sorts[key]


def filter_adapters(queryset: QuerySet, params: QueryDict) -> QuerySet:
    live = params.get("live", "")
    if live == "yes":
        queryset = queryset.filter(live_revision__isnull=False)
    elif live == "no":
        queryset = queryset.filter(live_revision__isnull=True)
    if base := params.get("base", ""):
        queryset = queryset.filter(base__name=base)
    if gate := chosen(params, "gate", dict(Adapter.GATE_STATUSES)):
        queryset = queryset.filter(gate_status=gate)
    trained = chosen(params, "trained", TRAINED_WINDOWS)
    if trained == "never":
        queryset = queryset.filter(last_trained_at__isnull=True)
    elif trained == "older":
        queryset = queryset.filter(last_trained_at__lt=timezone.now() - timedelta(days=30))
    elif trained:
        queryset = queryset.filter(last_trained_at__gte=timezone.now() - TRAINED_WINDOWS[trained][1])
    return queryset


AUDIT_FILTERS = ("actor", "person", "action")


def audit_filters(params: QueryDict) -> dict[str, str]:
    return {name: params.get(name, "").strip() for name in AUDIT_FILTERS}


def filter_audit(queryset: QuerySet, chosen_filters: dict[str, str]) -> QuerySet:
    """Actor and person match exactly (they are names copied onto each row); action
    matches as a prefix, so "adapter." finds every adapter event."""
    if chosen_filters["actor"]:
        queryset = queryset.filter(actor_name=chosen_filters["actor"])
    if chosen_filters["person"]:
        queryset = queryset.filter(person_handle=chosen_filters["person"])
    if chosen_filters["action"]:
        queryset = queryset.filter(action__startswith=chosen_filters["action"])
    return queryset
