"""The audit log as CSV, one row per event, for spreadsheets and auditors."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

from django.db.models import QuerySet
from django.utils import timezone

COLUMNS = (
    "created_at",
    "actor",
    "via",
    "action",
    "object_type",
    "object_id",
    "object",
    "person",
    "before",
    "after",
)
# Rows fetched per round trip while streaming.
CHUNK = 2000
# A cell starting with one of these is a formula to a spreadsheet; a leading quote
# keeps a reason like "=1+1" or "@home" as the text an operator typed.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def filename() -> str:
    return f"mint-audit-{timezone.now():%Y%m%d-%H%M%S}.csv"


def rows(events: QuerySet) -> Iterator[str]:
    """CSV text, header first, one line per event."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(COLUMNS)
    yield flush()
    for event in events.iterator(chunk_size=CHUNK):
        writer.writerow(
            [
                event.created_at.isoformat(),
                _cell(event.actor_name),
                event.via,
                event.action,
                event.object_type,
                event.object_id,
                _cell(event.object_repr),
                event.person_handle,
                _json(event.before),
                _json(event.after),
            ]
        )
        yield flush()


def _cell(text: str) -> str:
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


def _json(value) -> str:
    return "" if value is None else _cell(json.dumps(value, sort_keys=True, separators=(",", ":")))
