"""images/generations and images/edits through the official SDK, and large answers.

The JSON form of images/edits is what the Batch API takes; the SDK sends it when told to
(`image=[]`, the references in `images`, and `Content-Type: application/json`).
"""

import base64
import io
import tracemalloc
from datetime import timedelta

import openai
import pytest
from django.utils import timezone

from batches_app import services
from batches_app.models import Batch, ModelPrice
from batches_app.outcomes import RESPONSE_CHUNK_CHARS, lines_apply
from batchproxy.fakes.openai import PNG_MAGIC
from requests_app.models import BatchRequest, ResponseChunk

from .engine import cycle

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
FIVE_MB = 5 * 1024 * 1024


def generate_gpt_image(client, prompt):
    return client.images.generate(model="gpt-image-1", prompt=prompt, size="1024x1024")


def generate_dall_e(client, prompt, **extra):
    return client.images.generate(model="dall-e-3", prompt=prompt, quality="standard", **extra)


def edit_by_url(client, prompt, *urls):
    return client.images.edit(
        model="gpt-image-1",
        prompt=prompt,
        image=[],
        extra_body={"images": [{"image_url": url} for url in urls]},
        extra_headers={"Content-Type": "application/json"},
    )


def pending(call) -> str:
    with pytest.raises(openai.UnprocessableEntityError) as excinfo:
        call()
    assert excinfo.value.code == "batch_pending"
    return excinfo.value.response.headers["x-batch-request-id"]


def image_of(answer, index: int = 0) -> bytes:
    content = base64.b64decode(answer.data[index].b64_json)
    assert content.startswith(PNG_MAGIC)
    return content[len(PNG_MAGIC) :].rstrip(b"\0")


@pytest.mark.parametrize("with_v1", [True, False], ids=["v1", "no-v1"])
def test_sdk_gets_422_then_the_image_of_its_own_call(live_server, api_key, fake_openai, with_v1):
    base_url = f"{live_server.url}/v1" if with_v1 else live_server.url
    client = openai.OpenAI(base_url=base_url, api_key=api_key[1], max_retries=0)
    urls = ("https://example.com/cat.png", "https://example.com/hat.png")
    for who in ("alice", "bob"):
        pending(lambda who=who: generate_gpt_image(client, f"a fox for {who}"))
        pending(lambda who=who: generate_dall_e(client, f"a lake for {who}"))
        pending(lambda who=who: edit_by_url(client, f"a hat for {who}", *urls))
    cycle()

    for who in ("alice", "bob"):
        generated = generate_gpt_image(client, f"a fox for {who}")
        assert image_of(generated) == f"echo: a fox for {who}".encode()
        assert generated.usage.output_tokens > 0
        dall_e = generate_dall_e(client, f"a lake for {who}")
        assert dall_e.data[0].url.startswith("https://")
        assert dall_e.data[0].revised_prompt == f"echo: a lake for {who}"
        edited = edit_by_url(client, f"a hat for {who}", *urls)
        assert image_of(edited) == f"echo: a hat for {who} on {', '.join(urls)}".encode()
    # One endpoint and one model per batch, as OpenAI requires.
    batches = {(b["endpoint"], b["model"]) for b in fake_openai.batches.values()}
    assert batches == {
        ("/v1/images/generations", "gpt-image-1"),
        ("/v1/images/generations", "dall-e-3"),
        ("/v1/images/edits", "gpt-image-1"),
    }
    [edit_line, *_] = [x for x in fake_openai.submitted_lines() if x["url"] == "/v1/images/edits"]
    assert edit_line["body"]["images"] == [{"image_url": url} for url in urls]


def test_dall_e_b64_answer_and_images_counted_for_per_image_prices(sdk, fake_openai):
    pending(lambda: generate_dall_e(sdk, "two boats", n=2, response_format="b64_json"))
    cycle()
    answer = generate_dall_e(sdk, "two boats", n=2, response_format="b64_json")
    assert [image_of(answer, i) for i in (0, 1)] == [b"echo: two boats"] * 2
    request = BatchRequest.objects.get()
    assert request.output_images == 2
    assert Batch.objects.get().output_images == 2
    price = ModelPrice.objects.get(model="dall-e-3")
    assert price.per_image > 0
    assert price.synchronous_cost(0, 0, 2) == 2 * price.per_image


def test_multipart_image_edit_is_refused_with_how_to_send_json(sdk):
    with pytest.raises(openai.BadRequestError) as excinfo:
        sdk.images.edit(
            model="gpt-image-1", prompt="a hat", image=("cat.png", io.BytesIO(PNG_MAGIC))
        )
    assert excinfo.value.code == "unsupported_content_type"
    assert "JSON form" in excinfo.value.message and "image_url" in excinfo.value.message
    assert not BatchRequest.objects.exists()


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/images/generations", {"model": "gpt-image-1"}, "prompt"),
        ("/v1/images/edits", {"model": "gpt-image-1", "prompt": "x"}, "images"),
        ("/v1/images/edits", {"model": "gpt-image-1", "prompt": "x", "images": []}, "images"),
    ],
)
def test_image_call_without_prompt_or_images_is_400(post, path, body, param):
    response = post(path, body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert not BatchRequest.objects.exists()


def test_large_answer_is_stored_in_pieces_and_streamed_whole(sdk, fake_openai):
    prompt = f"a big picture [[image_bytes:{FIVE_MB}]]"
    pending(lambda: generate_gpt_image(sdk, prompt))
    cycle()
    answer = generate_gpt_image(sdk, prompt)
    assert image_of(answer) == f"echo: {prompt}".encode()
    request = BatchRequest.objects.get()
    assert request.response_body is None
    assert (
        request.response_chunks == ResponseChunk.objects.count() > FIVE_MB // RESPONSE_CHUNK_CHARS
    )
    assert request.response_bytes > FIVE_MB * 4 // 3


def test_answer_over_max_response_bytes_fails_for_good(sdk, fake_openai, settings):
    settings.MAX_RESPONSE_BYTES = 1_000_000
    prompt = "too big [[image_bytes:1000000]]"
    pending(lambda: generate_gpt_image(sdk, prompt))
    cycle()
    with pytest.raises(openai.APIStatusError) as excinfo:
        generate_gpt_image(sdk, prompt)
    assert excinfo.value.status_code == 502
    assert excinfo.value.code == "response_too_large"
    request = BatchRequest.objects.get()
    assert (request.status, request.attempts) == (BatchRequest.Status.FAILED, 1)


def _big_lines(batch: Batch, count: int, size: int):
    for request in BatchRequest.objects.filter(batch=batch):
        body = '{"created":1,"data":[{"b64_json":"' + "A" * size + '"}]}'
        response = f'{{"status_code":200,"request_id":"r","body":{body}}}'
        yield f'{{"id":"x","custom_id":"{request.pk}","response":{response},"error":null}}'


def test_ingest_holds_a_bounded_number_of_large_answers(post):
    """30 answers of 1 MB: with 4 MB per chunk the ingest never holds more than a few."""
    for i in range(30):
        post("/v1/images/generations", {"model": "gpt-image-1", "prompt": f"p{i}"})
    batch = Batch.objects.create(
        endpoint="/v1/images/generations", model="gpt-image-1", state=Batch.State.INGESTING
    )
    BatchRequest.objects.update(status=BatchRequest.Status.SUBMITTED, batch=batch)
    tracemalloc.start()
    settled = lines_apply(
        batch=batch, lines=_big_lines(batch, 30, 1_000_000), chunk_bytes=4_000_000
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert settled == 30
    assert BatchRequest.objects.filter(status=BatchRequest.Status.COMPLETED).count() == 30
    # A chunk of 4 MB of answers and one line being parsed (measured: 13 MB); holding every
    # answer of a 1000-line chunk took 35 MB.
    assert peak < 18_000_000, peak


def test_purge_takes_the_pieces_of_a_large_answer_with_it(sdk, fake_openai):
    prompt = "purged later [[image_bytes:400000]]"
    pending(lambda: generate_gpt_image(sdk, prompt))
    cycle()
    assert ResponseChunk.objects.exists()
    assert services.requests_purge(now=timezone.now() + timedelta(days=8)) == 1
    assert not ResponseChunk.objects.exists()
    pending(lambda: generate_gpt_image(sdk, prompt))  # starts afresh
