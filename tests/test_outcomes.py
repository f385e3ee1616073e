"""Outcomes of CONTRACT.md §2 not already covered by test_engine.py."""

from datetime import timedelta

import openai
import pytest
from django.utils import timezone

from batches_app import services
from batches_app.models import Batch
from requests_app.models import BatchRequest

from .engine import cycle

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status


def chat(text: str) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


@pytest.fixture
def enqueue(post):
    def _enqueue(text: str) -> str:
        response = post("/v1/chat/completions", chat(text))
        assert response.status_code == 422, response.content
        return response["X-Batch-Request-Id"]

    return _enqueue


def lines_of(fake, request_id: str) -> list[str]:
    return [line["batch_id"] for line in fake.submitted_lines() if line["custom_id"] == request_id]


def test_batch_cancelled_upstream_delivers_finished_lines_and_requeues_the_rest(
    enqueue, fake_openai
):
    ids = [enqueue(f"c{i}") for i in range(5)]
    fake_openai.configure(stall_after_lines=2)
    services.batch_flush(force=True)
    services.batches_advance(force=True)
    batch = Batch.objects.get()
    # Someone cancels it in OpenAI's dashboard, not through the proxy.
    sdk = openai.OpenAI(base_url=fake_openai.url, api_key="sk-other", max_retries=0)
    sdk.batches.cancel(batch.upstream_id)
    services.batches_advance(force=True)

    batch.refresh_from_db()
    assert batch.upstream_status == "cancelled"
    done = set(BatchRequest.objects.filter(status=Status.COMPLETED).values_list("pk", flat=True))
    assert len(done) == 2
    requeued = BatchRequest.objects.filter(status=Status.QUEUED)
    assert set(requeued.values_list("error_code", "batch")) == {("batch_cancelled", None)}

    fake_openai.configure(stall_after_lines=None)
    cycle()
    for request_id in ids:
        batches = lines_of(fake_openai, request_id)
        if request_id in {str(pk) for pk in done}:
            assert batches == [batch.upstream_id]  # a finished line is never resubmitted
        else:
            assert len(batches) == 2 and batches[0] == batch.upstream_id
    assert BatchRequest.objects.filter(status=Status.COMPLETED).count() == 5


def test_token_limit_backoff_doubles_per_deferral_up_to_six_hours(enqueue, fake_openai, settings):
    settings.TOKEN_LIMIT_BACKOFF = 3600
    request_id = enqueue("huge")
    fake_openai.configure(token_limit_failures=4)

    delays = []
    for _ in range(4):
        BatchRequest.objects.update(not_before=timezone.now() - timedelta(seconds=1))
        cycle()
        request = BatchRequest.objects.get(pk=request_id)
        assert (request.status, request.attempts) == (Status.QUEUED, 0)
        delays.append(round((request.not_before - timezone.now()).total_seconds() / 60))

    assert delays == [60, 120, 240, 360]
    BatchRequest.objects.update(not_before=timezone.now() - timedelta(seconds=1))
    cycle()
    assert BatchRequest.objects.get(pk=request_id).status == Status.COMPLETED


def test_rate_limited_line_fails_with_its_code_after_max_attempts_in_new_batches(
    enqueue, fake_openai, post, settings
):
    settings.MAX_ATTEMPTS = 3
    request_id = enqueue("busy [[status:429]]")
    for _ in range(3):
        cycle()

    request = BatchRequest.objects.get(pk=request_id)
    assert (request.status, request.attempts, request.error_code) == (
        Status.FAILED,
        3,
        "rate_limit_exceeded",
    )
    # Each attempt went into a new batch, never back into the one that failed it.
    assert len(set(lines_of(fake_openai, request_id))) == 3
    response = post("/v1/chat/completions", chat("busy [[status:429]]"))
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


def test_validation_error_fails_exactly_the_line_named(enqueue, fake_openai):
    ids = [enqueue(f"v{i}") for i in range(2)]
    bad = enqueue("v2 [[invalid]]")
    ids += [enqueue(f"v{i}") for i in range(3, 5)]
    cycle()

    assert BatchRequest.objects.get(pk=bad).status == Status.FAILED
    cycle()
    for request_id in ids:
        request = BatchRequest.objects.get(pk=request_id)
        assert (request.status, request.attempts) == (Status.COMPLETED, 1)
        first, second = lines_of(fake_openai, request_id)
        assert first != second


def test_ingest_stamps_updated_at_on_every_line_it_writes(enqueue, fake_openai):
    for i in range(3):
        enqueue(f"stamp {i}")
    services.batch_flush(force=True)
    services.batches_advance(force=True)  # upload and create
    claimed = timezone.now()
    BatchRequest.objects.update(updated_at=claimed - timedelta(hours=1))

    cycle()

    stamps = BatchRequest.objects.values_list("status", "updated_at")
    assert {status for status, _ in stamps} == {Status.COMPLETED}
    assert all(stamp >= claimed for _, stamp in stamps)
