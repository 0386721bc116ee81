"""A database restart under a running job or an API call: a pause or a 503, never lost work."""

from unittest.mock import patch

import pytest
from django.db import OperationalError, transaction

from workers.runs import outlasting_outages


def test_a_write_outlasts_a_lost_connection_and_is_made_once_the_database_is_back(settings):
    settings.MINT_STALE_JOB_SECONDS = 5
    tries = []

    def write():
        tries.append(1)
        if len(tries) < 3:
            raise OperationalError("consuming input failed: server closed the connection unexpectedly")
        return "written"

    assert outlasting_outages(write) == "written"
    assert len(tries) == 3


def test_past_the_sweeps_patience_the_error_is_the_runs(settings):
    settings.MINT_STALE_JOB_SECONDS = 0

    def write():
        raise OperationalError("connection refused")

    with pytest.raises(OperationalError):
        outlasting_outages(write)


@pytest.mark.django_db
def test_inside_a_transaction_nothing_is_tried_again():
    # The transaction's earlier statements are gone with the connection: only its caller
    # may decide to start over.
    tries = []

    def write():
        tries.append(1)
        raise OperationalError("the connection is lost")

    with pytest.raises(OperationalError), transaction.atomic():
        outlasting_outages(write)
    assert len(tries) == 1


@pytest.mark.django_db
def test_an_api_call_the_database_could_not_complete_is_a_503_to_retry(api):
    with patch(
        "adapters_app.api.views.people.create_person", side_effect=OperationalError("the connection is lost")
    ):
        response = api("post", "/api/people", {"handle": "alice"}, expect=503)
    assert response["error"]["code"] == "database_unavailable"
