"""A bad result never wedges a batch (issue 20, item 8), for every kind of upstream
(tests/kinds.py): an unreadable line fails (or requeues) its request alone while the others are
served; a result file gone upstream ends the batch with its requests requeued; and every state
a batch can be in has a bound past which the scheduled step ends it."""

from datetime import timedelta

import orjson
import pytest
from django.utils import timezone

from batches_app import services
from batches_app.models import Batch
from requests_app.models import BatchRequest

from .kinds import cases
from .test_faults import tick, ticks_until_done

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status
# Gemini's inline jobs hand their results back in one JSON document, which has no lines to break.
LINE_KINDS = [kind for (kind,) in cases([()], needs=lambda row: ["upload"])] + ["anthropic"]


@pytest.fixture
def upstream(kind, settings):
    settings.OPENAI_TIMEOUT = 1.0  # as in test_faults: 0.5 s timed out unasked on a loaded machine
    settings.OPENAI_MAX_RETRIES = 0
    kind.hold_timeouts(1.5)
    return kind


def _answered(kind, request: BatchRequest) -> str:
    return kind.answer_of(orjson.loads(request.response_body))


@pytest.mark.parametrize("kind", LINE_KINDS, indirect=True)
def test_a_truncated_result_line_fails_its_request_alone_and_the_batch_ends(upstream, settings):
    for text in ("good 0", "good 1", "bad [[truncate]]"):
        assert upstream.queue(text).status_code == 422

    tick()  # upload and create
    tick()  # poll, ingest
    first = Batch.objects.get()
    assert first.state == Batch.State.DONE  # not left ingesting, re-reading its file
    for request in BatchRequest.objects.all():
        text = upstream.text_of(orjson.loads(request.body))
        if text.startswith("good"):
            assert request.status == Status.COMPLETED
            assert _answered(upstream, request) == f"echo: {text}"
        else:  # its line names it (it is failed) or not even that (it has no result)
            assert (request.status, request.attempts) == (Status.QUEUED, 1)
            assert request.error_code in ("invalid_result_line", "missing_result")

    ticks_until_done()

    bad = BatchRequest.objects.get(status=Status.FAILED)
    assert bad.attempts == settings.MAX_ATTEMPTS  # retried by the usual rules, then failed
    assert BatchRequest.objects.filter(status=Status.COMPLETED).count() == 2
    assert not Batch.objects.exclude(state=Batch.State.DONE).exists()
    assert len(upstream.upstream_batches()) == settings.MAX_ATTEMPTS
    assert not upstream.left_upstream()


def test_a_result_file_gone_upstream_ends_the_batch_and_requeues_its_requests(upstream):
    for text in ("a", "b"):
        assert upstream.queue(text).status_code == 422
    upstream.inject("read", 404)

    tick()
    tick()
    first = Batch.objects.get()
    assert first.state == Batch.State.DONE
    assert set(BatchRequest.objects.values_list("status", "attempts", "error_code")) == {
        (Status.QUEUED, 1, "missing_result")
    }

    ticks_until_done()
    assert set(BatchRequest.objects.values_list("status", "attempts")) == {(Status.COMPLETED, 2)}
    assert len(upstream.upstream_batches()) == 2
    assert not upstream.left_upstream()


def _past_bound(seconds: int) -> None:
    """Time moved past a state's bound, not slept."""
    late = timezone.now() - timedelta(seconds=seconds + 60)
    Batch.objects.update(state_since=late, upstream_created_at=late)


def test_a_batch_that_cannot_be_submitted_ends_past_its_bound(upstream, settings):
    assert upstream.queue("a").status_code == 422
    first_call = "upload" if "upload" in upstream.operations else "create"
    upstream.inject(first_call, 500, times=50)
    tick()
    batch = Batch.objects.get()
    assert batch.state in (Batch.State.BUILDING, Batch.State.UPLOADED)
    assert batch.times_out_at == batch.state_since + timedelta(
        seconds=settings.BATCH_SUBMIT_TIMEOUT
    )

    _past_bound(settings.BATCH_SUBMIT_TIMEOUT)
    services.batches_advance(force=True)

    batch.refresh_from_db()
    assert batch.state == Batch.State.DONE
    assert "Not submitted upstream" in batch.last_error
    assert set(BatchRequest.objects.values_list("status", "batch", "error_code")) == {
        (Status.QUEUED, None, "batch_timed_out")
    }


def test_a_running_batch_that_cannot_be_polled_ends_past_its_bound(upstream, settings):
    assert upstream.queue("a").status_code == 422
    upstream.run_for(3600)
    tick()
    upstream.inject("retrieve", 404, times=50)  # the batch vanished upstream
    assert tick().failures
    batch = Batch.objects.get()
    assert batch.state == Batch.State.RUNNING

    _past_bound(settings.BATCH_STUCK_AFTER)
    services.batches_advance(force=True)

    batch.refresh_from_db()
    assert (batch.state, batch.upstream_status) == (Batch.State.DONE, "expired")
    assert set(BatchRequest.objects.values_list("status", "batch", "error_code")) == {
        (Status.QUEUED, None, "batch_expired")
    }


def test_a_batch_whose_results_cannot_be_read_ends_past_its_bound(upstream, settings):
    assert upstream.queue("a").status_code == 422
    tick()
    upstream.inject("read", 503, times=50)
    assert tick().failures
    assert tick().failures  # read again and again, within the bound
    batch = Batch.objects.get()
    assert batch.state == Batch.State.INGESTING
    assert batch.times_out_at == batch.state_since + timedelta(
        seconds=settings.BATCH_INGEST_TIMEOUT
    )

    _past_bound(settings.BATCH_INGEST_TIMEOUT)
    services.batches_advance(force=True)

    batch.refresh_from_db()
    assert batch.state == Batch.State.DONE
    assert "Results not read" in batch.last_error
    assert set(BatchRequest.objects.values_list("status", "batch", "error_code")) == {
        (Status.QUEUED, None, "missing_result")
    }


def test_the_admin_shows_when_a_batch_state_times_out(admin_client, settings):
    batch = Batch.objects.create(endpoint="/v1/chat/completions", model="gpt-4o-mini")
    page = admin_client.get(f"/admin/batches_app/batch/{batch.pk}/change/")
    assert page.status_code == 200
    assert b"times out at" in page.content.lower()
    expected = batch.state_since + timedelta(seconds=settings.BATCH_SUBMIT_TIMEOUT)
    assert batch.times_out_at == expected
    done = Batch.objects.create(endpoint="/v1/chat/completions", model="m", state="done")
    assert done.times_out_at is None


def test_a_cancelled_batch_past_its_submit_bound_settles_as_the_operator_asked(upstream, settings):
    assert upstream.queue("a").status_code == 422
    first_call = "upload" if "upload" in upstream.operations else "create"
    upstream.inject(first_call, 500, times=50)
    tick()
    Batch.objects.update(cancel_mode=Batch.CancelMode.REQUEUE)

    _past_bound(settings.BATCH_SUBMIT_TIMEOUT)
    services.batches_advance(force=True)

    assert Batch.objects.get().state == Batch.State.DONE
    assert set(BatchRequest.objects.values_list("status", "attempts", "error_code")) == {
        (Status.QUEUED, 0, "batch_cancelled")
    }
