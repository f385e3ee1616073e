"""The batching engine against the fake OpenAI over real HTTP (CONTRACT.md §2)."""

import orjson
import pytest

from batches_app import services
from batches_app.models import Batch, UpstreamFile
from requests_app.models import BatchRequest

from .engine import cycle

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status


def chat(text: str, model: str = "gpt-4o-mini") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


@pytest.fixture
def enqueue(post):
    def _enqueue(body: dict, endpoint: str = "chat/completions") -> str:
        response = post(f"/v1/{endpoint}", body)
        assert response.status_code == 422, response.content
        return response["X-Batch-Request-Id"]

    return _enqueue


def test_requests_are_grouped_by_endpoint_and_model(enqueue, fake_openai):
    enqueue(chat("a"))
    enqueue(chat("b"))
    enqueue(chat("c", model="gpt-4o"))
    enqueue({"model": "text-embedding-3-small", "input": "d"}, "embeddings")

    batches = services.batch_flush(force=True)

    assert sorted((b.endpoint, b.model, b.request_count) for b in batches) == [
        ("/v1/chat/completions", "gpt-4o", 1),
        ("/v1/chat/completions", "gpt-4o-mini", 2),
        ("/v1/embeddings", "text-embedding-3-small", 1),
    ]


def test_group_waits_until_size_or_age_is_reached(enqueue, fake_openai, settings):
    settings.BATCH_MAX_WAIT, settings.BATCH_MAX_REQUESTS = 300, 3
    enqueue(chat("a"))
    enqueue(chat("b"))
    assert services.batch_flush() == []

    enqueue(chat("c"))
    [batch] = services.batch_flush()
    assert batch.request_count == 3

    enqueue(chat("d"))
    settings.BATCH_MAX_WAIT = 0
    [aged] = services.batch_flush()
    assert aged.request_count == 1


def test_group_larger_than_a_batch_is_split_within_limits(enqueue, fake_openai, settings):
    settings.BATCH_MAX_REQUESTS = 2
    for i in range(5):
        enqueue(chat(f"m{i}"))
    batches = services.batch_flush(force=True)
    assert sorted(b.request_count for b in batches) == [1, 2, 2]

    settings.BATCH_MAX_REQUESTS, settings.BATCH_MAX_BYTES = 100, 450
    for i in range(5):
        enqueue(chat(f"n{i}"))
    for batch in services.batch_flush(force=True):
        assert 0 < batch.input_bytes <= 450


def test_embedding_inputs_limit_splits_batches(enqueue, fake_openai, settings):
    settings.BATCH_MAX_EMBEDDING_INPUTS = 5
    for i in range(3):
        enqueue({"model": "e", "input": [f"{i}-a", f"{i}-b", f"{i}-c"]}, "embeddings")
    batches = services.batch_flush(force=True)
    assert sorted(b.request_count for b in batches) == [1, 1, 1]


def test_input_file_lines_follow_the_contract(enqueue, fake_openai):
    request_id = enqueue(chat("hello"))
    cycle()

    [line] = fake_openai.submitted_lines()
    batch = Batch.objects.get()
    assert {k: line[k] for k in ("custom_id", "method", "url")} == {
        "custom_id": request_id,
        "method": "POST",
        "url": "/v1/chat/completions",
    }
    assert line["body"] == chat("hello")
    upstream = fake_openai.batches[batch.upstream_id]
    assert upstream["completion_window"] == "24h"
    assert upstream["metadata"]["batchproxy_batch_id"] == str(batch.pk)


def test_completed_batch_answers_each_request_and_deletes_its_files(enqueue, fake_openai, post):
    ids = {text: enqueue(chat(text)) for text in ("one", "two", "three")}
    cycle()

    for text, request_id in ids.items():
        response = post("/v1/chat/completions", chat(text))
        assert response.status_code == 200
        assert response["X-Batch-Request-Id"] == request_id
        assert response.json()["choices"][0]["message"]["content"] == f"echo: {text}"
    batch = Batch.objects.get()
    assert batch.state == Batch.State.DONE
    assert batch.upstream_status == "completed"
    assert not fake_openai.files
    assert UpstreamFile.objects.filter(deleted_at=None).count() == 0


def test_files_are_kept_when_configured(enqueue, fake_openai, settings):
    settings.DELETE_UPSTREAM_FILES = False
    enqueue(chat("keep"))
    cycle()
    assert len(fake_openai.files) == 2


def test_line_with_http_400_reaches_the_caller_unchanged(enqueue, fake_openai, post):
    enqueue(chat("bad [[status:400]]"))
    enqueue(chat("good"))
    cycle()

    bad = post("/v1/chat/completions", chat("bad [[status:400]]"))
    assert bad.status_code == 400
    assert "error" in bad.json()
    assert post("/v1/chat/completions", chat("good")).status_code == 200


def test_server_error_lines_are_retried_then_fail_for_good(enqueue, fake_openai, post, settings):
    settings.MAX_ATTEMPTS = 2
    request_id = enqueue(chat("flaky [[error:server_error]]"))
    cycle()
    assert BatchRequest.objects.get(pk=request_id).status == Status.QUEUED
    cycle()

    response = post("/v1/chat/completions", chat("flaky [[error:server_error]]"))
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "server_error"
    assert response["x-should-retry"] == "false"
    batch_ids = {line["batch_id"] for line in fake_openai.submitted_lines()}
    assert len(batch_ids) == 2


@pytest.mark.parametrize("status", [429, 500, 503])
def test_retryable_status_lines_are_requeued(enqueue, fake_openai, status):
    request_id = enqueue(chat(f"x [[status:{status}]]"))
    cycle()
    request = BatchRequest.objects.get(pk=request_id)
    assert (request.status, request.attempts, request.batch_id) == (Status.QUEUED, 1, None)


def test_expired_batch_delivers_finished_half_and_resubmits_only_the_rest(
    enqueue, fake_openai, post
):
    texts = [f"q{i}" for i in range(6)]
    for text in texts:
        enqueue(chat(text))
    fake_openai.configure(expire_after_lines=3)
    cycle()

    first = Batch.objects.get()
    assert first.upstream_status == "expired"
    finished = set(
        BatchRequest.objects.filter(status=Status.COMPLETED).values_list("body", flat=True)
    )
    assert len(finished) == 3
    assert BatchRequest.objects.filter(status=Status.QUEUED).count() == 3

    fake_openai.configure(expire_after_lines=None)
    cycle()
    for text in texts:
        assert post("/v1/chat/completions", chat(text)).status_code == 200
    lines = fake_openai.submitted_lines()
    second = [line for line in lines if line["batch_id"] != first.upstream_id]
    resubmitted = {
        orjson.dumps(line["body"], option=orjson.OPT_SORT_KEYS).decode() for line in second
    }
    assert len(lines) == 9
    assert len(resubmitted) == 3
    assert not resubmitted & finished


def test_token_limit_requeues_after_backoff_without_spending_attempts(enqueue, fake_openai):
    request_id = enqueue(chat("big"))
    fake_openai.configure(token_limit_failures=1)
    cycle()

    request = BatchRequest.objects.get(pk=request_id)
    assert (request.status, request.attempts, request.error_code) == (
        Status.QUEUED,
        0,
        "token_limit_exceeded",
    )
    assert request.not_before is not None
    assert services.batch_flush(force=True) == []  # still backing off


def test_validation_error_on_a_line_fails_that_request_and_requeues_the_others(
    enqueue, fake_openai
):
    bad = enqueue(chat("broken [[invalid]]"))
    good = enqueue(chat("fine"))
    cycle()

    assert BatchRequest.objects.get(pk=bad).status == Status.FAILED
    good_request = BatchRequest.objects.get(pk=good)
    assert (good_request.status, good_request.attempts) == (Status.QUEUED, 0)


def test_operator_cancel_requeues_or_cancels_unfinished_requests(enqueue, fake_openai, post):
    fake_openai.configure(step_seconds=3600)
    request_id = enqueue(chat("slow"))
    services.batch_flush(force=True)
    services.batches_advance(force=True)
    batch = Batch.objects.get()
    assert batch.state == Batch.State.RUNNING

    assert services.batch_cancel(batch_id=batch.pk, requeue=False)
    services.batches_advance(force=True)

    assert BatchRequest.objects.get(pk=request_id).status == Status.CANCELLED
    response = post("/v1/chat/completions", chat("slow"))
    assert response.status_code == 409
    assert services.batch_cancel(batch_id=batch.pk, requeue=False) is False


def test_purge_deletes_old_answers_and_the_same_call_starts_afresh(enqueue, fake_openai, post):
    from datetime import timedelta

    from django.utils import timezone

    first = enqueue(chat("old"))
    cycle()
    assert services.requests_purge(now=timezone.now() + timedelta(days=8)) == 1
    second = enqueue(chat("old"))
    assert second != first


def test_output_lines_are_matched_by_custom_id(enqueue, fake_openai, post):
    texts = [f"t{i}" for i in range(30)]
    for text in texts:
        enqueue(chat(text))
    cycle()
    for text in texts:
        content = post("/v1/chat/completions", chat(text)).json()["choices"][0]["message"]
        assert content["content"] == f"echo: {text}"


def test_uploaded_input_and_batch_outputs_expire_upstream_even_if_never_deleted(
    enqueue, fake_openai, settings
):
    settings.DELETE_UPSTREAM_FILES = False
    settings.UPSTREAM_FILE_EXPIRY = 7200
    enqueue(chat("expiring"))
    cycle()

    files = [f["object"] for f in fake_openai.files.values()]
    assert sorted(f["purpose"] for f in files) == ["batch", "batch_output"]
    assert all(f["expires_at"] - f["created_at"] == 7200 for f in files)
