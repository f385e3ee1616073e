"""Anthropic through the proxy (issue 16): the official `anthropic` SDK pointed at a live proxy
gets 422 until its Message Batch has answered, then its own Message; errors in Anthropic's
shape; batches sent to a fake Anthropic over real HTTP."""

import json

import anthropic
import pytest

from batches_app import services
from batches_app.models import Batch
from requests_app.models import BatchRequest

from .engine import cycle

pytestmark = pytest.mark.django_db(transaction=True)
Status = BatchRequest.Status
MODEL = "claude-sonnet-4-20250514"


@pytest.fixture
def claude(live_server, api_key, fake_anthropic) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=live_server.url, api_key=api_key[1], max_retries=0)


def ask(client: anthropic.Anthropic, text: str):
    return client.messages.create(
        model=MODEL, max_tokens=256, messages=[{"role": "user", "content": text}]
    )


def test_the_sdk_gets_422_then_its_own_message(claude, fake_anthropic):
    for text in ("first", "second"):
        with pytest.raises(anthropic.UnprocessableEntityError) as pending:
            ask(claude, text)
        assert pending.value.response.headers["retry-after"].isdigit()
        assert pending.value.body["type"] == "error"
        assert pending.value.body["error"]["type"] == "batch_pending"

    cycle()

    assert ask(claude, "second").content[0].text == "echo: second"
    assert ask(claude, "first").content[0].text == "echo: first"
    assert sorted(r["params"]["messages"][0]["content"] for r in fake_anthropic.submitted()) == [
        "first",
        "second",
    ]
    batch = Batch.objects.get()
    assert batch.upstream == "claude" and batch.upstream_id.startswith("msgbatch_")
    assert set(fake_anthropic.keys) == {"sk-ant-upstream-test-secret"}  # never the caller's
    assert ("delete", f"/v1/messages/batches/{batch.upstream_id}") in fake_anthropic.calls
    assert fake_anthropic.batches == []  # deleted upstream once ingested


def test_a_request_errored_upstream_reaches_its_caller_with_that_status(claude):
    with pytest.raises(anthropic.UnprocessableEntityError):
        ask(claude, "bad [[status:400]]")
    cycle()
    with pytest.raises(anthropic.BadRequestError) as refused:
        ask(claude, "bad [[status:400]]")
    assert refused.value.body["error"]["type"] == "invalid_request_error"


def test_an_expired_batch_delivers_what_finished_and_resubmits_the_rest(
    client, api_key, fake_anthropic
):
    fake_anthropic.expire_after = 1
    for text in ("a", "b", "c"):
        assert _post(client, api_key[1], text).status_code == 422
    cycle()
    assert BatchRequest.objects.filter(status=Status.COMPLETED).count() == 1
    requeued = BatchRequest.objects.filter(status=Status.QUEUED, error_code="batch_expired")
    assert requeued.count() == 2

    fake_anthropic.expire_after = None
    cycle()

    assert BatchRequest.objects.filter(status=Status.COMPLETED).count() == 3
    assert len(fake_anthropic.submitted()) == 3 + 2  # the finished one was not sent again


def _post(client, secret: str, text: str, *, header: str = "x-api-key"):
    body = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": text}]}
    headers = {"HTTP_X_API_KEY": secret} if header == "x-api-key" else {}
    if header == "bearer":
        headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    return client.post("/v1/messages", json.dumps(body), content_type="application/json", **headers)


def test_the_key_is_taken_as_x_api_key_or_bearer_and_errors_have_anthropics_shape(
    client, api_key, fake_anthropic
):
    assert _post(client, api_key[1], "k").status_code == 422
    assert _post(client, api_key[1], "k", header="bearer").status_code == 422
    assert BatchRequest.objects.count() == 1  # the same call, however the key came

    wrong = _post(client, "bp-wrong", "k")
    assert wrong.status_code == 401
    assert wrong.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": wrong.json()["error"]["message"]},
    }
    streamed = client.post(
        "/v1/messages",
        json.dumps({"model": MODEL, "max_tokens": 9, "messages": [], "stream": True}),
        content_type="application/json",
        HTTP_X_API_KEY=api_key[1],
    )
    assert streamed.status_code == 400
    assert streamed.json()["error"]["type"] == "invalid_request_error"
    assert "stream" in streamed.json()["error"]["message"].lower()
    unserved = client.post(
        "/v1/messages",
        json.dumps({"model": "gpt-4o", "max_tokens": 9, "messages": []}),
        content_type="application/json",
        HTTP_X_API_KEY=api_key[1],
    )
    assert unserved.status_code == 404
    assert unserved.json()["error"]["type"] == "not_found_error"
    assert BatchRequest.objects.count() == 1  # nothing stored for the refusals


@pytest.mark.parametrize("fault", [500, "disconnect", "lost_response"])
def test_a_failed_create_is_retried_and_never_makes_a_second_batch(
    client, api_key, fake_anthropic, fault
):
    for text in ("x", "y"):
        assert _post(client, api_key[1], text).status_code == 422
    fake_anthropic.inject("create", fault)
    services.batch_flush(force=True)
    assert services.batches_advance(force=True).failures

    cycle()

    assert len(fake_anthropic.submitted()) == 2  # created once: a lost answer is found again
    assert BatchRequest.objects.filter(status=Status.COMPLETED).count() == 2


@pytest.mark.parametrize("operation", ["retrieve", "results", "delete"])
def test_failed_polls_reads_and_deletes_are_retried(client, api_key, fake_anthropic, operation):
    assert _post(client, api_key[1], "p").status_code == 422
    fake_anthropic.inject(operation, 503)
    cycle()
    cycle()
    assert BatchRequest.objects.get().status == Status.COMPLETED
    assert Batch.objects.get().state == Batch.State.DONE
    assert fake_anthropic.batches == []  # deleted upstream in the end


@pytest.mark.parametrize(
    "point", ["after_claim", "before_create", "after_create", "mid_ingest", "after_ingest_file"]
)
def test_a_worker_killed_at_any_step_loses_nothing_and_submits_once(
    client, api_key, fake_openai, fake_anthropic, point
):
    """As tests/test_crash.py does for OpenAI's kinds: the worker dies at `point`, the next
    one finishes the step (the batch created before the crash is found, not made again)."""
    from .test_crash import lease_free
    from .workers import CRASHED, run, wait_for

    texts = [f"crash {i}" for i in range(5)]
    for text in texts:
        assert _post(client, api_key[1], text).status_code == 422
    crashed = run(fake_openai, "tick", crash_at=point, INGEST_CHUNK_LINES=2)
    assert crashed.returncode == CRASHED, crashed.stderr[-3000:]
    wait_for(lease_free, timeout=2, what="the dead worker's lease to be released")
    again = run(fake_openai, "tick", INGEST_CHUNK_LINES=2)
    assert again.returncode == 0, again.stderr[-3000:]

    submitted = [r["custom_id"] for r in fake_anthropic.submitted()]
    assert sorted(submitted) == sorted(
        str(pk) for pk in BatchRequest.objects.values_list("pk", flat=True)
    )
    answers = {
        json.loads(body)["messages"][0]["content"]: json.loads(response)["content"][0]["text"]
        for body, response in BatchRequest.objects.values_list("body", "response_body")
    }
    assert answers == {text: f"echo: {text}" for text in texts}
    assert Batch.objects.get().state == Batch.State.DONE
    assert fake_anthropic.batches == []
