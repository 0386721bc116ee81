import hashlib
import re
from dataclasses import dataclass

from django.db import transaction

from adapters_app.lifecycle import audit
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.errors import Invalid, NotFound, TooLarge
from adapters_app.lifecycle.roles import authorize
from adapters_app.lifecycle.storage import delete_unreferenced_blob, get_store
from adapters_app.models import Dataset, Person
from workers.engine import examples
from workers.engine.examples import DatasetInvalid, Example, LineError, parse_jsonl
from workers.engine.persona_world import EvalItem
from workers.engine.suites import SUITE_FORMAT, looks_like_suite_file, parse_items

DATASET_ID_RE = re.compile(r"[0-9]{1,18}")
SHA_PREFIX_RE = re.compile(r"[0-9a-f]{8,64}")


def upload_dataset(
    person: Person, data: bytes, *, name: str, purpose: str = Dataset.TRAIN, actor: Actor
) -> tuple[Dataset, bool]:
    """Validate and store a JSONL upload. Returns (dataset, created).

    A bad file raises Invalid with line-numbered errors and writes nothing.
    The same bytes uploaded twice for a person return the existing dataset.
    """
    authorize(actor, "dataset.upload")
    if purpose not in dict(Dataset.PURPOSES):
        raise Invalid(f"purpose must be one of {', '.join(dict(Dataset.PURPOSES))}")
    # Evaluation sets too: their parser has no size limit of its own.
    refuse_oversize(len(data))
    try:
        parsed = _parse(data, purpose)
    except DatasetInvalid as exc:
        raise _invalid(exc) from None
    existing = Dataset.objects.filter(person=person, sha256=parsed.sha256).first()
    if existing:
        return existing, False

    put = get_store().put(data)
    try:
        with transaction.atomic():
            dataset = Dataset.objects.create(
                person=person,
                name=(name or f"dataset-{parsed.sha256[:8]}")[:200],
                purpose=purpose,
                format=parsed.format,
                sha256=parsed.sha256,
                rows=parsed.rows,
                size_bytes=parsed.size_bytes,
                created_by=actor.name,
            )
            audit.record(
                actor,
                "dataset.upload",
                dataset,
                person_handle=person.handle,
                after={"sha256": dataset.sha256, "rows": dataset.rows, "format": dataset.format},
            )
    except BaseException:
        # Unless another upload re-used the blob meanwhile (a double click's second
        # request, another person's same file): it may have committed, or be about to.
        if put.created:
            delete_unreferenced_blob(put.sha256, put_after_ns=put.stamp_ns)
        raise
    return dataset, True


def refuse_oversize(size: int | None) -> None:
    """Refuse an upload over the size limit. The console and the API call this with the
    upload's declared size before reading it, so an oversize file never sits in memory."""
    limit = examples.MAX_BYTES  # read when called: tests lower it
    if size is not None and size > limit:
        problem = LineError(0, f"file is {size} bytes; the limit is {limit} bytes")
        raise TooLarge(str(DatasetInvalid([problem])), details=[{"line": 0, "message": problem.message}])


def _invalid(exc: DatasetInvalid) -> Invalid:
    return Invalid(str(exc), details=[{"line": e.line, "message": e.message} for e in exc.errors])


@dataclass(frozen=True, slots=True)
class _Parsed:
    format: str
    rows: int
    sha256: str
    size_bytes: int


def _parse(data: bytes, purpose: str) -> _Parsed:
    """Training formats for any purpose; evaluation sets (items with checks) for eval only."""
    if purpose == Dataset.EVAL and looks_like_suite_file(data):
        items = parse_items(data)
        return _Parsed(SUITE_FORMAT, len(items), hashlib.sha256(data).hexdigest(), len(data))
    parsed = parse_jsonl(data)
    return _Parsed(parsed.format, parsed.rows, parsed.sha256, parsed.size_bytes)


def get_dataset(person: Person, ref: str) -> Dataset:
    """A dataset by id or sha256 prefix (at least 8 characters)."""
    queryset = Dataset.objects.filter(person=person)
    # Matched whole, in ASCII: "²".isdigit() is true, and int() of it fails.
    if DATASET_ID_RE.fullmatch(ref):
        found = queryset.filter(pk=int(ref)).first()
    elif SHA_PREFIX_RE.fullmatch(ref.lower()):
        matches = list(queryset.filter(sha256__startswith=ref.lower())[:2])
        found = matches[0] if len(matches) == 1 else None
    else:
        found = None
    if found is None:
        raise NotFound(f"no dataset {ref!r} for {person.handle}")
    return found


def load_examples(dataset: Dataset) -> list[Example]:
    """The dataset's rows, read from the store (hash-verified) and parsed again."""
    if dataset.format == SUITE_FORMAT:
        raise Invalid(f"{dataset.name} is an evaluation set, not training rows")
    return parse_jsonl(get_store().get(dataset.sha256)).examples


def load_eval_items(dataset: Dataset) -> list[EvalItem]:
    return parse_items(get_store().get(dataset.sha256))
