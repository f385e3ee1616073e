"""Anthropic through the proxy (issue 16): the official `anthropic` SDK pointed at a live proxy
gets 422 until its Message Batch has answered, then its own Message; errors in Anthropic's
shape; batches sent to a fake Anthropic over real HTTP."""

import json

import anthropic
import pytest

from batches_app.models import Batch
from requests_app.models import BatchRequest

from .engine import cycle
from .kinds import Anthropic

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
    assert set(fake_anthropic.keys) == {Anthropic.key}  # never the caller's
    assert ("delete", f"/v1/messages/batches/{batch.upstream_id}") in fake_anthropic.calls
    assert fake_anthropic.batches == []  # deleted upstream once ingested


def test_a_request_errored_upstream_reaches_its_caller_with_that_status(claude):
    with pytest.raises(anthropic.UnprocessableEntityError):
        ask(claude, "bad [[status:400]]")
    cycle()
    with pytest.raises(anthropic.BadRequestError) as refused:
        ask(claude, "bad [[status:400]]")
    assert refused.value.body["error"]["type"] == "invalid_request_error"


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
    unserved = client.post(
        "/v1/messages",
        json.dumps({"model": "gpt-4o", "max_tokens": 9, "messages": []}),
        content_type="application/json",
        HTTP_X_API_KEY=api_key[1],
    )
    assert unserved.status_code == 404
    assert unserved.json()["error"]["type"] == "not_found_error"
    assert BatchRequest.objects.count() == 1  # nothing stored for the refusals
