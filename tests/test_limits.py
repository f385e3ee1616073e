"""Per-key rate limits and queue caps: 429 with Retry-After, exact under concurrent load."""

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.db import connection

from requests_app import limits
from requests_app.models import BatchRequest, RateCounter

from .shapes import error_of

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def chat(text: str) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


def assert_429(response, code: str) -> None:
    assert response.status_code == 429
    assert error_of(response)["code"] == code
    assert int(response["Retry-After"]) >= 1


@pytest.mark.django_db
def test_limits_are_off_by_default_and_cost_no_query(post, settings, django_assert_num_queries):
    assert settings.RATE_LIMIT_PER_MINUTE == 0
    assert settings.MAX_QUEUED_PER_KEY == 0
    for i in range(30):
        assert post("/v1/chat/completions", chat(str(i))).status_code == 422
    with django_assert_num_queries(1):
        assert post("/v1/chat/completions", chat("0")).status_code == 422
    assert not RateCounter.objects.exists()


@pytest.mark.django_db
def test_rate_limit_answers_429_with_retry_after_per_key(post, settings, other_key):
    settings.RATE_LIMIT_PER_MINUTE = 3
    answers = [post("/v1/chat/completions", CHAT) for _ in range(3)]
    assert [a.status_code for a in answers] == [422, 422, 422]

    refused = post("/v1/chat/completions", chat("new"))
    assert_429(refused, "rate_limit_exceeded")
    assert int(refused["Retry-After"]) <= 60
    assert BatchRequest.objects.count() == 1  # the refused call stored nothing
    # Another key has its own budget.
    assert post("/v1/chat/completions", CHAT, secret=other_key[1]).status_code == 422


@pytest.mark.django_db
def test_rate_limit_opens_again_in_the_next_window(post, settings, monkeypatch):
    settings.RATE_LIMIT_PER_MINUTE = 1
    now = [1_800_000_000.0]
    monkeypatch.setattr(limits, "_now", lambda: now[0])
    assert post("/v1/chat/completions", CHAT).status_code == 422
    assert post("/v1/chat/completions", CHAT).status_code == 429
    now[0] += 60
    assert post("/v1/chat/completions", CHAT).status_code == 422
    # Closed windows are swept when a new one opens.
    assert RateCounter.objects.count() == 1


@pytest.mark.django_db
def test_queue_cap_refuses_new_requests_but_still_answers_queued_ones(post, settings, other_key):
    settings.MAX_QUEUED_PER_KEY = 2
    first = post("/v1/chat/completions", chat("1"))
    assert post("/v1/chat/completions", chat("2")).status_code == 422

    assert_429(post("/v1/chat/completions", chat("3")), "queue_limit_exceeded")
    assert BatchRequest.objects.count() == 2
    # Asking how a queued request stands is not a new request.
    assert post("/v1/chat/completions", chat("1")).status_code == 422
    assert post("/v1/chat/completions", chat("3"), secret=other_key[1]).status_code == 422

    BatchRequest.objects.filter(pk=first["X-Batch-Request-Id"]).update(
        status=BatchRequest.Status.COMPLETED, response_status=200, response_body="{}"
    )
    assert post("/v1/chat/completions", chat("3")).status_code == 422


def on(model: str, text: str = "hi") -> dict:
    return {"model": model, "input": text}


@pytest.mark.django_db
@pytest.mark.parametrize("max_queued", [0, 1000], ids=["one-statement", "queue-capped"])
def test_a_key_waits_on_so_many_models_at_once_then_429(post, settings, other_key, max_queued):
    """MAX_GROUPS_PER_KEY: one key cannot open an upstream batch per invented model name."""
    assert settings.MAX_GROUPS_PER_KEY > 0  # on by default
    settings.MAX_GROUPS_PER_KEY, settings.MAX_QUEUED_PER_KEY = 3, max_queued
    first = post("/v1/embeddings", on("m-a"))
    for model in ("m-b", "m-c"):
        assert post("/v1/embeddings", on(model)).status_code == 422

    assert_429(post("/v1/embeddings", on("m-d")), "queue_groups_exceeded")
    assert_429(post("/v1/moderations", on("m-a")), "queue_groups_exceeded")  # another endpoint
    assert not BatchRequest.objects.filter(model="m-d").exists()
    # The groups it has take more calls, and its queued calls are still answered.
    assert post("/v1/embeddings", on("m-a", "more")).status_code == 422
    assert post("/v1/embeddings", on("m-b")).status_code == 422
    # Another key has room of its own.
    assert post("/v1/embeddings", on("m-d"), secret=other_key[1]).status_code == 422
    # A group whose requests have all ended leaves room for another.
    BatchRequest.objects.filter(model="m-a").update(status=BatchRequest.Status.COMPLETED)
    assert post("/v1/embeddings", on("m-d")).status_code == 422
    assert first.status_code == 422


@pytest.mark.django_db
def test_the_group_cap_is_in_the_callers_error_shape(client, api_key, settings, fake_gemini):
    settings.MAX_GROUPS_PER_KEY = 1
    headers = {"HTTP_X_GOOG_API_KEY": api_key[1]}
    call = json.dumps({"contents": [{"parts": [{"text": "hi"}]}]})
    for model, status in (("gemini-2.5-flash", 422), ("gemini-2.5-pro", 429)):
        response = client.post(
            f"/v1beta/models/{model}:generateContent", call, "application/json", **headers
        )
        assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert error["details"][0]["reason"] == "QUEUE_GROUPS_EXCEEDED"


def hammer(url: str, secret: str, bodies: list[dict]) -> list[int]:
    """POST every body at once from its own thread; the statuses, in order."""
    statuses: list[int] = [0] * len(bodies)
    start = threading.Barrier(len(bodies))

    def send(i: int) -> None:
        request = urllib.request.Request(  # noqa: S310
            url,
            data=json.dumps(bodies[i]).encode(),
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        )
        start.wait()
        try:
            statuses[i] = urllib.request.urlopen(request, timeout=120).status  # noqa: S310
        except urllib.error.HTTPError as answer:
            statuses[i] = answer.code

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


@pytest.mark.django_db(transaction=True)
def test_queue_cap_holds_under_concurrent_calls(live_server, api_key, settings):
    settings.MAX_QUEUED_PER_KEY = 5
    statuses = hammer(
        f"{live_server.url}/v1/chat/completions", api_key[1], [chat(str(i)) for i in range(20)]
    )
    assert sorted(statuses) == [422] * 5 + [429] * 15
    assert BatchRequest.objects.count() == 5


@pytest.mark.django_db(transaction=True)
def test_rate_limit_holds_under_concurrent_calls(live_server, api_key, settings, monkeypatch):
    settings.RATE_LIMIT_PER_MINUTE = 7
    monkeypatch.setattr(limits, "_now", lambda: 1_800_000_030.0)  # no window closes meanwhile
    statuses = hammer(f"{live_server.url}/v1/chat/completions", api_key[1], [CHAT] * 20)
    assert sorted(statuses) == [422] * 7 + [429] * 13


# Each worker process counts HITS hits and queues HITS requests against the test database.
WORKER = """
import json, sys
import django
from django.conf import settings
settings.DATABASES["default"]["NAME"] = sys.argv[1]
settings.DATABASES["default"]["TEST"] = {}
django.setup()
settings.MAX_QUEUED_PER_KEY = int(sys.argv[4])
from requests_app import limits
from requests_app.services import call_parse
taken = queued = 0
for i in range(int(sys.argv[3])):
    if limits.counter_take(scope="cross-process", limit=int(sys.argv[4]), period=3600) is None:
        taken += 1
    body = json.dumps({"model": "m", "messages": [], "n": f"{sys.argv[5]}-{i}"}).encode()
    call = call_parse(endpoint="/v1/chat/completions", raw=body)
    try:
        limits.requests_enqueue_capped(api_key_id=int(sys.argv[2]), call=call)
        queued += 1
    except limits.LimitExceeded:
        pass
print(json.dumps([taken, queued]))
"""


@pytest.mark.django_db(transaction=True)
def test_limits_hold_across_processes(api_key):
    """Four OS processes race on one counter and one key's queue: neither goes past its limit."""
    processes, hits, limit = 4, 15, 23
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="batchproxy.settings")
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(connection.settings_dict["NAME"]),
             str(api_key[0].pk), str(hits), str(limit), str(n)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for n in range(processes)
    ]  # fmt: skip
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(taken for taken, _ in results) == limit
    assert sum(queued for _, queued in results) == limit
    assert RateCounter.objects.get(scope="cross-process").hits == limit
    assert BatchRequest.objects.filter(api_key=api_key[0]).count() == limit


# --- The admin's sign-in throttle -----------------------------------------------------------


@pytest.fixture
def sign_in(client, settings, monkeypatch):
    """POST the admin's login form from an address; time frozen (advance with .now[0])."""
    settings.ADMIN_LOGIN_ATTEMPTS, settings.ADMIN_LOGIN_SLOWDOWN = 3, 60
    now = [1_800_000_000.0]
    monkeypatch.setattr(limits, "_now", lambda: now[0])
    login = f"/{settings.ADMIN_URL}login/"

    def post(password: str, address: str, username: str = "admin", browser=client, **extra):
        form = {"username": username, "password": password}
        return browser.post(login, form, REMOTE_ADDR=address, **extra)

    post.now = now
    return post


@pytest.mark.django_db
def test_admin_sign_in_is_locked_per_address_and_user_name(sign_in, client, admin_user, settings):
    for _ in range(3):
        assert sign_in("guess", "203.0.113.7").status_code == 200  # the form again, with an error
    refused = sign_in("password", "203.0.113.7")  # even the right password waits now
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= settings.ADMIN_LOGIN_WINDOW
    assert "_auth_user_id" not in client.session
    # Another user from that address is not locked out by the guesses at "admin".
    other = type(admin_user).objects.create_superuser("other", "o@example.com", "password")
    assert sign_in("password", "203.0.113.7", username="other").status_code == 302
    assert client.session["_auth_user_id"] == str(other.pk)


@pytest.mark.django_db
def test_guessing_from_many_addresses_slows_the_user_name_but_never_locks_the_operator_out(
    sign_in, client, admin_user
):
    for n in range(3):
        assert sign_in("guess", f"198.51.100.{n}").status_code == 200
    # Past the user name's attempts: one per ADMIN_LOGIN_SLOWDOWN seconds, from any address.
    assert sign_in("guess", "198.51.100.10").status_code == 200
    slowed = sign_in("guess", "198.51.100.11")
    assert slowed.status_code == 429
    assert 1 <= int(slowed["Retry-After"]) <= 60
    # The operator, from an address of their own, signs in once the slow-down's turn comes.
    sign_in.now[0] += 60
    assert sign_in("password", "192.0.2.1").status_code == 302
    assert client.session["_auth_user_id"] == str(admin_user.pk)


@pytest.mark.django_db
def test_a_browser_that_signed_in_before_is_not_slowed_by_others_guessing(sign_in, admin_user):
    from django.test import Client

    operator, guesser = Client(), Client()
    assert sign_in("password", "192.0.2.1", browser=operator).status_code == 302
    cookie = operator.cookies[limits.SIGNED_IN_COOKIE].value
    operator = Client()  # signed out: its session gone, the sign-in cookie kept
    operator.cookies[limits.SIGNED_IN_COOKIE] = cookie
    for n in range(5):
        sign_in("guess", f"198.51.100.{n}", browser=guesser)
    assert sign_in("guess", "198.51.100.99", browser=guesser).status_code == 429
    assert sign_in("password", "192.0.2.1", browser=operator).status_code == 302
    # The cookie is the server's own: a forged one does not exempt a guesser.
    guesser.cookies[limits.SIGNED_IN_COOKIE] = "forged"
    assert sign_in("guess", "198.51.100.98", browser=guesser).status_code == 429


@pytest.mark.django_db
def test_behind_a_trusted_load_balancer_the_forwarded_address_is_the_one_locked(
    sign_in, settings, admin_user
):
    settings.USE_X_FORWARDED = True
    balancer = "10.0.0.2"
    for _ in range(3):
        sign_in("guess", balancer, HTTP_X_FORWARDED_FOR="spoofed, 203.0.113.7")
    assert sign_in("guess", balancer, HTTP_X_FORWARDED_FOR="203.0.113.7").status_code == 429
    # The operator behind the same balancer is slowed at most, not locked.
    assert sign_in("password", balancer, HTTP_X_FORWARDED_FOR="192.0.2.1").status_code == 302


@pytest.mark.django_db
def test_admin_sign_in_throttle_reopens_after_its_window(client, admin_user, settings, monkeypatch):
    settings.ADMIN_LOGIN_ATTEMPTS, settings.ADMIN_LOGIN_WINDOW = 1, 900
    now = [1_800_000_000.0]
    monkeypatch.setattr(limits, "_now", lambda: now[0])
    login = f"/{settings.ADMIN_URL}login/"
    assert client.post(login, {"username": "admin", "password": "x"}).status_code == 200
    assert client.post(login, {"username": "admin", "password": "password"}).status_code == 429
    now[0] += 900
    assert client.post(login, {"username": "admin", "password": "password"}).status_code == 302


@pytest.mark.django_db
def test_status_lookups_share_the_keys_rate_limit(post, client, api_key, settings):
    settings.RATE_LIMIT_PER_MINUTE = 2
    request_id = post("/v1/chat/completions", CHAT)["X-Batch-Request-Id"]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api_key[1]}"}
    assert client.get(f"/v1/batch_requests/{request_id}", **auth).status_code == 200
    assert_429(client.get(f"/v1/batch_requests/{request_id}", **auth), "rate_limit_exceeded")
    assert_429(post("/v1/chat/completions", CHAT), "rate_limit_exceeded")
