"""The client-facing contract (CONTRACT.md §1), through Django's test client."""

import json

import pytest
from django.db import connection
from django.utils import timezone

from requests_app.models import BatchRequest

from .shapes import error_of

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
ENDPOINTS = ["responses", "chat/completions", "embeddings", "completions", "moderations"]

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("prefix", ["/v1/", "/"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_new_call_is_queued_and_answered_422_pending(post, prefix, endpoint):
    response = post(prefix + endpoint, {"model": "m", "input": "x"})

    assert response.status_code == 422
    error = error_of(response)
    assert error["type"] == error["code"] == "batch_pending"
    assert "repeat" in error["message"].lower()
    assert int(response["Retry-After"]) >= 1
    stored = BatchRequest.objects.get()
    assert response["X-Batch-Request-Id"] == str(stored.id)
    assert stored.endpoint == f"/v1/{endpoint}"


def test_identical_call_is_one_request_whatever_key_order(post):
    first = post("/v1/chat/completions", CHAT)
    reordered = '{"messages":[{"content":"hi","role":"user"}],   "model":"gpt-4o-mini"}'
    second = post("/v1/chat/completions", reordered)

    assert first["X-Batch-Request-Id"] == second["X-Batch-Request-Id"]
    assert BatchRequest.objects.count() == 1


def test_same_body_on_another_endpoint_is_another_request(post):
    post("/v1/completions", {"model": "m", "prompt": "p"})
    post("/v1/responses", {"model": "m", "prompt": "p"})
    assert BatchRequest.objects.count() == 2


def test_keys_do_not_share_requests(post, other_key):
    mine = post("/v1/chat/completions", CHAT)
    theirs = post("/v1/chat/completions", CHAT, secret=other_key[1])
    assert mine["X-Batch-Request-Id"] != theirs["X-Batch-Request-Id"]
    assert BatchRequest.objects.count() == 2


def test_retry_after_estimates_the_flush_and_one_poll(post, settings):
    settings.BATCH_MAX_WAIT, settings.POLL_INTERVAL, settings.TICK_SECONDS = 300, 60, 5
    response = post("/v1/chat/completions", CHAT)
    assert 365 <= int(response["Retry-After"]) <= 370  # the wait, the flush's tick, one poll


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong", "Basic abc", "Bearer "],
    ids=["none", "wrong", "basic", "empty"],
)
def test_missing_or_wrong_key_is_401_and_nothing_else(client, header):
    headers = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.post(
        "/v1/chat/completions", data="not json", content_type="application/json", **headers
    )
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"
    assert not BatchRequest.objects.exists()


def test_revoked_key_is_refused_even_for_its_old_requests(post, api_key):
    post("/v1/chat/completions", CHAT)
    api_key[0].revoked_at = timezone.now()
    api_key[0].save()
    assert post("/v1/chat/completions", CHAT).status_code == 401


def test_key_from_environment_is_a_tenant(client, settings):
    from requests_app.models import hash_key

    settings.ENV_API_KEY_HASHES = frozenset({hash_key("env-key-1"), hash_key("env-key-2")})
    for secret in ("env-key-1", "env-key-2"):
        response = client.post(
            "/v1/embeddings",
            data=json.dumps({"model": "e", "input": "x"}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {secret}",
        )
        assert response.status_code == 422
    assert BatchRequest.objects.values("api_key").distinct().count() == 2
    settings.ENV_API_KEY_HASHES = frozenset()
    response = client.post(
        "/v1/embeddings",
        data=json.dumps({"model": "e", "input": "x"}),
        content_type="application/json",
        HTTP_AUTHORIZATION="Bearer env-key-1",
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ("not json", 400, None),
        ("[1, 2]", 400, None),
        ('"text"', 400, None),
        (b"\xff\xfe{", 400, None),
        ("[" * 5000 + "]" * 5000, 400, None),
        ('{"model": 1, "messages": []}', 400, "model"),
        ('{"messages": []}', 400, "model"),
        ('{"model": "m", "n": 1' + "0" * 400 + "}", 400, None),
        ('{"model": "m", "seed": 18446744073709551616}', 400, None),
        ('{"model": "m", "x": [[-9223372036854775809]]}', 400, None),
    ],
    ids=[
        "not-json",
        "array",
        "string",
        "bad-utf8",
        "deep",
        "model-int",
        "no-model",
        "huge-int",
        "int-over-64-bits",
        "int-under-64-bits",
    ],
)
def test_bad_input_is_a_clear_4xx_and_stores_nothing(post, body, status, param):
    response = post("/v1/chat/completions", body)
    assert response.status_code == status
    assert error_of(response)["param"] == param
    assert not BatchRequest.objects.exists()


def test_largest_64_bit_integers_are_accepted_unchanged(post):
    body = '{"model": "m", "seed": 9223372036854775807, "x": -9223372036854775808}'
    assert post("/v1/completions", body).status_code == 422
    stored = BatchRequest.objects.get().body
    assert "9223372036854775807" in stored and "-9223372036854775808" in stored


def test_body_over_the_limit_is_413(post, settings):
    settings.MAX_REQUEST_BYTES = 1000
    response = post("/v1/chat/completions", {"model": "m", "input": "x" * 2000})
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"
    assert not BatchRequest.objects.exists()


def test_unknown_path_is_404_and_wrong_method_405(client, api_key):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api_key[1]}"}
    assert error_of(client.post("/v1/audio/speech", **auth))["code"] == "unknown_url"
    response = client.get("/v1/chat/completions", **auth)
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    error_of(response)


def answered(request_id, **fields) -> BatchRequest:
    BatchRequest.objects.filter(pk=request_id).update(finished_at=timezone.now(), **fields)


def test_done_answer_is_the_upstream_body_unchanged(post):
    request_id = post("/v1/chat/completions", CHAT)["X-Batch-Request-Id"]
    body = '{"id":"chatcmpl-1","object":"chat.completion","choices":[]}'
    answered(request_id, status="completed", response_status=200, response_body=body)

    response = post("/v1/chat/completions", CHAT)
    assert response.status_code == 200
    assert response.content.decode() == body
    assert response["X-Batch-Request-Id"] == request_id


def test_upstream_error_for_a_line_is_passed_through(post):
    request_id = post("/v1/chat/completions", CHAT)["X-Batch-Request-Id"]
    body = '{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":"x"}}'
    answered(request_id, status="completed", response_status=400, response_body=body)
    response = post("/v1/chat/completions", CHAT)
    assert (response.status_code, response.content.decode()) == (400, body)


def test_failed_for_good_is_502_and_cancelled_409(post):
    request_id = post("/v1/chat/completions", CHAT)["X-Batch-Request-Id"]
    answered(request_id, status="failed", error_code="batch_expired", error_message="expired")
    response = post("/v1/chat/completions", CHAT)
    assert response.status_code == 502
    assert error_of(response)["type"] == "batch_failed"
    assert error_of(response)["code"] == "batch_expired"
    assert response["x-should-retry"] == "false"

    answered(request_id, status="cancelled")
    response = post("/v1/chat/completions", CHAT)
    assert response.status_code == 409
    assert error_of(response)["code"] == "batch_cancelled"
    assert response["x-should-retry"] == "false"


def test_batch_request_status_is_visible_to_its_owner_only(post, client, api_key, other_key):
    request_id = post("/v1/chat/completions", CHAT)["X-Batch-Request-Id"]

    mine = client.get(f"/v1/batch_requests/{request_id}", HTTP_AUTHORIZATION=f"Bearer {api_key[1]}")
    assert mine.status_code == 200
    status = mine.json()
    eta = status.pop("eta")
    assert eta["tier"] == "batch" and eta["median"] <= eta["p90"]
    assert status | {"created_at": None, "updated_at": None} == {
        "id": request_id,
        "object": "batch_request",
        "status": "queued",
        "endpoint": "/v1/chat/completions",
        "model": "gpt-4o-mini",
        "attempts": 0,
        "waiting_for": None,
        "batch": None,
        "error": None,
        "response_status": None,
        "deadline": None,
        "receipt": None,
        "created_at": None,
        "updated_at": None,
        "finished_at": None,
    }
    theirs = client.get(
        f"/v1/batch_requests/{request_id}", HTTP_AUTHORIZATION=f"Bearer {other_key[1]}"
    )
    assert theirs.status_code == 404
    error_of(theirs)
    nobody = client.get(f"/v1/batch_requests/{request_id}")
    assert nobody.status_code == 401
    assert error_of(nobody)["code"] == "invalid_api_key"


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's"
)
def test_the_intake_statement_is_prepared_once_per_connection(post):
    for text in ("one", "two", "one", "two"):
        call = {**CHAT, "messages": [{"role": "user", "content": text}]}
        assert post("/v1/chat/completions", call).status_code == 422
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0].split()[0] for row in cursor.fetchall()]
    assert prepared == ["WITH"]  # the one statement of new calls and repeats, nothing else
    # psycopg keeps the text of the other queries it counts: only a few of them.
    assert connection.connection.prepared_max == 4


@pytest.mark.parametrize("path", [f"/v1/{e}" for e in ENDPOINTS] + [f"/{e}" for e in ENDPOINTS])
def test_client_endpoints_are_drf_views_with_the_proxy_key_authentication(path):
    from django.urls import resolve
    from rest_framework.views import APIView

    from requests_app.api import RawBodyParser
    from requests_app.auth import ProxyKeyAuthentication

    view = resolve(path).func.cls
    assert issubclass(view, APIView)
    assert [type(a) for a in view().get_authenticators()] == [ProxyKeyAuthentication]
    assert view.parser_classes == [RawBodyParser]
    detail = resolve("/v1/batch_requests/00000000-0000-0000-0000-000000000000").func.cls
    assert issubclass(detail, APIView)


def test_a_new_call_and_a_repeat_each_cost_one_statement(post, django_assert_num_queries):
    """PostgreSQL: one statement finds the key, inserts the request unless it exists, and
    answers either way. SQLite: the insert for a new call, the lookup for a call this process
    met lately."""
    warm = {**CHAT, "messages": [{"role": "user", "content": "first"}]}
    # A key's first call in a process also looks the key up; capacity is read now and then.
    assert post("/v1/chat/completions", warm).status_code == 422
    with django_assert_num_queries(1):
        assert post("/v1/chat/completions", CHAT).status_code == 422
    with django_assert_num_queries(1):
        assert post("/v1/chat/completions", CHAT).status_code == 422


@pytest.mark.skipif(
    connection.vendor == "postgresql", reason="PostgreSQL finds it in its one statement"
)
def test_a_call_the_process_forgot_is_found_after_an_insert_that_inserts_nothing(
    post, django_assert_num_queries, monkeypatch
):
    """Another web process queued it, or this one forgot it: the insert inserts nothing, the
    lookup finds it, and the caller gets its own request, not a second one."""
    from requests_app import services, views

    first = post("/v1/chat/completions", CHAT)
    monkeypatch.setattr(views, "RECENT_CALLS", services.RecentCalls(10))
    with django_assert_num_queries(2):
        again = post("/v1/chat/completions", CHAT)
    assert again.status_code == 422
    assert again["X-Batch-Request-Id"] == first["X-Batch-Request-Id"]
    assert BatchRequest.objects.count() == 1
    with django_assert_num_queries(1):  # met now: looked up first
        assert post("/v1/chat/completions", CHAT).status_code == 422


def test_recent_calls_forget_all_at_once_when_full():
    from requests_app.services import RecentCalls

    recent = RecentCalls(2)
    recent.add(("key", "a"))
    recent.add(("key", "b"))
    assert ("key", "a") in recent and ("key", "c") not in recent
    recent.add(("key", "c"))
    assert ("key", "c") in recent and ("key", "a") not in recent


def test_request_ids_are_random_version_4_uuids_in_every_thread():
    """batchproxy.utils.uuid4 reads the random bytes of 256 ids at once, per thread."""
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from batchproxy.utils import uuid4

    with ThreadPoolExecutor(4) as pool:
        ids = [
            i for part in pool.map(lambda _: [uuid4() for _ in range(600)], range(4)) for i in part
        ]
    assert len(set(ids)) == len(ids) == 2400  # past each thread's first 256
    assert {(i.version, i.variant) for i in ids} == {(4, uuid.RFC_4122)}
    assert all(len({i.bytes[n] for i in ids}) > 200 for n in (0, 5, 15))  # random bytes


def test_a_forked_process_makes_ids_of_its_own():
    """gunicorn forks its workers: a child must not go on from its parent's random bytes.
    Forked in a Python of its own, away from this test process's connections and threads."""
    import subprocess
    import sys

    script = (
        "import os\n"
        "from batchproxy.utils import uuid4\n"
        "uuid4()\n"  # the parent's bytes are read
        "read, write = os.pipe()\n"
        "if (child := os.fork()) == 0:\n"
        "    os.write(write, uuid4().bytes)\n"
        "    os._exit(0)\n"
        "os.waitpid(child, 0)\n"
        "print(os.read(read, 16) != uuid4().bytes)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "True"


def test_a_keys_first_call_looks_the_key_up_before_the_body(post, django_assert_num_queries):
    with django_assert_num_queries(1):  # the key: a body is only read for a known key
        response = post("/v1/chat/completions", {"model": 7})
    assert error_of(response)["param"] == "model"
    with django_assert_num_queries(1):  # known for a while, but checked again before the 400
        response = post("/v1/chat/completions", {"model": 7})
    assert error_of(response)["param"] == "model"


def test_accept_header_is_not_negotiated(post, client, api_key):
    response = client.post(
        "/v1/chat/completions",
        data=json.dumps(CHAT),
        content_type="application/json",
        HTTP_ACCEPT="text/html",
        HTTP_AUTHORIZATION=f"Bearer {api_key[1]}",
    )
    assert response.status_code == 422
    assert response["Content-Type"] == "application/json"
    assert "Allow" not in response  # only a 405 names the methods


@pytest.fixture
def wsgi_call(db):
    """Call batchproxy.wsgi.application as a server would: (status, headers, body)."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections
    from django.test.client import FakePayload, RequestFactory

    from batchproxy.wsgi import application

    def call(method: str, path: str, body: bytes = b"", **headers: str):
        environ = RequestFactory()._base_environ(
            PATH_INFO=path,
            REQUEST_METHOD=method,
            CONTENT_TYPE="application/json",
            CONTENT_LENGTH=str(len(body)),
            **headers,
        )
        environ["wsgi.input"] = FakePayload(body)
        started = []
        content = b"".join(application(environ, lambda s, h: started.append((s, dict(h)))))
        ((status, answer_headers),) = started
        return int(status.split()[0]), answer_headers, content

    # As Django's test client does: a request must not close the test's connection.
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    yield call
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


def test_the_client_api_runs_only_the_middleware_it_uses(wsgi_call, api_key, settings):
    body = json.dumps(CHAT).encode()
    status, headers, _ = wsgi_call(
        "POST", "/v1/chat/completions", body, HTTP_AUTHORIZATION=f"Bearer {api_key[1]}"
    )
    assert status == 422
    assert headers["X-Request-Id"] and headers["X-Content-Type-Options"] == "nosniff"
    assert "X-Frame-Options" not in headers and "Vary" not in headers  # no admin middleware
    # The admin keeps all of MIDDLEWARE.
    _, admin_headers, _ = wsgi_call("GET", f"/{settings.ADMIN_URL}login/")
    assert admin_headers["X-Frame-Options"] == "DENY"
    # The host check still guards the client API.
    settings.ALLOWED_HOSTS = ["proxy.example"]
    status, _, content = wsgi_call(
        "POST", "/v1/chat/completions", body, HTTP_AUTHORIZATION=f"Bearer {api_key[1]}"
    )
    assert status == 400, content
