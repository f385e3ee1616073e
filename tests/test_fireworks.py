"""Fireworks (issue 23): the OpenAI SDK through the proxy to Fireworks' batch inference jobs,
which run over datasets named by the caller and answer through signed URLs
(fakes/fireworks.py)."""

import json
from decimal import Decimal

import openai
import pytest

from batches_app import services, upstreams
from batches_app.models import Batch
from batches_app.upstreams.fireworks import _batch, result_line
from batchproxy.fakes.fireworks import SIGNED
from requests_app.models import BatchRequest

from . import kinds
from .engine import cycle

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status


@pytest.fixture
def fireworks(fireworks_server, fake_openai, client, api_key, settings, monkeypatch):
    fireworks_server.reset()
    kind = kinds.Fireworks(fireworks_server, client=client, secret=api_key[1])
    kind.configure(settings, monkeypatch)
    yield kind
    assert not fake_openai.calls, "a Fireworks call reached the fake OpenAI"


@pytest.fixture
def sdk(live_server, api_key):
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=api_key[1], max_retries=0)


def test_the_sdk_gets_422_then_its_own_answer_through_a_dataset_and_a_job(fireworks, sdk):
    ask = {"model": fireworks.model, "messages": [{"role": "user", "content": "hello fireworks"}]}

    with pytest.raises(openai.UnprocessableEntityError) as pending:
        sdk.chat.completions.create(**ask)
    assert pending.value.code == "batch_pending"
    cycle()
    answer = sdk.chat.completions.create(**ask)

    assert answer.choices[0].message.content == "echo: hello fireworks"
    operations = [operation for operation, _ in fireworks.fake.calls]
    assert operations[:3] == ["create_dataset", "upload", "create"]
    assert "signed" in operations  # the results read from their signed URL
    assert set(fireworks.fake.keys) == {fireworks.key, SIGNED}  # the key never sent there
    [job] = fireworks.fake.jobs
    assert job["model"] == fireworks.model
    assert job["name"].endswith(f"/batchproxy-{Batch.objects.get().pk}")  # found again by name
    kinds.assert_each_answered_once(fireworks)  # input and output datasets deleted


def test_a_request_fireworks_refuses_reaches_its_caller(fireworks, sdk):
    ask = {"model": fireworks.model, "messages": [{"role": "user", "content": "no [[status:400]]"}]}
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.chat.completions.create(**ask)
    cycle()

    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(**ask)
    assert refused.value.body["type"] == "invalid_request_error"
    assert not fireworks.files()


def test_a_refused_create_in_googles_error_shape_splits_the_batch_and_is_retried(fireworks):
    fireworks.inject("create", 400)
    assert fireworks.queue("one").status_code == 422
    assert fireworks.queue("two").status_code == 422
    cycle()
    refused = Batch.objects.get(state=Batch.State.DONE, upstream_id="")
    assert "HTTP 400: Injected" in refused.last_error  # {"error": {"message"}} read

    cycle()
    services.files_sweep()  # the refused batch's input dataset, as each poll tick does
    assert set(BatchRequest.objects.values_list("status", flat=True)) == {Status.COMPLETED}
    assert not fireworks.files()
    assert Batch.objects.exclude(upstream_id="").count() == 2  # one half each, not requeued


def test_a_base_url_without_the_account_waits_and_says_why(fireworks, settings):
    no_account = fireworks.fake.url.split("/accounts/")[0]  # https://api.fireworks.ai/v1
    settings.UPSTREAMS = [u | {"base_url": no_account} for u in settings.UPSTREAMS]
    assert fireworks.queue("later").status_code == 422
    cycle()
    cycle()  # the next attempt looks for an upload first: refused the same way

    assert "must name the account" in Batch.objects.get().last_error
    assert BatchRequest.objects.get().status == Status.SUBMITTED  # waiting, not failed
    assert not fireworks.fake.calls


def test_a_job_reads_as_an_openai_batch():
    job = {
        "name": "accounts/acme/batchInferenceJobs/batchproxy-1",
        "state": "JOB_STATE_FAILED",
        "status": {"code": "INVALID_ARGUMENT", "message": "model not batch-enabled"},
        "createTime": "2024-01-15T14:30:00Z",
        "inputDatasetId": "accounts/acme/datasets/batchproxy-1",
        "outputDatasetId": "accounts/acme/datasets/batchproxy-1-out",
    }
    batch = _batch(job)
    assert (batch["id"], batch["status"]) == ("batchproxy-1", "failed")
    assert batch["created_at"] == 1705329000
    assert batch["input_file_id"] == "batchproxy-1"
    assert batch["output_file_id"] is None
    assert batch["errors"]["data"][0]["message"] == "model not batch-enabled"
    done = _batch(job | {"state": "JOB_STATE_EXPIRED"})
    assert (done["status"], done["output_file_id"]) == ("expired", "batchproxy-1-out")
    assert _batch(job | {"state": "JOB_STATE_PENDING"})["status"] == "validating"


def test_a_result_line_is_read_in_openais_shape():
    completion = {"id": "c1", "choices": [{"message": {"content": "hi"}}]}
    bare = json.loads(result_line(json.dumps({"custom_id": "7", "response": completion})))
    assert bare["response"] == {"status_code": 200, "body": completion}
    assert bare["error"] is None
    openai_shaped = {"custom_id": "8", "response": {"status_code": 400, "body": {}}, "error": None}
    assert json.loads(result_line(json.dumps(openai_shaped))) == openai_shaped
    assert json.loads(result_line('{"custom_id": "9", "resp'))["custom_id"] == "9"


def test_the_price_table_has_fireworks_models():
    from batches_app.models import ModelPrice

    price = ModelPrice.objects.get(model="accounts/fireworks/models/llama-v3p3-70b-instruct")
    assert (price.input_per_million, price.output_per_million) == (Decimal("0.90"), Decimal("0.90"))


def test_the_default_limits_are_fireworks():
    fireworks = upstreams.Upstream(
        name="f", kind="fireworks", base_url="", key_env="", models=("accounts/*",)
    )
    assert upstreams.upstream_limits(fireworks) == (50_000, 150_000_000)


def test_the_check_wants_a_base_url_naming_the_account(settings, monkeypatch):
    from ops_app.checks import upstreams_check

    monkeypatch.setenv("FW_KEY", "fw-test")
    upstream = {"name": "fw", "kind": "fireworks", "base_url": "", "key_env": "FW_KEY"}
    settings.UPSTREAMS = [upstream | {"models": ["accounts/fireworks/models/*"]}]
    assert [e.id for e in upstreams_check(None)] == ["ops_app.E014"]
    settings.UPSTREAMS[0]["base_url"] = "https://api.fireworks.ai/v1/accounts/acme"
    assert upstreams_check(None) == []
