import logging
import uuid
from datetime import UTC, datetime, timedelta

from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from adapters_app.lifecycle import audit
from adapters_app.lifecycle.actors import Actor
from adapters_app.lifecycle.errors import Conflict, Invalid, NotFound
from adapters_app.lifecycle.roles import authorize
from adapters_app.lifecycle.storage import delete_unreferenced_blob
from adapters_app.lifecycle.studies import drop_erased_members
from adapters_app.lifecycle.updates import forget_answers_of
from adapters_app.models import Adapter, BaseModel, Dataset, Person, PointerEvent, Revision, StudyRun
from adapters_app.models.person import is_handle, validate_handle

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Changed on every erasure; worker processes watch it to know when to drop what they
# hold of revisions that are gone (workers/forgetting.py).
ERASURE_MARK_KEY = "erasure-mark"


def _valid_handle(value: str, what: str) -> str:
    try:
        validate_handle(value)
    except ValidationError as exc:
        raise Invalid(f"{what}: {exc.messages[0]}") from None
    return value


def create_person(handle: str, *, display_name: str = "", actor: Actor) -> Person:
    authorize(actor, "person.create")
    _valid_handle(handle, "person")
    try:
        with transaction.atomic():
            person = Person.objects.create(handle=handle, display_name=display_name)
            audit.record(actor, "person.create", person, person_handle=handle)
    except IntegrityError:
        raise Conflict(f"person {handle!r} already exists") from None
    return person


def get_person(handle: str) -> Person:
    # A name no person can have is not looked up (a NUL in it would fail the query itself).
    if not is_handle(handle):
        raise NotFound(f"no person {handle!r}")
    try:
        return Person.objects.get(handle=handle)
    except Person.DoesNotExist:
        raise NotFound(f"no person {handle!r}") from None


def create_adapter(
    person: Person, name: str, *, base: BaseModel, description: str = "", actor: Actor
) -> Adapter:
    authorize(actor, "adapter.create")
    _valid_handle(name, "adapter")
    try:
        with transaction.atomic():
            adapter = Adapter.objects.create(
                person=person, name=name, base=base, base_digest=base.digest, description=description
            )
            audit.record(
                actor,
                "adapter.create",
                adapter,
                person_handle=person.handle,
                after={"base": base.name, "base_digest": base.digest},
            )
    except IntegrityError:
        raise Conflict(f"adapter {person.handle}/{name} already exists") from None
    return adapter


def get_adapter(person_handle: str, name: str) -> Adapter:
    if not (is_handle(person_handle) and is_handle(name)):
        raise NotFound(f"no adapter {person_handle}/{name}")
    try:
        return Adapter.objects.select_related("person", "base", "live_revision").get(
            person__handle=person_handle, name=name
        )
    except Adapter.DoesNotExist:
        raise NotFound(f"no adapter {person_handle}/{name}") from None


def erase_person(person: Person, *, actor: Actor, reason: str) -> dict:
    """Delete a person with their adapters, revisions, datasets and blobs, the runs
    footprint studies trained on their data (a fleet cohort's runs name the adapter), and
    their adapters' places in those studies' cohorts.

    The audit event that remains (a tombstone) names what was erased, not the data.
    """
    authorize(actor, "person.erase")
    if not reason.strip():
        raise Invalid("erasing a person needs a reason")
    handle, person_pk = person.handle, person.pk
    with transaction.atomic():
        # Locks first, and what is counted and deleted is read after them. The person's row:
        # a study pass recording runs trained on their data takes it too
        # (workers/study_run.py:still_pinned). Their adapters' rows: a training job writing
        # a revision takes its adapter's (lifecycle/revisions.py), so no revision (nor its
        # blob) can slip in between the reads below and the deletes.
        list(Person.objects.select_for_update().filter(pk=person.pk).values_list("pk", flat=True))
        adapters = list(Adapter.objects.select_for_update().filter(person=person).select_related("person"))
        adapter_handles = [adapter.handle for adapter in adapters]
        revisions = Revision.objects.filter(adapter__person=person)
        revision_blobs = set(revisions.values_list("sha256", flat=True))
        dataset_blobs = set(Dataset.objects.filter(person=person).values_list("sha256", flat=True))
        # When each blob was last named by one of their rows: a put after that is
        # someone else's re-use, whose row may not be committed yet.
        last_named = _last_named(revisions, Dataset.objects.filter(person=person))
        study_runs = StudyRun.objects.filter(person__in=adapter_handles)
        counts = {
            "adapters": len(adapter_handles),
            "revisions": revisions.count(),
            "datasets": len(dataset_blobs),
            "study_runs": study_runs.count(),
        }
        Adapter.objects.filter(person=person).update(live_revision=None)
        # Revisions are write-once, but erasure is the one sanctioned delete. Promotions
        # and rollbacks protect the revisions they name, and a retrain its parent: the
        # pointer history goes first, then revisions newest first (a child is always
        # newer than its parent), since a protected row cannot go in one bulk delete.
        PointerEvent.objects.filter(adapter__person=person).delete()
        for revision in revisions.order_by("-pk"):
            revision.delete()
        study_runs.delete()
        drop_erased_members(adapter_handles)
        person.delete()
        audit.record(actor, "person.erase", person, person_handle=handle, after={**counts, "reason": reason})
    # Each blob is checked for references again under its lock, and spared if it was put
    # since their rows were written: another person's upload of the same bytes that has
    # stored it but not yet committed. Left unreferenced, the orphan sweep removes it.
    for sha in revision_blobs | dataset_blobs:
        delete_unreferenced_blob(sha, put_after_ns=last_named[sha])
    forget_answers_of(person_pk)
    mark_erasure()
    return counts


def _last_named(*querysets) -> dict[str, int]:
    """sha256 -> the newest created_at (ns since the epoch) of the rows naming it."""
    newest: dict[str, int] = {}
    for queryset in querysets:
        for sha, created_at in queryset.values_list("sha256", "created_at"):
            stamp = (created_at - EPOCH) // timedelta(microseconds=1) * 1000
            newest[sha] = max(newest.get(sha, 0), stamp)
    return newest


def mark_erasure() -> None:
    """Tell worker processes that revisions are gone, so they drop their copies. Best
    effort: the erasure itself is done, and workers also look on their own now and then."""
    try:
        cache.set(ERASURE_MARK_KEY, uuid.uuid4().hex, timeout=None)
    except Exception:
        log.exception("could not tell the workers of an erasure; their periodic sweep will find it")


def erasure_mark() -> str | None:
    """The mark `mark_erasure` set last (None when unset, or the cache was emptied)."""
    return cache.get(ERASURE_MARK_KEY)


def describe_erasure(counts: dict) -> str:
    """What `erase_person` deleted, for a message: "adapters 1, revisions 0, …"."""
    return ", ".join(f"{what.replace('_', ' ')} {count}" for what, count in counts.items())
