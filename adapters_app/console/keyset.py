"""Keyset pagination: pages that cost the same at row 50 and at row 900,000.

An OFFSET page makes the database walk every row before it, and a numbered
paginator counts the whole table on every view. A keyset page instead asks for
the rows after (or before) the last one shown, in an order backed by an index,
so each page is one index range scan. Cursors are opaque strings in the URL.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q, QuerySet
from django.http import QueryDict

PAGE_SIZE = 50


@dataclass(slots=True)
class KeysetPage:
    object_list: list
    next_cursor: str = ""
    previous_cursor: str = ""

    # The page links keep the list's other parameters (search, filters, sort).
    next_query: str = ""
    previous_query: str = ""
    first_query: str = ""

    @property
    def has_next(self) -> bool:
        return bool(self.next_cursor)

    @property
    def has_previous(self) -> bool:
        return bool(self.previous_cursor)


class BadCursor(ValueError):
    pass


def keyset_page(queryset: QuerySet, order: tuple[str, ...], params: QueryDict, size: int = PAGE_SIZE):
    """The page of `queryset` in `order` (field names, "-" for descending; the last must be
    unique) after the `after` cursor, or before the `before` cursor, or the first page."""
    after, before = params.get("after", ""), params.get("before", "")
    backwards = bool(before) and not after
    cursor = _decode(before if backwards else after, len(order)) if (after or before) else None
    walk = [_flip(f) for f in order] if backwards else list(order)
    rows = queryset.order_by(*walk)
    if cursor is not None:
        rows = rows.filter(_beyond(walk, cursor))
    rows = list(rows[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    if backwards:
        rows.reverse()
    page = KeysetPage(rows)
    page.first_query = _query(params)
    if not rows:
        return page
    if backwards:  # the page we came from follows; earlier rows exist if we found more
        page.next_cursor = _encode(rows[-1], order)
        page.previous_cursor = _encode(rows[0], order) if more else ""
    else:  # rows precede this page whenever we came from a cursor
        page.next_cursor = _encode(rows[-1], order) if more else ""
        page.previous_cursor = _encode(rows[0], order) if cursor is not None else ""
    page.next_query = _query(params, after=page.next_cursor) if page.next_cursor else ""
    page.previous_query = _query(params, before=page.previous_cursor) if page.previous_cursor else ""
    return page


def _query(params: QueryDict, **cursor: str) -> str:
    query = params.copy()
    for name in ("after", "before"):
        query.pop(name, None)
    query.update(cursor)
    return query.urlencode()


def _flip(field: str) -> str:
    return field[1:] if field.startswith("-") else f"-{field}"


def _beyond(order: list[str], values: list) -> Q:
    """Rows strictly after `values` in `order`: (a > x) | (a = x & b > y) | …"""
    condition = Q()
    for depth, field in enumerate(order):
        name = field.lstrip("-")
        step = Q(**{f"{name}__{'lt' if field.startswith('-') else 'gt'}": values[depth]})
        for earlier, value in zip(order[:depth], values[:depth], strict=False):
            step &= Q(**{earlier.lstrip("-"): value})
        condition |= step
    return condition


def _value(obj, field: str):
    value = obj
    for part in field.lstrip("-").split("__"):
        value = getattr(value, part)
    return value.isoformat() if isinstance(value, datetime) else value


def _encode(obj, order: tuple[str, ...]) -> str:
    return encode_cursor([_value(obj, f) for f in order])


def encode_cursor(values: list) -> str:
    """The cursor of a row with these key values (a page link starts after or before it)."""
    raw = json.dumps(values, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str, length: int) -> list:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        raise BadCursor("this page link is damaged; start again from the first page") from None
    if not isinstance(values, list) or len(values) != length:
        raise BadCursor("this page link is damaged; start again from the first page")
    return values
