"""Bedrock (issue 23): boto3's bedrock-runtime through the proxy (its endpoint_url) to Bedrock's
batch inference jobs over S3 (fakes/bedrock.py: the job API, and moto's S3 behind it)."""

import json

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from batches_app import upstreams
from batches_app.models import Batch
from batches_app.upstreams.bedrock import result_line
from requests_app.models import BatchRequest

from . import kinds
from .engine import cycle

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status


@pytest.fixture
def bedrock(bedrock_server, fake_openai, client, api_key, settings, monkeypatch):
    bedrock_server.reset()
    kind = kinds.Bedrock(bedrock_server, client=client, secret=api_key[1])
    kind.configure(settings, monkeypatch)
    yield kind
    assert not fake_openai.calls, "a Bedrock call reached the fake OpenAI"


def runtime(live_server, **credentials):
    """boto3's bedrock-runtime client with the proxy as its endpoint, retries off."""
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=live_server.url,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
        **credentials,
    )


@pytest.fixture
def signed(live_server, api_key, monkeypatch):
    """SigV4, with the proxy key as the access key id."""
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)
    return runtime(live_server, aws_access_key_id=api_key[1], aws_secret_access_key="not-checked")


def converse_ask(text: str) -> dict:
    return {"messages": [{"role": "user", "content": [{"text": text}]}]}


def test_converse_gets_422_then_its_own_answer_through_s3_and_a_job(bedrock, signed):
    ask = converse_ask("hello bedrock")
    with pytest.raises(ClientError) as pending:
        signed.converse(modelId=bedrock.model, **ask)
    assert pending.value.response["Error"]["Code"] == "batch_pending"
    assert pending.value.response["ResponseMetadata"]["HTTPStatusCode"] == 422
    cycle()
    answer = signed.converse(modelId=bedrock.model, **ask)

    assert answer["output"]["message"]["content"][0]["text"] == "echo: hello bedrock"
    [job] = bedrock.fake.jobs
    assert job["modelId"] == bedrock.model
    assert job["modelInvocationType"] == "Converse"
    assert job["jobName"] == f"batchproxy-{Batch.objects.get().pk}"  # found again by name
    assert set(bedrock.fake.keys) == {bedrock.key}  # the proxy's AWS identity, upstream
    request = BatchRequest.objects.get()
    assert (request.input_tokens, request.output_tokens) == (4, 5)  # Converse's usage read
    kinds.assert_each_answered_once(bedrock)  # input and output objects deleted


def test_a_bedrock_api_key_is_a_bearer(bedrock):
    """botocore sends AWS_BEARER_TOKEN_BEDROCK as a bearer, over HTTPS only: the proxy key there
    (the proxy behind TLS), as the test client sends it here."""
    pending = bedrock.queue("by api key")
    assert pending.status_code == 422
    assert pending["x-amzn-ErrorType"] == "batch_pending"
    assert "message" in pending.json()


def test_a_wrong_key_is_refused_in_bedrocks_shape(bedrock, live_server):
    wrong = runtime(live_server, aws_access_key_id="bp-wrong", aws_secret_access_key="x")
    with pytest.raises(ClientError) as refused:
        wrong.converse(modelId=bedrock.model, **converse_ask("no"))
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert not BatchRequest.objects.exists()


def test_invoke_model_runs_as_an_invoke_model_job(bedrock, signed):
    body = json.dumps(
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "native"}],
        }
    )
    with pytest.raises(ClientError):
        signed.invoke_model(modelId=bedrock.model, body=body)
    cycle()
    answer = json.loads(signed.invoke_model(modelId=bedrock.model, body=body)["body"].read())

    assert answer["content"][0]["text"] == "echo: native"
    assert [job["modelInvocationType"] for job in bedrock.fake.jobs] == ["InvokeModel"]


def test_a_record_bedrock_refuses_reaches_its_caller(bedrock, signed):
    ask = converse_ask("no [[status:400]]")
    with pytest.raises(ClientError):
        signed.converse(modelId=bedrock.model, **ask)
    cycle()

    with pytest.raises(ClientError) as refused:
        signed.converse(modelId=bedrock.model, **ask)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert not bedrock.files()


def test_streaming_and_bad_input_are_refused_at_once(bedrock, signed):
    with pytest.raises(ClientError) as streamed:
        signed.converse_stream(modelId=bedrock.model, **converse_ask("stream"))
    assert streamed.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as empty:
        signed.converse(modelId=bedrock.model, messages=[])
    assert empty.value.response["Error"]["Code"] == "ValidationException"
    assert not BatchRequest.objects.exists()


def test_a_model_no_upstream_serves_is_404(bedrock, signed):
    with pytest.raises(ClientError) as unknown:
        signed.converse(modelId="meta.llama3-8b-instruct-v1:0", **converse_ask("x"))
    assert unknown.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_a_missing_s3_place_waits_and_says_why(bedrock, monkeypatch):
    monkeypatch.delenv("UPSTREAM_BEDROCK_TEST_S3_URI")
    assert bedrock.queue("later").status_code == 422
    cycle()

    assert "UPSTREAM_BEDROCK_TEST_S3_URI is not set" in Batch.objects.get().last_error
    assert BatchRequest.objects.get().status == Status.SUBMITTED  # waiting, not failed


def test_a_record_reads_in_openais_output_line_shape():
    output = {"output": {"message": {"content": [{"text": "hi"}]}}}
    answered = json.loads(result_line(json.dumps({"recordId": "7", "modelOutput": output})))
    assert answered == {
        "custom_id": "7",
        "response": {"status_code": 200, "body": output},
        "error": None,
    }
    error = {"recordId": "8", "error": {"errorCode": 400, "errorMessage": "bad"}}
    refused = json.loads(result_line(json.dumps(error)))
    assert refused["response"] == {
        "status_code": 400,
        "body": {"message": "bad", "__type": "ValidationException"},
    }
    throttled = {"recordId": "9", "error": {"errorCode": 429, "errorMessage": "slow"}}
    assert json.loads(result_line(json.dumps(throttled)))["error"]["code"] == "server_error"
    assert json.loads(result_line('{"recordId": "10", "modelOu'))["custom_id"] == "10"


def test_the_price_table_has_bedrock_model_ids():
    from decimal import Decimal

    from batches_app.models import ModelPrice

    price = ModelPrice.objects.get(model="anthropic.claude-3-haiku-20240307-v1:0")
    assert (price.input_per_million, price.output_per_million) == (Decimal("0.25"), Decimal("1.25"))


def test_the_default_limits_are_bedrocks():
    bedrock = upstreams.Upstream(
        name="b", kind="bedrock", base_url="", key_env="", models=("anthropic.*",)
    )
    assert upstreams.upstream_limits(bedrock)[0] == 50_000
