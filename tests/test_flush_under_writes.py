"""The suite's own harness: a transactional test's flush outlives a worker that deadlocks it.

CI once lost a test to this: the session's worker was still writing when the test's
teardown TRUNCATEd every table, and PostgreSQL aborted the flush (see conftest)."""

import threading
import time

import psycopg
import pytest
from django.core.management.color import no_style
from django.core.management.sql import sql_flush
from django.db import connection
from django.test import TransactionTestCase

pytestmark = pytest.mark.django_db(transaction=True)


def truncation_order() -> list[str]:
    (statement,) = sql_flush(no_style(), connection, reset_sequences=False, allow_cascade=False)
    return [name.strip('"') for name in statement.removeprefix("TRUNCATE ").rstrip(";").split(", ")]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite has no concurrent writers to deadlock")
def test_a_flush_that_deadlocks_with_a_writer_is_tried_again_and_empties_the_tables(django_user_model):
    django_user_model.objects.create_user("left-behind")
    first, *_, last = truncation_order()
    params = connection.get_connection_params()
    writer = psycopg.connect(
        host=params["host"], port=params["port"], user=params["user"], dbname=params["dbname"]
    )
    # The writer holds the last table the flush will lock and, once the flush holds the
    # first, asks for that one too: a deadlock PostgreSQL breaks by aborting the flush,
    # the side that waited first.
    writer.execute(f'LOCK TABLE "{last}" IN ROW EXCLUSIVE MODE')
    writer_outcome = []

    def want_the_first_table():
        try:
            # Long enough for the flush to take the first table and wait on the last, and well
            # short of PostgreSQL's deadlock_timeout (1 s): each side looks for a deadlock once,
            # that long after it began to wait, so the flush (waiting first) must find the
            # cycle already made. At 1.0 s the two checks raced and either side could lose.
            time.sleep(0.3)
            writer.execute(f'LOCK TABLE "{first}" IN ROW EXCLUSIVE MODE')
            writer.commit()
            writer_outcome.append("committed")
        except psycopg.Error as error:
            writer.rollback()
            writer_outcome.append(type(error).__name__)

    thread = threading.Thread(target=want_the_first_table)
    thread.start()
    try:
        TransactionTestCase()._fixture_teardown()
    finally:
        thread.join()
        writer.close()

    assert writer_outcome == ["committed"]
    assert not django_user_model.objects.exists()
