"""The whole loop over real HTTP: the official SDK -> a live proxy -> the fake OpenAI -> back."""

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from requests_app.models import BatchRequest

from .engine import cycle

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CALLS = {
    "responses": lambda c, text: c.responses.create(model="gpt-4.1-mini", input=text),
    "chat": lambda c, text: c.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
    ),
    "completions": lambda c, text: c.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=text
    ),
    "embeddings": lambda c, text: c.embeddings.create(model="text-embedding-3-small", input=text),
    "moderations": lambda c, text: c.moderations.create(model="omni-moderation-latest", input=text),
}


def pending(call) -> str:
    with pytest.raises(openai.UnprocessableEntityError) as excinfo:
        call()
    assert excinfo.value.code == "batch_pending"
    assert int(excinfo.value.response.headers["retry-after"]) >= 1
    return excinfo.value.response.headers["x-batch-request-id"]


@pytest.mark.parametrize("with_v1", [True, False], ids=["v1", "no-v1"])
def test_sdk_gets_422_then_its_own_answer_on_every_endpoint(
    sdk, live_server, api_key, fake_openai, with_v1
):
    client = (
        sdk
        if with_v1
        else openai.OpenAI(base_url=live_server.url, api_key=api_key[1], max_retries=0)
    )
    for name, call in CALLS.items():
        for who in ("alice", "bob"):
            pending(lambda call=call, text=f"{name} for {who}": call(client, text))
    cycle()

    for who in ("alice", "bob"):
        assert (
            client.responses.create(model="gpt-4.1-mini", input=f"responses for {who}").output_text
            == f"echo: responses for {who}"
        )
        chat = CALLS["chat"](client, f"chat for {who}")
        assert chat.choices[0].message.content == f"echo: chat for {who}"
        completion = CALLS["completions"](client, f"completions for {who}")
        assert completion.choices[0].text == f"echo: completions for {who}"
        assert len(CALLS["moderations"](client, f"moderations for {who}").results) == 1
    alice = CALLS["embeddings"](client, "embeddings for alice").data[0].embedding
    bob = CALLS["embeddings"](client, "embeddings for bob").data[0].embedding
    assert len(alice) == 8 and all(isinstance(v, float) for v in alice)
    assert alice != bob
    # The SDK asked for base64 by default and decoded it: the proxy passed it through untouched.
    lines = fake_openai.submitted_lines()
    [line] = [x for x in lines if x["body"].get("input") == "embeddings for alice"]
    assert line["body"]["encoding_format"] == "base64"


def test_identical_calls_from_many_threads_make_one_upstream_line(sdk, fake_openai):
    def ask(_):
        return pending(lambda: CALLS["chat"](sdk, "same question"))

    with ThreadPoolExecutor(16) as pool:
        ids = set(pool.map(ask, range(32)))

    assert len(ids) == 1
    assert BatchRequest.objects.count() == 1
    cycle()
    assert len(fake_openai.submitted_lines()) == 1
    assert CALLS["chat"](sdk, "same question").choices[0].message.content == "echo: same question"


def test_per_request_upstream_400_reaches_the_sdk_as_400(sdk, fake_openai):
    pending(lambda: CALLS["chat"](sdk, "nope [[status:400]]"))
    cycle()
    with pytest.raises(openai.BadRequestError) as excinfo:
        CALLS["chat"](sdk, "nope [[status:400]]")
    assert excinfo.value.status_code == 400


def test_batch_request_status_endpoint(sdk, live_server, api_key, fake_openai):
    request_id = pending(lambda: CALLS["chat"](sdk, "status?"))
    cycle()
    status = sdk.get(f"/batch_requests/{request_id}", cast_to=object)
    assert status["status"] == "completed"
    assert status["attempts"] == 1
    assert status["batch"]["status"] == "completed"
