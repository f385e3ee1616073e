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


# --- Synchronous sends: deadlines, and groups too small for a job ------------------------------


@pytest.fixture
def sync(bedrock, settings):
    """Bedrock with the caches of forecasts, prices and the flex table fresh."""
    from batches_app import forecast
    from batches_app.flex import flex_forget
    from batches_app.receipts import prices_forget

    settings.SYNC_BACKOFF = 0.01
    for forget in (forecast.forecast_forget, flex_forget, prices_forget):
        forget()
    yield bedrock
    for forget in (forecast.forecast_forget, flex_forget, prices_forget):
        forget()


def flex_for(model: str) -> None:
    """List a Bedrock model at the flex tier (none is by default)."""
    from batches_app.flex import flex_forget
    from batches_app.models import FlexModel

    FlexModel.objects.create(kind="bedrock", model=model)
    flex_forget()


def with_headers(client, **headers):
    """boto3 with the proxy's own headers on every call (X-Batch-Deadline, ...)."""

    def add(request, **_):
        for name, value in headers.items():
            request.headers[name] = value

    client.meta.events.register("before-sign.bedrock-runtime.*", add)
    return client


def tick():
    from batches_app import tiers

    return tiers.deadlines_tick(send=tiers.request_send)


def min_requests(settings, monkeypatch, least: int) -> None:
    from batchproxy.settings import upstream_from_env

    monkeypatch.setenv("UPSTREAM_BEDROCK_TEST_MIN_REQUESTS", str(least))
    settings.UPSTREAMS = [upstream_from_env("bedrock-test")]


def tiers_sent(fake) -> list[str]:
    return [call["service_tier"] for call in fake.sync_calls]


@pytest.mark.parametrize("flex", [False, True], ids=["standard", "flex"])
def test_converse_with_a_deadline_is_answered_by_a_synchronous_send(sync, signed, flex):
    if flex:
        flex_for(sync.model)
    ask = converse_ask("due soon")
    caller = with_headers(signed, **{"X-Batch-Deadline": "30"})
    with pytest.raises(ClientError) as pending:
        caller.converse(modelId=sync.model, **ask)
    assert pending.value.response["Error"]["Code"] == "batch_pending"
    assert tick().routed == 1
    answer = caller.converse(modelId=sync.model, **ask)

    assert answer["output"]["message"]["content"][0]["text"] == "echo: due soon"
    tier = "flex" if flex else "standard"
    assert answer["ResponseMetadata"]["HTTPHeaders"]["x-batch-tier"] == tier
    [sent] = sync.fake.sync_calls
    assert (sent["operation"], sent["model"]) == ("converse", sync.model)
    assert sent["service_tier"] == ("flex" if flex else "default")
    assert sent["body"] == ask  # the caller's body, the model in the path
    assert not sync.fake.jobs and not sync.fake.objects  # no job, nothing in S3
    request = BatchRequest.objects.get()
    assert (request.tier, request.input_tokens, request.output_tokens) == (tier, 2, 4)
    assert request.cost_usd == request.standard_cost_usd / (2 if flex else 1)


def test_invoke_model_is_sent_at_flex_in_its_header(sync, signed):
    flex_for(sync.model)
    body = json.dumps(
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "native now"}],
        }
    )
    caller = with_headers(signed, **{"X-Batch-Deadline": "30"})
    with pytest.raises(ClientError):
        caller.invoke_model(modelId=sync.model, body=body)
    tick()
    answered = caller.invoke_model(modelId=sync.model, body=body)

    assert json.loads(answered["body"].read())["content"][0]["text"] == "echo: native now"
    assert answered["ResponseMetadata"]["HTTPHeaders"]["x-batch-tier"] == "flex"
    [sent] = sync.fake.sync_calls
    assert (sent["operation"], sent["service_tier"]) == ("invoke", "flex")
    assert sent["body"] == json.loads(body)


def test_a_requests_own_error_from_its_send_reaches_its_caller_in_bedrocks_shape(sync, signed):
    ask = converse_ask("refused [[status:400]]")
    caller = with_headers(signed, **{"X-Batch-Deadline": "30"})
    with pytest.raises(ClientError):
        caller.converse(modelId=sync.model, **ask)
    tick()

    with pytest.raises(ClientError) as refused:
        caller.converse(modelId=sync.model, **ask)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "status 400" in refused.value.response["Error"]["Message"]
    assert len(sync.fake.sync_calls) == 1  # its answer, not retried
    assert BatchRequest.objects.get().status == Status.COMPLETED


def test_a_throttled_flex_send_falls_back_to_the_standard_tier(sync, client, api_key):
    import requests

    flex_for(sync.model)
    configured = requests.post(sync.fake.url + "/_fake/configure", json={"refuse_flex": True})
    assert configured.status_code == 200 and sync.fake.refuse_flex
    path = f"/model/{sync.model}/converse"
    body = json.dumps(converse_ask("busy flex"))
    ask = {"content_type": "application/json", "HTTP_AUTHORIZATION": f"Bearer {api_key[1]}"}
    assert client.post(path, body, HTTP_X_BATCH_DEADLINE="30", **ask).status_code == 422
    for _ in range(2):
        tick()

    response = client.post(path, body, **ask)
    assert response.status_code == 200, response.content
    assert response["X-Batch-Tier"] == "standard"
    assert tiers_sent(sync.fake) == ["flex", "default"]


def test_each_request_reaches_bedrock_once(sync, client, api_key):
    path = f"/model/{sync.model}/converse"
    ask = {"content_type": "application/json", "HTTP_AUTHORIZATION": f"Bearer {api_key[1]}"}
    bodies = [json.dumps(converse_ask(f"once {n}")) for n in range(3)]
    for body in bodies:
        assert client.post(path, body, HTTP_X_BATCH_DEADLINE="30", **ask).status_code == 422
    for _ in range(3):
        tick()

    for body in bodies:
        assert client.post(path, body, **ask).status_code == 200
    texts = sorted(
        call["body"]["messages"][0]["content"][0]["text"] for call in sync.fake.sync_calls
    )
    assert texts == ["once 0", "once 1", "once 2"]
    assert not sync.fake.jobs


def small_group_answered(sync, settings, monkeypatch) -> BatchRequest:
    """Two requests, under a minimum of three: they wait, then go synchronously (flex)."""
    from batches_app import services, tiers

    min_requests(settings, monkeypatch, 3)
    flex_for(sync.model)
    settings.BATCH_MAX_WAIT, settings.BATCH_MIN_WAIT = 0, 3600  # a batch would be due now
    for text in ("small a", "small b"):
        assert sync.queue(text).status_code == 422

    assert services.batch_flush() == []
    assert set(BatchRequest.objects.values_list("status", "sync_tier")) == {(Status.QUEUED, "")}
    settings.BATCH_MIN_WAIT = 0  # its oldest has waited long enough
    assert services.batch_flush() == []
    tiers.sends_dispatch(send=tiers.request_send)

    assert not sync.fake.jobs and not Batch.objects.exists()
    assert tiers_sent(sync.fake) == ["flex", "flex"]
    for request in BatchRequest.objects.all():
        assert (request.status, request.tier) == (Status.COMPLETED, "flex")
        assert request.cost_usd == request.standard_cost_usd / 2  # the receipt's tier
    assert sync.queue("small a")["X-Batch-Tier"] == "flex"
    return BatchRequest.objects.order_by("created_at").first()


def test_a_group_under_the_minimum_waits_then_goes_at_its_cheapest_synchronous_tier(
    sync, settings, monkeypatch, admin_client
):
    """...and the admin's receipt says which tier answered."""
    import re

    from django.urls import reverse

    request = small_group_answered(sync, settings, monkeypatch)
    page = admin_client.get(reverse("admin:requests_app_batchrequest_change", args=[request.pk]))
    assert page.status_code == 200
    tier = re.search(r'field-tier">.*?<div class="readonly">([^<]*)<', page.text, re.S)
    assert tier and tier[1].strip().lower() == "flex"


def test_mode_now_is_answered_at_the_standard_tier_by_the_first_call(sync, client, api_key):
    path = f"/model/{sync.model}/converse"
    response = client.post(
        path,
        json.dumps(converse_ask("right now")),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {api_key[1]}",
        HTTP_X_BATCH_MODE="now",
    )
    assert response.status_code == 200, response.content
    assert response["X-Batch-Tier"] == "standard"
    assert response.json()["output"]["message"]["content"][0]["text"] == "echo: right now"
    assert tiers_sent(sync.fake) == ["default"]


def test_a_throttled_send_waits_and_is_sent_again(sync, client, api_key, settings):
    from datetime import timedelta

    from django.utils import timezone

    from batches_app import tiers

    settings.SYNC_BACKOFF = 5
    sync.fake.inject("converse", 429)  # ThrottlingException
    path = f"/model/{sync.model}/converse"
    body = json.dumps(converse_ask("slow down"))
    ask = {"content_type": "application/json", "HTTP_AUTHORIZATION": f"Bearer {api_key[1]}"}
    assert client.post(path, body, HTTP_X_BATCH_DEADLINE="600", **ask).status_code == 422
    tick()
    waiting = BatchRequest.objects.get()
    assert waiting.status == Status.SUBMITTED and waiting.sync_not_before > timezone.now()
    assert client.post(path, body, **ask).status_code == 422  # the 429 is not its answer

    later = waiting.sync_not_before + timedelta(seconds=1)
    tiers.deadlines_tick(send=tiers.request_send, now=later)
    response = client.post(path, body, **ask)
    assert response.status_code == 200 and response["X-Batch-Tier"] == "standard"
    assert [op for op, _ in sync.fake.calls if op == "converse"] == ["converse", "converse"]


def test_a_group_at_the_minimum_goes_as_a_job(sync, settings, monkeypatch):
    min_requests(settings, monkeypatch, 3)
    settings.BATCH_MAX_WAIT = 0
    for n in range(3):
        sync.queue(f"enough {n}")
    cycle(force=False)

    [job] = sync.fake.jobs
    assert job["totalRecordCount"] == 3
    assert not sync.fake.sync_calls
    assert set(BatchRequest.objects.values_list("status", "tier")) == {(Status.COMPLETED, "batch")}


def test_a_forced_flush_sends_a_group_under_the_kinds_minimum_at_once(sync, settings, monkeypatch):
    from batches_app import tiers

    min_requests(settings, monkeypatch, 0)  # the kind's own: 100
    assert upstreams.upstream_min_requests(upstreams.upstream_get("bedrock-test")) == 100
    sync.queue("one of 99")
    cycle()  # what flush_batches does
    tiers.sends_dispatch(send=tiers.request_send)

    assert not sync.fake.jobs
    assert BatchRequest.objects.get().tier == "standard"
    assert tiers_sent(sync.fake) == ["default"]


def test_the_runtime_endpoint_is_the_regions_or_the_setting(monkeypatch):
    from batches_app.upstreams.bedrock import BedrockTransport

    def runtime_of(base_url: str) -> str | None:
        upstream = upstreams.Upstream(
            name="b", kind="bedrock", base_url=base_url, key_env="", models=("*",)
        )
        return BedrockTransport(upstream, "").runtime_url

    assert (
        runtime_of("https://bedrock.eu-west-1.amazonaws.com")
        == "https://bedrock-runtime.eu-west-1.amazonaws.com"
    )
    assert runtime_of("http://127.0.0.1:9495") == "http://127.0.0.1:9495"  # a fake serves both
    monkeypatch.setenv("UPSTREAM_B_RUNTIME_ENDPOINT_URL", "https://vpce.example/runtime")
    assert runtime_of("https://bedrock.eu-west-1.amazonaws.com") == "https://vpce.example/runtime"
    other = upstreams.Upstream(name="o", kind="openai", base_url="", key_env="", models=("*",))
    assert upstreams.upstream_min_requests(other) == 1
