"""xAI (issue 23): the OpenAI SDK through the proxy to xAI's Batch API, whose batches load an
uploaded JSONL file and hand their results back in pages, never as a file (fakes/xai.py)."""

import json
from decimal import Decimal

import openai
import pytest

from batches_app import upstreams
from batches_app.models import Batch
from batches_app.upstreams.xai import RESULTS, _batch, result_line
from requests_app.models import BatchRequest

from . import kinds
from .engine import cycle

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status


@pytest.fixture
def xai(xai_server, fake_openai, client, api_key, settings, monkeypatch):
    xai_server.reset()
    kind = kinds.Xai(xai_server, client=client, secret=api_key[1])
    kind.configure(settings, monkeypatch)
    yield kind
    assert not fake_openai.calls, "an xAI call reached the fake OpenAI"


@pytest.fixture
def sdk(live_server, api_key):
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=api_key[1], max_retries=0)


def test_the_sdk_gets_422_then_its_own_answer_through_a_named_batch(xai, sdk):
    ask = {"model": xai.model, "messages": [{"role": "user", "content": "hello grok"}]}

    with pytest.raises(openai.UnprocessableEntityError) as pending:
        sdk.chat.completions.create(**ask)
    assert pending.value.code == "batch_pending"
    cycle()
    answer = sdk.chat.completions.create(**ask)

    assert answer.choices[0].message.content == "echo: hello grok"
    operations = [operation for operation, _ in xai.fake.calls]
    assert operations[:2] == ["upload", "create"]
    assert "results" in operations  # paged from the batch: there is no output file
    assert set(xai.fake.keys) == {xai.key}
    [batch] = xai.fake.jobs
    assert batch["name"] == f"batchproxy-{Batch.objects.get().pk}"  # found again by name
    kinds.assert_each_answered_once(xai)  # and the input file deleted


def test_a_request_xai_refuses_reaches_its_caller_in_openais_shape(xai, sdk):
    ask = {"model": xai.model, "messages": [{"role": "user", "content": "no [[status:400]]"}]}
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.chat.completions.create(**ask)
    cycle()

    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(**ask)
    assert refused.value.body["type"] == "invalid_request_error"
    assert "status 400" in refused.value.body["message"]
    assert not xai.files()


def test_a_failure_of_xai_is_retried_not_handed_to_the_caller(xai, settings):
    assert xai.queue("flaky [[error:server_error]]").status_code == 422
    cycle()

    request = BatchRequest.objects.get()
    assert (request.status, request.attempts) == (Status.QUEUED, 1)
    assert request.error_code == "server_error"


def test_many_results_are_read_page_by_page(xai):
    for i in range(130):  # the fake pages 100 at a time
        assert xai.queue(f"many {i}").status_code == 422
    cycle()

    assert BatchRequest.objects.filter(status=Status.COMPLETED).count() == 130
    pages = [path for operation, path in xai.fake.calls if operation == "results"]
    assert len(pages) == 2
    kinds.assert_each_answered_once(xai)


def test_a_batch_reads_as_an_openai_batch_from_its_counters():
    counts = {"num_requests": 3, "num_pending": 1, "num_success": 2, "num_error": 0}
    batch = {
        "batch_id": "batch_1",
        "name": "batchproxy-1",
        "create_time": "2026-01-15T14:30:00Z",
        "expire_time": "2999-01-01T00:00:00Z",
        "state": counts | {"num_cancelled": 0},
    }
    running = _batch(batch)
    assert (running["status"], running["output_file_id"]) == ("in_progress", None)
    assert running["created_at"] == 1768487400
    assert running["request_counts"] == {"total": 3, "completed": 2, "failed": 0}
    done = _batch(batch | {"state": counts | {"num_pending": 0, "num_success": 3}})
    assert (done["status"], done["output_file_id"]) == ("completed", f"{RESULTS}batch_1")
    past = _batch(batch | {"expire_time": "2026-01-16T14:30:00Z"})
    assert past["status"] == "expired"
    loading = _batch(batch | {"state": {"num_requests": 0}})
    assert loading["status"] == "validating"
    cancelled = _batch(batch | {"cancel_time": "2026-01-15T15:00:00Z"})
    assert cancelled["status"] == "cancelling"
    by_xai = _batch(
        batch | {"state": counts | {"num_pending": 0}, "cancel_by_xai_message": "abuse"}
    )
    assert by_xai["status"] == "failed"
    assert by_xai["errors"]["data"][0]["message"] == "abuse"


def test_a_result_is_read_in_openais_output_line_shape():
    completion = {"id": "c1", "choices": [{"message": {"content": "hi"}}]}
    answered = {
        "batch_request_id": "7",
        "batch_result": {"response": {"chat_get_completion": completion}},
    }
    assert json.loads(result_line(answered)) == {
        "custom_id": "7",
        "response": {"status_code": 200, "body": completion},
        "error": None,
    }
    refused = {"batch_request_id": "8", "batch_result": {"error": {"code": 3, "message": "no"}}}
    line = json.loads(result_line(refused))
    assert line["response"]["status_code"] == 400
    assert line["response"]["body"]["error"]["message"] == "no"
    internal = {"batch_request_id": "9", "batch_result": {"error": {"code": 13, "message": "x"}}}
    assert json.loads(result_line(internal))["error"]["code"] == "server_error"
    broken = json.loads(result_line({"batch_request_id": "10", "batch_result": {}}))
    assert broken["error"]["code"] == "invalid_result_line"
    assert result_line({"batch_result": {}}) is None


def test_the_price_table_has_grok_models():
    from batches_app.models import ModelPrice

    price = ModelPrice.objects.get(model="grok-4.3")
    assert (price.input_per_million, price.output_per_million) == (Decimal("1.25"), Decimal("2.50"))


def test_the_default_url_and_limits_are_xais():
    xai = upstreams.Upstream(name="x", kind="xai", base_url="", key_env="", models=("grok-*",))
    assert upstreams.upstream_limits(xai) == (50_000, 25_000_000)  # BATCH_MAX_REQUESTS first
    assert upstreams.KIND_DEFAULTS["xai"].base_url == "https://api.x.ai/v1"
