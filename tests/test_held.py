"""Held calls (`Prefer: wait=N`, a key's hold_seconds): answered the moment the batch lands.

The proxy is served under ASGI (batchproxy/asgi.py, uvicorn in a thread of the test process);
the batch is driven by the engine in the test's own thread, as the scheduler would.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from requests_app.keys import api_key_revoke
from requests_app.models import BatchRequest

from .engine import cycle

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def chat(client, text: str):
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
    )


@pytest.fixture
def held_sdk(asgi_url, api_key, fake_openai):
    """The OpenAI SDK, unchanged but for base URL, key, timeout and one default header."""
    return openai.OpenAI(
        base_url=f"{asgi_url}/v1",
        api_key=api_key[1],
        max_retries=0,
        timeout=60,
        default_headers={"Prefer": "wait=30"},
    )


def when_queued(count: int, *, seconds: float = 20) -> None:
    """Wait until `count` requests are queued (the callers are being held)."""
    deadline = time.monotonic() + seconds
    while BatchRequest.objects.count() < count:
        assert time.monotonic() < deadline, "the calls were not queued"
        time.sleep(0.02)


def test_a_held_call_gets_its_answer_in_one_call_the_moment_the_batch_lands(held_sdk):
    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(chat, held_sdk, "held question")
        when_queued(1)
        time.sleep(0.3)
        assert not asked.done()  # held, not answered 422
        cycle()
        landed = time.monotonic()
        answer = asked.result(timeout=20)
        woken_after = time.monotonic() - landed
    assert answer.choices[0].message.content == "echo: held question"
    assert woken_after < 3, woken_after


def test_a_held_call_whose_batch_does_not_land_in_time_is_todays_422(
    asgi_url, api_key, fake_openai
):
    started = time.monotonic()
    response = requests.post(
        f"{asgi_url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "slow"}]},
        headers={"Authorization": f"Bearer {api_key[1]}", "Prefer": "respond-async, wait=1"},
        timeout=30,
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "batch_pending"
    assert response.headers["Preference-Applied"] == "wait=1"
    assert 1 <= time.monotonic() - started < 5


def test_the_keys_hold_seconds_holds_calls_without_a_header_capped_by_max_hold(
    asgi_url, api_key, fake_openai, settings
):
    key, secret = api_key
    key.hold_seconds = 3600
    key.save()
    settings.MAX_HOLD_SECONDS = 1
    started = time.monotonic()
    response = requests.post(
        f"{asgi_url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "default"}]},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )
    assert response.status_code == 422
    assert response.headers["Preference-Applied"] == "wait=1"
    assert 1 <= time.monotonic() - started < 5


def test_without_a_hold_a_call_is_answered_422_at_once(asgi_url, api_key, fake_openai):
    response = requests.post(
        f"{asgi_url}/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "now"}]},
        headers={"Authorization": f"Bearer {api_key[1]}"},
        timeout=30,
    )
    assert response.status_code == 422
    assert "Preference-Applied" not in response.headers


def test_many_held_calls_released_together_each_get_their_own_answer(held_sdk, asgi_url, api_key):
    texts = [f"caller {i}" for i in range(60)]
    with ThreadPoolExecutor(len(texts)) as pool:
        asked = {text: pool.submit(chat, held_sdk, text) for text in texts}
        when_queued(len(texts))
        # Meanwhile the web tier answers others: health, and a new call that is not held.
        assert requests.get(f"{asgi_url}/healthz", timeout=5).status_code == 200
        cycle()
        landed = time.monotonic()
        answers = {text: future.result(timeout=30) for text, future in asked.items()}
        released_in = time.monotonic() - landed
    for text, answer in answers.items():
        assert answer.choices[0].message.content == f"echo: {text}"
    assert released_in < 5, released_in


def test_a_cancelled_request_releases_its_held_caller_with_its_error(held_sdk, api_key):
    errors = []

    def ask():
        try:
            chat(held_sdk, "cancel me")
        except openai.APIStatusError as error:
            errors.append(error)

    thread = threading.Thread(target=ask)
    thread.start()
    when_queued(1)
    api_key_revoke(key_id=api_key[0].pk)  # cancels its queued requests
    thread.join(10)
    assert not thread.is_alive()
    [error] = errors
    assert error.status_code == 409
    assert error.code == "batch_cancelled"


@pytest.mark.parametrize(
    ("prefer", "held"),
    [
        ("wait=5", 5),
        ("respond-async, wait=7", 7),
        ('wait="3"', 3),
        ("WAIT=2; x=y", 2),
        ("wait=" + "9" * 5000, 600),  # capped, not a 500 on a huge number
        ("wait=-1", 0),
        ("wait=abc", 0),
        ("handling=lenient", 0),
        ("", 0),
    ],
)
def test_prefer_wait_is_read_as_rfc_7240_says_and_capped(prefer, held, settings):
    from requests_app.auth import ProxyKey
    from requests_app.views import hold_seconds

    settings.MAX_HOLD_SECONDS = 600
    assert hold_seconds({"HTTP_PREFER": prefer}, ProxyKey("k")) == held


@pytest.mark.parametrize(
    ("key", "length", "status"),
    [("bp-wrong", 20_000_000, 401), (None, 10**12, 413)],
    ids=["wrong-key", "too-large"],
)
def test_under_asgi_the_key_and_length_are_checked_before_the_body(
    asgi_url, api_key, key, length, status
):
    """Django's ASGI handler reads a whole body before any view: the proxy's gate does not,
    so these are answered from the headers while the client has sent no byte of its body."""
    import socket

    port = int(asgi_url.rsplit(":", 1)[1])
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key or api_key[1]}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode())
        answer = sock.recv(65536).decode("latin-1")
    assert answer.split()[1] == str(status)


def test_a_held_caller_that_goes_away_stops_being_held(asgi_url, api_key, fake_openai):
    """Its request stays queued; the process lets go of the caller at once, not after N s."""
    import socket

    from requests_app import waiting

    def held_here() -> int:
        return sum(len(watcher.waiting) for watcher in list(waiting._watchers.values()))

    port = int(asgi_url.rsplit(":", 1)[1])
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "gone"}]}'
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nPrefer: wait=60\r\n"
        f"Authorization: Bearer {api_key[1]}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + body)
        when_queued(1)
        deadline = time.monotonic() + 5
        while held_here() == 0:
            assert time.monotonic() < deadline, "the call was not held"
            time.sleep(0.02)
    deadline = time.monotonic() + 5
    while held_here():
        assert time.monotonic() < deadline, "the caller is still held after it went away"
        time.sleep(0.02)
    assert BatchRequest.objects.get().status == BatchRequest.Status.QUEUED


def test_a_pending_answer_reaches_djangos_request_log_only_when_that_log_keeps_it(
    asgi_url, api_key, fake_openai, monkeypatch
):
    """LOGGING keeps django.request's errors only: a 422 is not handed to it (Django would,
    through a thread hop per answer); with the logger at WARNING it is, as Django does."""
    import logging

    from batchproxy import asgi

    logged = []
    monkeypatch.setattr(asgi, "log_response", lambda *a, **kw: logged.append(kw["response"]))

    def ask(text: str) -> int:
        return requests.post(
            f"{asgi_url}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]},
            headers={"Authorization": f"Bearer {api_key[1]}"},
            timeout=30,
        ).status_code

    assert ask("not logged") == 422
    assert logged == []
    request_log = logging.getLogger("django.request")
    level = request_log.level
    request_log.setLevel(logging.WARNING)
    try:
        assert ask("logged") == 422
    finally:
        request_log.setLevel(level)
    assert [response.status_code for response in logged] == [422]
