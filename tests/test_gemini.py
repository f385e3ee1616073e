"""Gemini through the proxy (issue 16): `google-genai` pointed at a live proxy gets 422 until
its batch job has answered, then its own GenerateContentResponse; errors in Google's shape;
jobs sent to a fake Gemini API over real HTTP, inline or through the File API."""

import json

import pytest
from google import genai
from google.genai import errors, types

from batches_app.models import Batch, UpstreamFile
from requests_app.models import BatchRequest

from .engine import cycle
from .kinds import GeminiInline

pytestmark = pytest.mark.django_db(transaction=True)
Status = BatchRequest.Status
MODEL = "gemini-2.5-flash"
UPSTREAM_KEY = GeminiInline.key


@pytest.fixture(params=["v1", "v1beta"])
def gemini(request, live_server, api_key, fake_gemini) -> genai.Client:
    """google-genai at the proxy, with each API version it may be set to."""
    options = {"base_url": live_server.url, "api_version": request.param}
    return genai.Client(api_key=api_key[1], http_options=options)


def ask(client: genai.Client, text: str, **config) -> types.GenerateContentResponse:
    return client.models.generate_content(
        model=MODEL, contents=text, config=types.GenerateContentConfig(**config) if config else None
    )


def pending(client: genai.Client, text: str, **config) -> errors.ClientError:
    with pytest.raises(errors.ClientError) as raised:
        ask(client, text, **config)
    assert raised.value.code == 422, raised.value
    return raised.value


def test_the_sdk_gets_422_then_its_own_answer(gemini, fake_gemini):
    for text in ("first", "second"):
        refused = pending(gemini, text, temperature=0.2, system_instruction="Be brief.")
        assert refused.status == "FAILED_PRECONDITION"
        assert refused.details["error"]["details"][0]["reason"] == "BATCH_PENDING"
        assert refused.response.headers["retry-after"].isdigit()

    cycle()

    assert ask(gemini, "second", temperature=0.2, system_instruction="Be brief.").text == (
        "echo: second"
    )
    answer = ask(gemini, "first", temperature=0.2, system_instruction="Be brief.")
    assert answer.text == "echo: first"
    assert answer.usage_metadata.prompt_token_count == 2
    sent = fake_gemini.submitted()
    assert sorted(r["request"]["contents"][0]["parts"][0]["text"] for r in sent) == [
        "first",
        "second",
    ]
    # The SDK's own request reached the job whole: config, system instruction and model.
    assert all(r["request"]["generationConfig"] == {"temperature": 0.2} for r in sent)
    assert all(r["request"]["systemInstruction"]["parts"][0]["text"] == "Be brief." for r in sent)
    assert all(r["request"]["model"] == f"models/{MODEL}" and r["inline"] for r in sent)
    batch = Batch.objects.get()
    assert batch.upstream == "google" and batch.upstream_id.startswith("batches/")
    assert set(fake_gemini.keys) == {UPSTREAM_KEY}  # never the caller's
    assert fake_gemini.jobs == []  # an inline job is deleted once its results are in


def test_a_large_batch_goes_as_a_file_through_the_file_api(client, api_key, fake_gemini, settings):
    settings.GEMINI_INLINE_MAX_BYTES = 0
    for text in ("file a", "file b"):
        assert _post(client, api_key[1], text).status_code == 422

    cycle()

    for text in ("file a", "file b"):
        answer = _post(client, api_key[1], text)
        assert answer.status_code == 200
        assert answer.json()["candidates"][0]["content"]["parts"][0]["text"] == f"echo: {text}"
    sent = fake_gemini.submitted()
    assert len(sent) == 2 and not any(r["inline"] for r in sent)
    assert "model" not in sent[0]["request"]  # the job's model, not the line's
    assert {r["key"] for r in sent} == {
        str(pk) for pk in BatchRequest.objects.values_list("pk", flat=True)
    }
    assert UpstreamFile.objects.filter(deleted_at=None).count() == 0
    assert fake_gemini.files == []  # input and results files deleted upstream
    assert fake_gemini.jobs == []  # and the job with them


def test_gemini_usage_is_counted_and_priced_for_its_upstream(client, api_key, fake_gemini):
    from datetime import timedelta

    from django.utils import timezone

    from batches_app.spend import PriceBook, spend_by_model

    assert _post(client, api_key[1], "count me").status_code == 422
    cycle()
    request = BatchRequest.objects.get()
    # The fake reports a token per 4 characters: "count me" in, "echo: count me" out.
    assert (request.input_tokens, request.output_tokens) == (2, 4)
    [spend] = spend_by_model(since=timezone.now() - timedelta(hours=1), book=PriceBook())
    assert (spend.upstream, spend.label, spend.tokens_in, spend.tokens_out) == (
        "google",
        MODEL,
        2,
        4,
    )
    assert spend.priced and spend.spent > 0 and spend.saved == spend.spent


def test_a_request_that_failed_upstream_reaches_its_caller_with_its_status(gemini):
    pending(gemini, "bad [[status:400]]")
    cycle()
    with pytest.raises(errors.ClientError) as refused:
        ask(gemini, "bad [[status:400]]")
    assert refused.value.code == 400
    assert refused.value.status == "INVALID_ARGUMENT"
    assert refused.value.message == "Injected 400."
    assert BatchRequest.objects.get().error_code == "INVALID_ARGUMENT"


def test_a_failed_job_is_requeued_and_answered_by_the_next(client, api_key, fake_gemini):
    fake_gemini.fail_batches = 1
    assert _post(client, api_key[1], "f").status_code == 422
    cycle()
    assert BatchRequest.objects.get().status == Status.QUEUED
    cycle()
    assert BatchRequest.objects.get().status == Status.COMPLETED
    assert Batch.objects.filter(state=Batch.State.DONE).count() == 2
    assert fake_gemini.jobs == []  # the failed job too, though it had no results


def _post(client, secret: str, text: str, *, version: str = "v1beta", header="x-goog-api-key"):
    body = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    headers = {"HTTP_X_GOOG_API_KEY": secret} if header == "x-goog-api-key" else {}
    return client.post(
        f"/{version}/models/{MODEL}:generateContent",
        json.dumps(body),
        content_type="application/json",
        **headers,
    )


def test_the_key_is_x_goog_api_key_and_errors_have_googles_shape(client, api_key, fake_gemini):
    assert _post(client, api_key[1], "k").status_code == 422
    assert _post(client, api_key[1], "k", version="v1").status_code == 422
    assert BatchRequest.objects.count() == 1  # the same call under either version

    for wrong in (_post(client, "bp-wrong", "k"), _post(client, api_key[1], "k", header=None)):
        assert wrong.status_code == 401
        assert wrong.json()["error"]["status"] == "UNAUTHENTICATED"
        assert wrong.json()["error"]["code"] == 401

    def post(path: str, body) -> dict:
        answer = client.post(
            path, json.dumps(body), content_type="application/json", HTTP_X_GOOG_API_KEY=api_key[1]
        )
        return answer.status_code, answer.json()["error"]

    status, error = post(f"/v1beta/models/{MODEL}:generateContent", {"contents": "hi"})
    assert (status, error["status"]) == (400, "INVALID_ARGUMENT")
    assert "contents" in error["message"]
    status, error = post(
        f"/v1beta/models/{MODEL}:generateContent",
        {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"temperature": "hot"}},
    )
    assert status == 400 and "temperature" in error["message"]
    status, error = post("/v1beta/models/gpt-4o:generateContent", {"contents": [{"parts": []}]})
    assert (status, error["status"]) == (404, "NOT_FOUND")
    assert "GEMINI_API_KEY" in error["message"]
    assert BatchRequest.objects.count() == 1  # nothing stored for the refusals


def test_without_a_gemini_upstream_a_gemini_model_is_not_found(client, api_key, fake_openai):
    answer = _post(client, api_key[1], "nobody serves me")
    assert answer.status_code == 404
    assert answer.json()["error"]["status"] == "NOT_FOUND"
    assert BatchRequest.objects.count() == 0


# --- Hostile input: Google's 4xx, never a 5xx, nothing stored --------------------------------

GEMINI_CORPUS = [
    ("contents-empty", b'{"contents": []}'),
    ("contents-null-item", b'{"contents": [null]}'),
    ("parts-a-string", b'{"contents": [{"parts": "x"}]}'),
    ("text-a-number", b'{"contents": [{"parts": [{"text": 5}]}]}'),
    ("unknown-part-field", b'{"contents": [{"parts": [{"txt": "a"}]}]}'),
    ("unknown-top-field", b'{"contents": [{"parts": [{"text": "a"}]}], "prompt": "x"}'),
    ("config-an-array", b'{"contents": [{"parts": [{"text": "a"}]}], "generationConfig": []}'),
    (
        "config-wrong-type",
        b'{"contents": [{"parts": [{"text": "a"}]}], "generationConfig": {"topK": "x"}}',
    ),
    (
        "seed-overflow",
        b'{"contents": [{"parts": [{"text": "a"}]}], "generationConfig": {"seed": 1'
        + b"0" * 40
        + b"}}",
    ),
    (
        "deep-in-contents",
        b'{"contents": [{"parts": [{"text": "a", "x": ' + b"[" * 600 + b"]" * 600 + b"}]}]}",
    ),
    (  # a field only Vertex AI takes: the SDK would refuse to send the job
        "vertex-only-field",
        b'{"contents": [{"parts": [{"text": "a"}]}], "generationConfig": {"routingConfig": {}}}',
    ),
    (
        "inline-data-not-base64",
        b'{"contents": [{"parts": [{"inlineData": {"data": "%%%", "mimeType": "image/png"}}]}]}',
    ),
]


def _send_raw(client, secret: str, body: bytes, model: str = MODEL):
    return client.generic(
        "POST",
        f"/v1beta/models/{model}:generateContent",
        body,
        content_type="application/json",
        HTTP_X_GOOG_API_KEY=secret,
    )


@pytest.mark.parametrize(("name", "body"), GEMINI_CORPUS, ids=[n for n, _ in GEMINI_CORPUS])
def test_a_bad_generate_content_body_is_refused_in_googles_shape(
    client, api_key, fake_gemini, name, body
):
    from .test_hostile_input import assert_refused_as_google, snapshot

    before = snapshot()
    response = _send_raw(client, api_key[1], body)
    error = assert_refused_as_google(
        response.status_code, response["Content-Type"], response.content
    )
    assert error["status"] == "INVALID_ARGUMENT"
    assert snapshot() == before


def test_the_openai_corpus_is_refused_on_generate_content_too(client, api_key, fake_gemini):
    from .fuzz.corpus import CORPUS
    from .test_hostile_input import assert_refused_as_google, snapshot

    before = snapshot()
    for _name, body in CORPUS:
        response = _send_raw(client, api_key[1], body)
        assert_refused_as_google(response.status_code, response["Content-Type"], response.content)
    assert snapshot() == before


def test_the_paths_model_wins_over_one_in_the_body(client, api_key, fake_gemini):
    body = b'{"model": "models/gemini-other", "contents": [{"parts": [{"text": "m"}]}]}'
    assert _send_raw(client, api_key[1], body).status_code == 422
    assert BatchRequest.objects.get().model == MODEL


def test_the_fake_gemini_serves_in_the_foreground_until_sigterm():
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "batchproxy.fakes.gemini", "--port", "0"]
    env = os.environ | {"PYTHONPATH": str(root)}
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().split(" on ")[1].split()[0]
        client = genai.Client(api_key="k", http_options={"base_url": url})
        assert list(client.batches.list()) == []
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.stdout.close()


def test_only_a_new_call_pays_for_the_sdks_check_and_only_a_valid_key_learns_its_verdict(
    client, api_key, fake_gemini, monkeypatch
):
    assert _post(client, api_key[1], "seen").status_code == 422

    def refuse(body):
        raise ValueError("checked again")

    monkeypatch.setattr("requests_app.services.request_check", refuse)
    assert _post(client, api_key[1], "seen").status_code == 422  # stored: answered unchecked
    fresh = _post(client, api_key[1], "fresh")
    assert fresh.status_code == 400 and "checked again" in fresh.json()["error"]["message"]
    assert _post(client, "bp-wrong", "fresh").status_code == 401
    assert BatchRequest.objects.count() == 1
