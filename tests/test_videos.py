"""Videos through the Batch API: created with the SDK's JSON form, answered with the upstream's
video object, and their content streamed from upstream to the key that made them only."""

import openai
import pytest

from batches_app.models import ModelPrice
from batchproxy.fakes.openai import MP4_MAGIC
from requests_app.models import BatchRequest

from .conftest import make_key
from .engine import cycle

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    # The SDK warns on every video call that OpenAI plans to shut the Sora API down.
    pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning"),
]


def create_video(client, prompt: str):
    return client.videos.create(
        model="sora-2",
        prompt=prompt,
        seconds="8",
        extra_headers={"Content-Type": "application/json"},
    )


def pending(call) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as excinfo:
        call()
    assert excinfo.value.code == "batch_pending"


@pytest.mark.parametrize("with_v1", [True, False], ids=["v1", "no-v1"])
def test_video_is_made_then_its_content_streamed_to_its_key_only(
    live_server, api_key, fake_openai, with_v1
):
    base_url = f"{live_server.url}/v1" if with_v1 else live_server.url
    client = openai.OpenAI(base_url=base_url, api_key=api_key[1], max_retries=0)
    stranger = openai.OpenAI(base_url=base_url, api_key=make_key("other")[1], max_retries=0)
    pending(lambda: create_video(client, "a cat at the piano"))
    cycle()

    video = create_video(client, "a cat at the piano")
    assert (video.object, video.status, video.seconds) == ("video", "completed", "8")
    content = client.videos.download_content(video.id)
    assert content.read() == MP4_MAGIC + b"echo: a cat at the piano"
    assert content.response.headers["content-type"] == "video/mp4"
    with pytest.raises(openai.NotFoundError):
        stranger.videos.download_content(video.id)
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content("video_nobody_made_this")
    [line] = fake_openai.submitted_lines()
    assert line["url"] == "/v1/videos" and line["body"]["prompt"] == "a cat at the piano"


def test_video_content_gone_upstream_after_a_day_is_404_saying_so(sdk, fake_openai):
    pending(lambda: create_video(sdk, "a short film"))
    cycle()
    video = create_video(sdk, "a short film")
    fake_openai.expire_videos()

    with pytest.raises(openai.NotFoundError) as excinfo:
        sdk.videos.download_content(video.id)
    assert excinfo.value.code == "video_expired"


def test_video_seconds_are_priced_per_second(sdk, fake_openai):
    pending(lambda: create_video(sdk, "eight seconds"))
    cycle()
    create_video(sdk, "eight seconds")

    request = BatchRequest.objects.get()
    assert request.output_images == 8
    price = ModelPrice.objects.get(model="sora-2")
    assert price.synchronous_cost(0, 0, request.output_images) == 8 * price.per_image > 0


def test_multipart_video_is_refused_with_how_to_send_json(sdk):
    with pytest.raises(openai.BadRequestError) as excinfo:
        sdk.videos.create(model="sora-2", prompt="a cat")  # the SDK's default: multipart
    assert excinfo.value.code == "unsupported_content_type"
    assert "JSON form" in excinfo.value.message
    assert not BatchRequest.objects.exists()
