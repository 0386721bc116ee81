"""A blob that an upload re-uses, but has not yet referenced in a committed row, is never
deleted under it: not by the orphan sweep, not by a failed upload's rollback, not by an
erasure. Each test holds a row lock the upload's insert needs, so the upload waits
between storing its blob and committing its row, and the delete runs in that gap."""

import os
import threading
import time

import pytest
from django.db import IntegrityError, OperationalError, connection, transaction

from adapters_app.lifecycle.datasets import load_examples, upload_dataset
from adapters_app.lifecycle.jobs import sweep_orphan_blobs
from adapters_app.lifecycle.people import create_person, erase_person
from adapters_app.lifecycle.storage import get_store
from adapters_app.models import Dataset, Person
from tests.conftest import FACTS

pytestmark = pytest.mark.django_db(transaction=True)

# Long enough for the upload's thread to store its blob and reach its insert.
UPLOAD_STARTS = 1.5


class Upload(threading.Thread):
    """upload_dataset in a thread of its own (its own database connection)."""

    def __init__(self, person: Person, actor):
        super().__init__()
        self.person, self.actor = person, actor
        self.dataset: Dataset | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.dataset = upload_dataset(self.person, FACTS, name="facts", actor=self.actor)[0]
        except BaseException as exc:
            self.error = exc
        finally:
            connection.close()


def hold_inserts_for(person: Person) -> None:
    """Inside a transaction: block other connections' inserts of rows that reference
    `person` (PostgreSQL: the foreign-key check waits for FOR UPDATE; SQLite: the write)."""
    list(Person.objects.select_for_update().filter(pk=person.pk))
    Person.objects.filter(pk=person.pk).update(display_name=person.display_name)


def test_the_sweep_spares_a_blob_an_upload_has_reused_but_not_yet_committed(alice, actor):
    orphan = get_store().put(FACTS)  # left by an earlier upload that never committed
    two_hours_ago = time.time() - 7200
    os.utime(get_store().path_for(orphan.sha256), (two_hours_ago, two_hours_ago))

    upload = Upload(alice, actor)
    with transaction.atomic():
        hold_inserts_for(alice)
        upload.start()
        time.sleep(UPLOAD_STARTS)
        swept = sweep_orphan_blobs(grace_seconds=3600)
    upload.join()

    assert upload.error is None and swept == []
    assert len(load_examples(upload.dataset)) == 3


def test_a_failed_upload_spares_the_blob_another_upload_reused(alice, actor):
    # Two uploads of the same file for one person (a double click). The first stores the
    # blob and waits to insert; the second re-uses the blob and commits; the first then
    # fails on the unique (person, sha256) and rolls back. Its blob is the second's now.
    # (On PostgreSQL the first's row already holds that key while it waits, the two wait
    # on each other, and the deadlock detector may abort either: whichever fails, the
    # dataset that was committed keeps its blob.)
    first = Upload(alice, actor)
    second_error = None
    try:
        with transaction.atomic():
            hold_inserts_for(alice)
            first.start()
            time.sleep(UPLOAD_STARTS)
            upload_dataset(alice, FACTS, name="facts", actor=actor)
    except OperationalError as exc:
        second_error = exc
    first.join()

    assert [type(error) for error in (first.error, second_error) if error is not None] in (
        [IntegrityError],
        [OperationalError],
    )
    [committed] = Dataset.objects.filter(person=alice)
    assert len(load_examples(committed)) == 3


def test_an_erasure_spares_a_blob_another_persons_upload_reused(alice, dataset, actor):
    bob = create_person("bob", actor=actor)
    upload = Upload(bob, actor)
    with transaction.atomic():
        hold_inserts_for(bob)
        upload.start()
        time.sleep(UPLOAD_STARTS)
        erase_person(alice, actor=actor, reason="asked to be forgotten")
    upload.join()

    assert upload.error is None
    assert len(load_examples(upload.dataset)) == 3
