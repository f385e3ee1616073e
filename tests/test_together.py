"""Together (issue 23): the OpenAI SDK through the proxy to Together's Batch API, which uploads,
creates and reports batches its own way (fakes/together.py)."""

import openai
import pytest

from batches_app import services, upstreams
from batches_app.models import Batch
from batches_app.upstreams.together import _batch
from requests_app.models import BatchRequest

from . import kinds
from .engine import cycle

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status


@pytest.fixture
def together(together_server, fake_openai, client, api_key, settings, monkeypatch):
    together_server.reset()
    kind = kinds.Together(together_server, client=client, secret=api_key[1])
    kind.configure(settings, monkeypatch)
    settings.OPENAI_MAX_RETRIES = 0
    yield kind
    assert not fake_openai.calls, "a Together call reached the fake OpenAI"


@pytest.fixture
def sdk(live_server, api_key):
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=api_key[1], max_retries=0)


def test_the_sdk_gets_422_then_its_own_answer_through_togethers_calls(together, sdk):
    ask = {"model": together.model, "messages": [{"role": "user", "content": "hello together"}]}

    with pytest.raises(openai.UnprocessableEntityError) as pending:
        sdk.chat.completions.create(**ask)
    assert pending.value.code == "batch_pending"
    cycle()
    answer = sdk.chat.completions.create(**ask)

    assert answer.choices[0].message.content == "echo: hello together"
    operations = [operation for operation, _ in together.fake.calls]
    assert operations[:2] == ["upload", "create"]  # /files/upload with purpose batch-api
    assert set(together.fake.keys) == {together.key}
    kinds.assert_each_answered_once(together)  # input, output and error files deleted


def test_a_request_together_refuses_reaches_its_caller(together, sdk):
    ask = {"model": together.model, "messages": [{"role": "user", "content": "no [[status:400]]"}]}
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.chat.completions.create(**ask)
    cycle()

    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(**ask)
    assert refused.value.body["type"] == "invalid_request_error"
    assert not together.files()


def test_a_refused_create_in_togethers_error_shape_requeues_and_is_retried(together, settings):
    together.inject("create", 400)
    assert together.queue("again").status_code == 422
    cycle()
    first = Batch.objects.get()
    assert first.state == Batch.State.DONE
    assert "Injected HTTP 400" in first.last_error  # Together's {"error": "..."} read

    cycle()
    services.files_sweep()  # the refused batch's input file, as each poll tick does
    assert BatchRequest.objects.get().status == Status.COMPLETED
    assert not together.files()


def test_a_job_reads_as_an_openai_batch():
    job = {
        "id": "01234567-8901-2345-6789-012345678901",
        "input_file_id": "file-in",
        "status": "FAILED",
        "created_at": "2024-01-15T14:30:00Z",
        "endpoint": "/v1/chat/completions",
        "error": "input file invalid",
        "output_file_id": "",
    }
    batch = _batch(job)
    assert batch["status"] == "failed"
    assert batch["created_at"] == 1705329000
    assert batch["errors"] == {"data": [{"code": "batch_failed", "message": "input file invalid"}]}
    assert batch["output_file_id"] is None
    assert _batch(job | {"status": "IN_PROGRESS"})["errors"] is None


def test_the_default_limits_are_togethers():
    together = upstreams.Upstream(
        name="t", kind="together", base_url="", key_env="", models=("meta-llama/*",)
    )
    assert upstreams.upstream_limits(together) == (50_000, 100_000_000)
