"""Mistral (issue 23): callers use Mistral's own SDK (`chat.complete`, the proxy as its server
URL) or OpenAI's; the proxy sends their requests as Mistral batch jobs through the `mistralai`
SDK, to a fake built from Mistral's docs (fakes/mistral.py)."""

import openai
import pytest
from mistralai.client import Mistral, errors

from batches_app.models import Batch
from requests_app.models import BatchRequest

from . import kinds
from .engine import cycle

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status


@pytest.fixture
def mistral(mistral_server, fake_openai, client, api_key, settings, monkeypatch):
    mistral_server.reset()
    kind = kinds.Mistral(mistral_server, client=client, secret=api_key[1])
    kind.configure(settings, monkeypatch)
    yield kind
    assert not fake_openai.calls, "a Mistral call reached the fake OpenAI"


@pytest.fixture
def caller(live_server, api_key) -> Mistral:
    """Mistral's SDK with the proxy as its server URL and a proxy key as its API key."""
    return Mistral(api_key=api_key[1], server_url=live_server.url)


def ask(caller: Mistral, text: str):
    return caller.chat.complete(
        model="mistral-small-latest", messages=[{"role": "user", "content": text}]
    )


def test_the_mistral_sdk_gets_422_then_its_own_answer(mistral, caller):
    with pytest.raises(errors.MistralError) as pending:
        ask(caller, "bonjour")
    assert pending.value.status_code == 422
    assert '"batch_pending"' in pending.value.body
    cycle()

    answer = ask(caller, "bonjour")

    assert answer.choices[0].message.content == "echo: bonjour"
    operations = [operation for operation, _ in mistral.fake.calls]
    assert operations[:2] == ["upload", "create"]
    [line] = mistral.fake.submitted()
    assert set(line) == {"custom_id", "body", "batch_id"}  # Mistral's line: no method, no url
    assert set(mistral.fake.keys) == {mistral.key}  # never the caller's key
    kinds.assert_each_answered_once(mistral)  # input, output and error files deleted


def test_the_openai_sdk_reaches_mistral_too(mistral, live_server, api_key):
    sdk = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=api_key[1], max_retries=0)
    request = {"model": mistral.model, "messages": [{"role": "user", "content": "salut"}]}
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.chat.completions.create(**request)
    cycle()

    answer = sdk.chat.completions.create(**request)

    assert answer.choices[0].message.content == "echo: salut"
    [job] = mistral.fake.jobs
    assert (job["model"], job["endpoint"], job["status"]) == (
        mistral.model,
        "/v1/chat/completions",
        "SUCCESS",
    )


def test_a_request_mistral_refuses_reaches_its_caller_with_that_status(mistral, caller):
    with pytest.raises(errors.MistralError):
        ask(caller, "non [[status:400]]")
    cycle()

    with pytest.raises(errors.MistralError) as refused:
        ask(caller, "non [[status:400]]")
    assert refused.value.status_code == 400
    assert not mistral.files()


def test_a_refused_job_in_mistrals_error_shape_requeues_the_requests(mistral):
    mistral.inject("create", 400)
    assert mistral.queue("encore").status_code == 422
    cycle()

    batch = Batch.objects.get()
    assert batch.state == Batch.State.DONE
    assert "Injected HTTP 400" in batch.last_error  # Mistral's error body, read
    assert BatchRequest.objects.get().status == Status.QUEUED


def test_a_job_past_its_timeout_delivers_what_finished_and_requeues_the_rest(mistral):
    mistral.expire_after(1)
    for text in ("un", "deux"):
        assert mistral.queue(text).status_code == 422
    cycle()

    assert [job["status"] for job in mistral.fake.jobs] == ["TIMEOUT_EXCEEDED"]
    assert BatchRequest.objects.filter(status=Status.COMPLETED).count() == 1
    assert BatchRequest.objects.get(status=Status.QUEUED).error_code == "batch_expired"
