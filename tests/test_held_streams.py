"""Streams through the proxy: each official SDK's own stream parser, pointed at the proxy under
ASGI, yields its own answer when the batch lands, and sees no error while it runs (keep-alive
frames every STREAM_KEEPALIVE_SECONDS, here a fraction of a second)."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anthropic
import openai
import pytest
import requests
from google import genai

from requests_app.models import BatchRequest

from .engine import cycle
from .test_held import when_queued

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def quick_keepalive(settings):
    settings.STREAM_KEEPALIVE_SECONDS = 0.2


def land_after_keepalives(count: int = 1) -> None:
    """The callers are queued, hear a few keep-alives, then their batch lands."""
    when_queued(count)
    time.sleep(0.7)
    cycle()


def test_openai_chat_stream_yields_its_own_answer_with_usage(asgi_url, api_key, fake_openai):
    client = openai.OpenAI(base_url=f"{asgi_url}/v1", api_key=api_key[1], max_retries=0)

    def ask(text):
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": text}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks[-1].usage

    with ThreadPoolExecutor(2) as pool:
        asked = {who: pool.submit(ask, f"stream for {who}") for who in ("alice", "bob")}
        land_after_keepalives(2)
        for who, future in asked.items():
            text, usage = future.result(timeout=30)
            assert text == f"echo: stream for {who}"
            assert usage.total_tokens > 0
    # The stream flag is not part of the call: one line upstream each, without it.
    lines = fake_openai.submitted_lines()
    assert len(lines) == 2
    assert all("stream" not in line["body"] for line in lines)


def test_openai_responses_stream_gives_the_final_response(asgi_url, api_key, fake_openai):
    client = openai.OpenAI(base_url=f"{asgi_url}/v1", api_key=api_key[1], max_retries=0)
    with ThreadPoolExecutor(1) as pool:

        def ask():
            with client.responses.stream(model="gpt-4.1-mini", input="responses stream") as s:
                deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
                return "".join(deltas), s.get_final_response()

        asked = pool.submit(ask)
        land_after_keepalives()
        text, final = asked.result(timeout=30)
    assert text == final.output_text == "echo: responses stream"


def test_a_stream_and_a_plain_call_of_the_same_request_share_it(asgi_url, api_key, fake_openai):
    """A caller that went away calls again and re-attaches; the plain call is the same request."""
    client = openai.OpenAI(base_url=f"{asgi_url}/v1", api_key=api_key[1], max_retries=0)
    call = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "shared"}]}
    gone = requests.post(
        f"{asgi_url}/v1/chat/completions",
        json=call | {"stream": True},
        headers={"Authorization": f"Bearer {api_key[1]}"},
        stream=True,
        timeout=10,
    )
    assert gone.status_code == 200
    assert gone.headers["Content-Type"].startswith("text/event-stream")
    gone.close()  # the caller disconnects
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(**call)
    assert BatchRequest.objects.count() == 1
    cycle()
    again = client.chat.completions.create(**call, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in again) == "echo: shared"


def test_a_cancelled_request_ends_its_stream_with_the_providers_error(
    asgi_url, api_key, fake_openai
):
    from requests_app.keys import api_key_revoke

    client = openai.OpenAI(base_url=f"{asgi_url}/v1", api_key=api_key[1], max_retries=0)
    raised = []

    def ask():
        try:
            list(
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
                )
            )
        except openai.APIError as error:
            raised.append(error)

    thread = threading.Thread(target=ask)
    thread.start()
    when_queued(1)
    api_key_revoke(key_id=api_key[0].pk)
    thread.join(10)
    [error] = raised
    assert "cancelled" in str(error).lower()


def test_anthropic_messages_stream_yields_its_own_message(asgi_url, api_key, fake_anthropic):
    client = anthropic.Anthropic(base_url=asgi_url, api_key=api_key[1], max_retries=0)

    def ask():
        with client.messages.stream(
            model="claude-sonnet-4-20250514",
            max_tokens=64,
            messages=[{"role": "user", "content": "claude stream"}],
        ) as stream:
            return "".join(stream.text_stream), stream.get_final_message()

    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(ask)
        land_after_keepalives()
        text, message = asked.result(timeout=30)
    assert text == "echo: claude stream"
    assert message.content[0].text == text
    assert message.stop_reason == "end_turn"


def test_google_genai_generate_content_stream_yields_its_own_text(asgi_url, api_key, fake_gemini):
    client = genai.Client(api_key=api_key[1], http_options={"base_url": asgi_url})

    def ask():
        chunks = client.models.generate_content_stream(
            model="gemini-2.5-flash", contents="gemini stream"
        )
        return "".join(chunk.text or "" for chunk in chunks)

    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(ask)
        land_after_keepalives()
        assert asked.result(timeout=30) == "echo: gemini stream"


def test_curl_n_streams_the_answer(asgi_url, api_key, fake_openai):
    import shutil
    import subprocess

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    command = [
        "curl", "-sN", f"{asgi_url}/v1/chat/completions",
        "-H", f"Authorization: Bearer {api_key[1]}", "-H", "Content-Type: application/json",
        "-d", '{"model": "gpt-4o-mini", "stream": true, '
        '"messages": [{"role": "user", "content": "curl"}]}',
    ]  # fmt: skip
    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(subprocess.run, command, capture_output=True, text=True, timeout=30)
        land_after_keepalives()
        out = asked.result(timeout=30).stdout
    assert out.startswith(": keepalive")
    assert '"content":"echo: curl"' in out.replace(" ", "") or "echo: curl" in out
    assert out.rstrip().endswith("data: [DONE]")
