"""Vertex AI (issue 23): google-genai with `vertexai=True` and an API key (express mode) reaches
the proxy at Vertex's paths. With an upstream of kind `vertex` its calls go as Vertex AI batch
prediction jobs over Cloud Storage (fakes/vertex.py: the job API and Cloud Storage's JSON API);
without one, a Gemini upstream serves them as any Gemini caller."""

import threading

import orjson
import pytest
from google import genai
from google.genai import errors

from batches_app.models import Batch
from batches_app.upstreams.vertex import result_line
from requests_app.models import BatchRequest

from . import kinds
from .engine import cycle

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def vertex(vertex_server, fake_openai, client, api_key, settings, monkeypatch):
    vertex_server.reset()
    kind = kinds.Vertex(vertex_server, client=client, secret=api_key[1])
    kind.configure(settings, monkeypatch)
    settings.OPENAI_MAX_RETRIES = 0
    yield kind
    assert not fake_openai.calls, "a Vertex call reached the fake OpenAI"


@pytest.fixture
def caller(live_server, api_key):
    """google-genai in Vertex AI express mode, the proxy as its endpoint."""
    return genai.Client(
        vertexai=True, api_key=api_key[1], http_options={"base_url": live_server.url}
    )


def ask(caller, text: str):
    return caller.models.generate_content(model="gemini-2.5-flash", contents=text)


def pending(caller, text: str) -> None:
    with pytest.raises(errors.ClientError) as first:
        ask(caller, text)
    assert first.value.code == 422
    assert first.value.details["error"]["details"][0]["reason"] == "BATCH_PENDING"


def test_each_vertex_caller_gets_422_then_its_own_answer_from_one_job(vertex, caller):
    texts = [f"vertex caller {n}" for n in range(3)]
    threads = [threading.Thread(target=pending, args=(caller, text)) for text in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cycle()

    for text in texts:
        assert ask(caller, text).text == f"echo: {text}"
    [job] = vertex.fake.history
    assert job["model"] == "publishers/google/models/gemini-2.5-flash"
    assert job["displayName"] == f"batchproxy-{Batch.objects.get().pk}"  # found again by name
    [source] = job["inputConfig"]["gcsSource"]["uris"]
    assert source.startswith("gs://batchproxy-test/batches/input/")
    assert set(vertex.fake.keys) == {vertex.key}  # the proxy's token, upstream
    assert len(vertex.sent()) == 3  # each request reached the upstream once
    kinds.assert_each_answered_once(vertex)  # inputs, predictions and the job deleted
    usage = {(r.input_tokens, r.output_tokens) for r in BatchRequest.objects.all()}
    assert usage == {(4, 6)}  # the response's usageMetadata read


def test_a_request_vertex_refuses_reaches_its_caller_alone(vertex, caller):
    pending(caller, "no [[status:400]]")
    pending(caller, "yes")
    cycle()

    with pytest.raises(errors.ClientError) as refused:
        ask(caller, "no [[status:400]]")
    assert refused.value.code == 400
    assert refused.value.status == "INVALID_ARGUMENT"
    assert refused.value.message == "Injected 400."
    assert ask(caller, "yes").text == "echo: yes"
    assert len(vertex.sent()) == 2
    assert not vertex.left_upstream()


def test_requests_go_labelled_and_results_are_matched_by_label_not_order(vertex):
    for text in ("first", "second", "third", "fourth"):
        assert vertex.queue(text).status_code == 422
    cycle()

    for line in vertex.sent():
        assert set(line) == {"contents", "labels"}
    answers = {
        vertex.text_of(orjson.loads(body)): vertex.answer_of(orjson.loads(response))
        for body, response in BatchRequest.objects.values_list("body", "response_body")
    }
    assert answers == {text: f"echo: {text}" for text in ("first", "second", "third", "fourth")}


def test_a_vertex_only_field_is_taken_for_a_vertex_model_and_labels_kept(vertex, caller):
    config = {"routing_config": {"auto_mode": {}}, "labels": {"team": "search"}}
    with pytest.raises(errors.ClientError) as first:
        caller.models.generate_content(model=vertex.model, contents="routed", config=config)
    assert first.value.code == 422  # the Gemini API's batch would refuse routingConfig
    cycle()

    answer = caller.models.generate_content(model=vertex.model, contents="routed", config=config)
    assert answer.text == "echo: routed"
    [sent] = vertex.sent()
    assert "routingConfig" in sent["generationConfig"]  # as the caller's SDK sent it
    pk = str(BatchRequest.objects.get().pk)
    assert sent["labels"] == {"team": "search", "batchproxy_request": pk}


def test_a_prediction_line_says_how_its_request_ended():
    request = {"contents": [], "labels": {"batchproxy_request": "7"}}
    answered = orjson.loads(result_line(orjson.dumps({"request": request, "response": {"a": 1}})))
    ok = {"status_code": 200, "body": {"a": 1}}
    assert answered == {"custom_id": "7", "response": ok, "error": None}
    throttled = '{"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}'
    line = {"request": request, "status": f"Too Many Requests: {throttled}"}
    retried = orjson.loads(result_line(orjson.dumps(line)))
    assert retried["response"] is None and retried["error"]["code"] == "server_error"
    garbled = orjson.loads(result_line(b'{"request": {"labels": {"batchproxy_request": "9"}'))
    assert garbled["custom_id"] == "9" and garbled["error"]["code"] == "invalid_result_line"


def test_a_missing_cloud_storage_place_waits_and_says_why(vertex, monkeypatch):
    monkeypatch.delenv("UPSTREAM_VERTEX_TEST_GCS_URI")
    assert vertex.queue("later").status_code == 422
    cycle()

    batch = Batch.objects.get()
    assert batch.state != Batch.State.DONE
    assert "UPSTREAM_VERTEX_TEST_GCS_URI is not set" in batch.last_error
    assert not vertex.fake.calls


def test_without_a_vertex_upstream_the_gemini_upstream_serves_vertex_callers(caller, fake_gemini):
    pending(caller, "from vertex")
    cycle()

    assert ask(caller, "from vertex").text == "echo: from vertex"
    [sent] = fake_gemini.submitted()
    assert sent["request"]["contents"][0]["parts"][0]["text"] == "from vertex"


def test_a_wrong_key_is_refused_in_googles_shape(live_server, vertex):
    wrong = genai.Client(
        vertexai=True, api_key="bp-wrong", http_options={"base_url": live_server.url}
    )
    with pytest.raises(errors.ClientError) as refused:
        ask(wrong, "no")
    assert refused.value.code == 401
    assert not BatchRequest.objects.exists()


def test_a_try_out_sends_versioned_gemini_ids_to_its_fake_vertex(
    vertex_server, fake_openai, gemini_server, client, api_key, settings
):
    """A try-out's fake Vertex takes `gemini-*-001` ids, with its own project, bucket and a
    placeholder token; the fake Gemini the other gemini-* models."""
    from batchproxy.tryout import tryout_upstreams

    vertex_server.reset()
    gemini_server.reset()
    fakes = {"openai": fake_openai.url, "vertex": vertex_server.url, "gemini": gemini_server.url}
    settings.TRY_OUT = {"fakes": fakes}
    settings.UPSTREAMS = tryout_upstreams(settings.TRY_OUT)
    body = {"contents": [{"role": "user", "parts": [{"text": "try"}]}]}
    for model in ("gemini-2.0-flash-001", "gemini-2.5-flash"):
        queued = client.post(
            f"/v1beta1/publishers/google/models/{model}:generateContent",
            orjson.dumps(body),
            content_type="application/json",
            HTTP_X_GOOG_API_KEY=api_key[1],
        )
        assert queued.status_code == 422
    cycle()

    assert dict(Batch.objects.values_list("model", "upstream")) == {
        "gemini-2.0-flash-001": "vertex",
        "gemini-2.5-flash": "gemini",
    }
    assert BatchRequest.objects.filter(status=BatchRequest.Status.COMPLETED).count() == 2
    assert set(vertex_server.keys) == {"fake-vertex"}
    [job] = vertex_server.history
    assert job["name"].startswith("projects/batchproxy-try-out/locations/us-central1/")
    assert job["inputConfig"]["gcsSource"]["uris"][0].startswith("gs://batchproxy-fake/")
    assert not vertex_server.objects


# --- Credentialed callers: the project paths, the proxy key as their bearer token ----------------


@pytest.fixture
def credentialed(live_server, api_key):
    """google-genai with a project, a location and Google credentials whose access token is the
    proxy key: a token with no expiry and no refresh token is sent as it is, never refreshed."""
    from google.oauth2.credentials import Credentials

    def make(token: str) -> genai.Client:
        return genai.Client(
            vertexai=True,
            project="callers-project",
            location="europe-west4",
            credentials=Credentials(token=token),
            http_options={"base_url": live_server.url},
        )

    return make(api_key[1]), make


def test_a_credentialed_caller_gets_422_then_its_answer_at_the_project_path(vertex, credentialed):
    caller, _ = credentialed
    pending(caller, "with credentials")
    pending(caller, "and another")
    cycle()

    assert ask(caller, "with credentials").text == "echo: with credentials"
    assert ask(caller, "and another").text == "echo: and another"
    assert len(vertex.sent()) == 2
    kinds.assert_each_answered_once(vertex)


def test_the_project_path_takes_the_bearer_and_refuses_a_wrong_one(vertex, credentialed, client):
    _, make = credentialed
    with pytest.raises(errors.ClientError) as refused:
        ask(make("bp-wrong"), "no")
    assert refused.value.code == 401
    assert refused.value.status == "UNAUTHENTICATED"
    assert not BatchRequest.objects.exists()

    body = orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "x"}]}]})
    path = "/v1/projects/p/locations/global/publishers/google/models/gemini-2.5-flash"
    for suffix, status in ((":generateContent", 401), (":countTokens", 404), ("/x:y", 404)):
        answer = client.post(path + suffix, body, content_type="application/json")
        assert answer.status_code == status, suffix


# --- Deadlines: answered now, through generateContent on the upstream's project ----------------


@pytest.fixture
def due(vertex, client, api_key, settings):
    """A Vertex call with a deadline its batch cannot meet (the fake's jobs held unfinished)."""
    from batches_app import forecast
    from batches_app.flex import flex_forget
    from batches_app.receipts import prices_forget

    for forget in (forecast.forecast_forget, flex_forget, prices_forget):
        forget()
    settings.SYNC_BACKOFF = 0.01
    vertex.fake.step_seconds = 3600
    body = orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "due soon"}]}]})
    path = f"/v1beta1/publishers/google/models/{vertex.model}:generateContent"

    def call(**headers):
        return client.post(
            path, body, content_type="application/json", HTTP_X_GOOG_API_KEY=api_key[1], **headers
        )

    assert call(HTTP_X_BATCH_DEADLINE="30").status_code == 422
    yield call
    for forget in (forecast.forecast_forget, flex_forget, prices_forget):
        forget()


def tick():
    from batches_app import tiers

    return tiers.deadlines_tick(send=tiers.request_send)


def test_a_vertex_deadline_is_answered_at_the_standard_tier(vertex, due):
    tick()
    response = due()
    assert response.status_code == 200, response.content
    assert response["X-Batch-Tier"] == "standard"
    assert vertex.answer_of(response.json()) == "echo: due soon"
    [sent] = vertex.fake.sync_calls
    assert sent["service_tier"] == "standard"
    assert sent["path"] == (
        "/v1/projects/batchproxy-test/locations/us-central1/publishers/google/models/"
        f"{vertex.model}:generateContent"
    )
    assert not vertex.fake.history  # no job made
    assert set(vertex.fake.keys) == {vertex.key}


@pytest.mark.parametrize("refusal", [None, 429, 400], ids=["flex", "refused", "not-offered"])
def test_a_listed_vertex_model_goes_flex_paygo_then_standard_when_refused(vertex, due, refusal):
    from batches_app.models import FlexModel

    FlexModel.objects.create(kind="vertex", model=vertex.model)
    if refusal == 429:
        vertex.fake.refuse_flex = True
    elif refusal:  # Flex PayGo not offered for this model or location: says nothing of the request
        vertex.fake.inject("generate", refusal)
    for _ in range(2):
        tick()
    response = due()
    assert response.status_code == 200, response.content
    assert response["X-Batch-Tier"] == ("flex" if refusal is None else "standard")
    tiers_sent = [call["service_tier"] for call in vertex.fake.sync_calls]  # an injected 400
    assert tiers_sent == {None: ["flex"], 429: ["flex", "standard"], 400: ["standard"]}[refusal]
    generated = [op for op, _ in vertex.fake.calls if op == "generate"]
    assert len(generated) == (1 if refusal is None else 2)
    assert not vertex.fake.history


def test_a_request_vertex_refuses_at_the_standard_tier_is_its_answer(
    vertex, client, api_key, settings
):
    settings.SYNC_BACKOFF = 0.01
    body = orjson.dumps({"contents": [{"role": "user", "parts": [{"text": "bad [[status:400]]"}]}]})
    path = f"/v1/publishers/google/models/{vertex.model}:generateContent"
    headers = {"content_type": "application/json", "HTTP_X_GOOG_API_KEY": api_key[1]}
    response = client.post(path, body, HTTP_X_BATCH_MODE="now", **headers)
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert len(vertex.fake.sync_calls) == 1


def test_predictions_without_their_label_are_retried_then_fail_for_good(vertex, settings):
    """Google's docs show a prediction line carrying its request back but do not say that the
    request's `labels` survive: a line without ours names no request, so the request is
    settled as missing (retried, at most MAX_ATTEMPTS jobs), never guessed by its place."""
    vertex.fake.drop_labels = True
    settings.MAX_ATTEMPTS = 2
    assert vertex.queue("unlabelled").status_code == 422
    for _ in range(3):
        cycle()

    request = BatchRequest.objects.get()
    assert request.status == BatchRequest.Status.FAILED
    assert request.error_code == "missing_result"
    assert len(vertex.sent()) == 2  # one job an attempt
    assert vertex.queue("unlabelled").status_code == 502
    line = {"request": {"contents": []}, "response": {"candidates": []}}
    assert result_line(orjson.dumps(line)) is None
