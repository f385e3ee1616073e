"""A request's attempt history: each batch it went in, its upstream id, outcome and error."""

import html
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from batches_app import services
from batches_app.models import Batch, RequestAttempt
from batches_app.retention import key_purge, retention_prune
from requests_app.models import BatchRequest

from .cockpit import chat, send
from .engine import cycle

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status


def history(request_id) -> list[tuple]:
    rows = RequestAttempt.objects.filter(request_id=request_id).order_by("started_at", "pk")
    return [(a.batch_id, a.outcome, a.error_code) for a in rows]


def table_of(admin_client, request_id) -> str:
    """The attempt history table of the request's admin page."""
    url = reverse("admin:requests_app_batchrequest_change", args=[request_id])
    page = html.unescape(admin_client.get(url).content.decode())
    return page.split('<table class="bp-attempts">', 1)[1].split("</table>", 1)[0]


def test_a_requeued_request_shows_each_batch_it_went_in(admin_client, client, api_key, fake_openai):
    # The [[invalid]] line fails its batch's validation: the other request goes round again.
    good = send(client, api_key[1], chat("fine"))
    bad = send(client, api_key[1], chat("bad [[invalid]]"))
    cycle()
    first = Batch.objects.get()
    cycle()
    second = Batch.objects.exclude(pk=first.pk).get()
    assert BatchRequest.objects.get(pk=good).status == Status.COMPLETED
    assert history(good) == [(first.pk, "requeued", "batch_failed"), (second.pk, "", "")]
    assert history(bad) == [(first.pk, "", "")]  # its outcome is the request's own

    table = table_of(admin_client, good)
    for text in (
        first.upstream_id,
        "requeued",
        "batch_failed: Another request",
        second.upstream_id,
    ):
        assert text in table
    assert table.index(first.upstream_id) < table.index(second.upstream_id)
    assert "Completed (200)" in table
    assert "invalid_request" in table_of(admin_client, bad)


def test_an_operators_requeue_keeps_how_the_request_had_ended(
    admin_client, client, api_key, fake_openai, settings
):
    settings.MAX_ATTEMPTS = 1
    bad = send(client, api_key[1], chat("boom [[error:server_error]]"))
    cycle()
    first = Batch.objects.get()
    assert services.requests_requeue(request_ids=[bad]) == 1
    cycle()
    second = Batch.objects.exclude(pk=first.pk).get()
    assert history(bad) == [(first.pk, "failed", "server_error"), (second.pk, "", "")]
    table = table_of(admin_client, bad)
    # The first batch's outcome, kept; the second's is the request's own.
    assert table.count("<td>Failed</td><td>server_error: ") == 2


def test_a_refused_batch_split_in_halves_is_in_the_history(client, api_key, fake_openai):
    good = send(client, api_key[1], chat("fine"))
    send(client, api_key[1], chat("refused [[refuse]]"))
    for _ in range(4):
        cycle()
    assert BatchRequest.objects.get(pk=good).status == Status.COMPLETED
    rows = history(good)
    assert rows[0][1:] == ("split", "invalid_request")
    assert rows[-1] == (BatchRequest.objects.get(pk=good).batch_id, "", "")


def test_claiming_records_attempts_without_a_query_per_request(client, api_key, fake_openai):
    def flush_queries(count: int) -> int:
        for n in range(count):
            send(client, api_key[1], chat(f"q{count}-{n}"))
        with CaptureQueriesContext(connection) as queries:
            services.batch_flush(force=True)
        return len(queries)

    assert flush_queries(2) == flush_queries(40)
    assert RequestAttempt.objects.count() == 42


def test_attempts_go_with_their_requests_and_outlive_their_batch(
    client, api_key, other_key, fake_openai, settings
):
    mine = send(client, api_key[1], chat("mine"))
    theirs = send(client, other_key[1], chat("theirs"))
    cycle()
    assert RequestAttempt.objects.count() == 2

    key_purge(key_id=api_key[0].pk)
    assert not RequestAttempt.objects.filter(request_id=mine).exists()

    later = timezone.now() + timedelta(seconds=settings.BATCH_RETENTION + 60)
    retention_prune(now=later)  # the batch goes; the request (kept longer here) stays
    assert history(theirs) == [(None, "", "")]
    services.requests_purge(now=later + timedelta(seconds=settings.RESULT_RETENTION))
    assert not RequestAttempt.objects.exists()
