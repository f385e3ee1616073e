"""Hostile input: whatever arrives, the answer is an OpenAI-shaped 4xx (or a normal answer),
never a 5xx, and a refused call leaves the database as it was.

The plain bad-input cases are in test_intake.py; this file adds the nasty corpus in
tests/fuzz/corpus.py, odd charsets and headers, bodies over a real socket, and generated input
(hypothesis, and schemathesis against the proxy's own OpenAPI description).
"""

import itertools
import json
import socket
import time
import tracemalloc
import urllib.parse

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batches_app.models import Batch
from requests_app.models import ApiKey, BatchRequest, RateCounter

from .fuzz.corpus import CORPUS, INPUT_CORPUS, MESSAGES_CORPUS

ENDPOINTS = ["responses", "chat/completions", "embeddings", "completions", "moderations"]
CALL = b'{"model": "m", "messages": [], "input": "x"}'

pytestmark = pytest.mark.django_db


def snapshot() -> tuple[int, ...]:
    """What a refused call must not change."""
    return (
        BatchRequest.objects.count(),
        ApiKey.objects.count(),
        RateCounter.objects.count(),
        Batch.objects.count(),
    )


def assert_refused(status: int, content_type: str, content: bytes) -> dict:
    """A 4xx other than 422 (which means 'pending'), with the OpenAI error shape."""
    assert 400 <= status < 500 and status != 422, (status, content[:300])
    assert content_type == "application/json", content[:300]
    error = json.loads(content)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


def assert_refused_as_google(status: int, content_type: str, content: bytes) -> dict:
    """As `assert_refused`, in Google's error shape (Gemini's generateContent)."""
    assert 400 <= status < 500 and status != 422, (status, content[:300])
    assert content_type == "application/json", content[:300]
    error = json.loads(content)["error"]
    assert error["code"] == status and isinstance(error["status"], str) and error["message"]
    return error


def assert_refused_as_anthropic(status: int, content_type: str, content: bytes) -> dict:
    """As `assert_refused`, in Anthropic's error shape (/v1/messages)."""
    assert 400 <= status < 500 and status != 422, (status, content[:300])
    assert content_type == "application/json", content[:300]
    body = json.loads(content)
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def send(client, secret: str, path: str, body: bytes, content_type="application/json", **extra):
    return client.generic(
        "POST",
        path,
        body,
        content_type=content_type,
        HTTP_AUTHORIZATION=f"Bearer {secret}",
        **extra,
    )


@pytest.mark.parametrize(("name", "body"), CORPUS, ids=[name for name, _ in CORPUS])
def test_corpus_body_is_refused_on_every_endpoint(client, api_key, name, body):
    before = snapshot()
    for endpoint in ENDPOINTS:
        response = send(client, api_key[1], f"/v1/{endpoint}", body)
        assert_refused(response.status_code, response["Content-Type"], response.content)
    assert snapshot() == before


@pytest.mark.parametrize(
    ("name", "body"), MESSAGES_CORPUS, ids=[name for name, _ in MESSAGES_CORPUS]
)
def test_messages_that_are_not_an_array_are_refused_on_chat(client, api_key, name, body):
    response = send(client, api_key[1], "/v1/chat/completions", body)
    assert (
        assert_refused(response.status_code, response["Content-Type"], response.content)["param"]
        == "messages"
    )
    assert not BatchRequest.objects.exists()


@pytest.mark.parametrize(("name", "body"), INPUT_CORPUS, ids=[name for name, _ in INPUT_CORPUS])
@pytest.mark.parametrize("endpoint", ["embeddings", "moderations"])
def test_embeddings_and_moderations_need_an_input(client, api_key, name, body, endpoint):
    response = send(client, api_key[1], f"/v1/{endpoint}", body)
    error = assert_refused(response.status_code, response["Content-Type"], response.content)
    assert error["param"] == "input"
    assert not BatchRequest.objects.exists()


def test_other_fields_are_left_for_openai_to_judge(client, api_key):
    """Decision: only the cheap, certain refusals happen here; a wrong `input` type on
    responses, say, reaches OpenAI, whose per-line 400 becomes the call's answer."""
    body = b'{"model": "m", "input": {"odd": true}, "temperature": "hot"}'
    assert send(client, api_key[1], "/v1/responses", body).status_code == 422


@pytest.mark.parametrize(
    ("content_type", "body", "status"),
    [
        ("application/json; charset=utf-16", '{"model":"m","input":"x"}'.encode("utf-16"), 415),
        ("application/json; charset=utf-16", CALL, 415),
        ("application/json; charset=latin-1", CALL, 415),
        (
            "application/json; charset=iso-8859-1",
            '{"model":"m","input":"é"}'.encode("latin-1"),
            415,
        ),
        ("application/json; charset=utf-7", CALL, 415),
        ("application/json; charset=" + "x" * 60_000, CALL, 415),
        ("application/json; charset=UTF-8", CALL, 422),
        ("application/json;charset=utf8", CALL, 422),
        ("text/plain", CALL, 422),
    ],
    ids=[
        "utf16",
        "utf16-declared",
        "latin1",
        "latin1-bytes",
        "utf7",
        "huge",
        "UTF-8",
        "utf8",
        "text",
    ],
)
def test_json_declared_in_another_charset_is_refused(client, api_key, content_type, body, status):
    response = send(client, api_key[1], "/v1/completions", body, content_type=content_type)
    assert response.status_code == status
    if status != 422:
        error = assert_refused(response.status_code, response["Content-Type"], response.content)
        assert error["code"] == "unsupported_media_type"
        assert not BatchRequest.objects.exists()


@pytest.mark.parametrize(
    "headers",
    [
        {"HTTP_AUTHORIZATION": "Bearer " + "k" * 100_000},
        {"HTTP_AUTHORIZATION": "Bearer \u00e9\u00ff\u0000key"},
        {"HTTP_AUTHORIZATION": "Bearer a b c"},
        {"HTTP_AUTHORIZATION": "bearer"},
    ],
    ids=["huge-key", "latin1-key", "spaces", "scheme-only"],
)
def test_absurd_authorization_headers_are_401(client, headers):
    before = snapshot()
    response = client.generic("POST", "/v1/chat/completions", CALL, **headers)
    assert response.status_code == 401
    assert_refused(response.status_code, response["Content-Type"], response.content)
    assert snapshot() == before


@pytest.mark.parametrize("declared", ["abc", "-1", "1e3", "9" * 40, " 12"])
def test_nonsense_content_length_is_refused(client, api_key, declared):
    response = send(client, api_key[1], "/v1/completions", CALL, CONTENT_LENGTH=declared)
    assert_refused(response.status_code, response["Content-Type"], response.content)
    assert not BatchRequest.objects.exists()


def test_long_junk_headers_do_not_matter(client, api_key):
    response = send(
        client,
        api_key[1],
        "/v1/completions",
        CALL,
        HTTP_X_JUNK="j" * 100_000,
        HTTP_ACCEPT="*" * 50_000,
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/chat/completions/", 404),
        ("POST", "/v1/v1/chat/completions", 404),
        ("POST", "/v1/files", 404),
        ("POST", "/v1/batches", 404),
        ("POST", "/v1/" + "a" * 20_000, 404),
        ("POST", "/v1/%00", 404),
        ("POST", "/v1/%ff%fe", 404),
        ("POST", "/v1/../admin/", 404),
        ("GET", "/v1/batch_requests/not-a-uuid", 404),
        ("GET", "/v1/batch_requests/00000000-0000-0000-0000-000000000000", 404),
        ("PUT", "/v1/chat/completions", 405),
        ("PATCH", "/v1/embeddings", 405),
        ("DELETE", "/v1/responses", 405),
        ("OPTIONS", "/v1/completions", 405),
        ("TRACE", "/v1/moderations", 405),
        ("BREW", "/v1/moderations", 405),
        ("POST", "/v1/batch_requests/00000000-0000-0000-0000-000000000000", 405),
        ("DELETE", "/v1/batch_requests/00000000-0000-0000-0000-000000000000", 405),
    ],
)
def test_unknown_paths_and_methods_are_openai_shaped(client, api_key, method, path, status):
    before = snapshot()
    response = client.generic(method, path, CALL, HTTP_AUTHORIZATION=f"Bearer {api_key[1]}")
    assert response.status_code == status
    assert_refused(response.status_code, response["Content-Type"], response.content)
    assert snapshot() == before


# --- Over a real socket: bodies are refused before being read whole -------------------------


def raw_exchange(url: str, head: bytes, body_chunks=(), timeout: float = 60) -> tuple[int, bytes]:
    """Send a hand-made request, possibly without its whole body, and read the answer."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed without reading the rest: what we want
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < answer_length(answer):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    head_part, _, content = answer.partition(b"\r\n\r\n")
    length = answer_length(answer) - len(head_part) - 4
    return int(head_part.split(b" ", 2)[1]), content[:length]


def answer_length(answer: bytes) -> int:
    head, _, _ = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return 1 << 62


def request_head(path: str, secret: str, *headers: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: localhost",
        f"Authorization: Bearer {secret}",
        "Content-Type: application/json",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Unreadable:
    """A request body that fails the test if anything reads it."""

    def read(self, *args):
        raise AssertionError("the body was read")

    readline = read


def unread_post(path: str, declared: int, **headers: str):
    """POST through the whole Django stack (middleware and all) with `declared` bytes of body
    that cannot be read; the time and memory the second such answer took."""
    from django.test.client import ClientHandler, RequestFactory

    environ = RequestFactory()._base_environ(
        PATH_INFO=path,
        REQUEST_METHOD="POST",
        CONTENT_TYPE="application/json",
        CONTENT_LENGTH=str(declared),
        **headers,
    )
    environ["wsgi.input"] = Unreadable()
    handler = ClientHandler(enforce_csrf_checks=False)
    handler(dict(environ))  # first imports and compiles what a first request needs
    tracemalloc.start()
    started = time.perf_counter()
    response = handler(environ)
    took = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return response, took, peak


@pytest.mark.parametrize(
    ("path", "header", "shape"),
    [
        ("/v1/chat/completions", "HTTP_AUTHORIZATION", assert_refused),
        ("/v1/messages", "HTTP_X_API_KEY", assert_refused_as_anthropic),
        (
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "HTTP_X_GOOG_API_KEY",
            assert_refused_as_google,
        ),
    ],
)
def test_a_wrong_key_is_refused_before_its_body_is_read(api_key, path, header, shape):
    """20 MB with a wrong key: 401 in milliseconds, memory flat, not a byte read."""
    value = "Bearer bp-wrong" if header == "HTTP_AUTHORIZATION" else "bp-wrong"
    response, took, peak = unread_post(path, 20 << 20, **{header: value})
    assert response.status_code == 401
    shape(401, response["Content-Type"], response.content)
    assert took < 0.5 and peak < 2 << 20, (took, peak)


@pytest.mark.parametrize(
    ("path", "header", "shape"),
    [
        ("/v1/chat/completions", "HTTP_AUTHORIZATION", assert_refused),
        ("/v1/messages", "HTTP_X_API_KEY", assert_refused_as_anthropic),
        (
            "/v1beta/models/gemini-2.5-flash:generateContent",
            "HTTP_X_GOOG_API_KEY",
            assert_refused_as_google,
        ),
    ],
)
def test_an_oversized_body_is_refused_from_its_length_unread_once_the_key_is_known(
    api_key, settings, path, header, shape
):
    secret = api_key[1]
    value = f"Bearer {secret}" if header == "HTTP_AUTHORIZATION" else secret
    response, took, peak = unread_post(path, settings.MAX_REQUEST_BYTES + 1, **{header: value})
    assert response.status_code == 413
    shape(413, response["Content-Type"], response.content)
    assert took < 0.5 and peak < 2 << 20, (took, peak)
    assert not BatchRequest.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_declared_oversized_body_is_refused_without_reading_it(live_server, api_key):
    """The server answers 413 while the client has sent no byte of the gigabyte it declared:
    had the proxy tried to read it, this exchange would hang until the timeout."""
    head = request_head("/v1/chat/completions", api_key[1], "Content-Length: 1000000000")
    status, content = raw_exchange(live_server.url, head)
    assert status == 413
    assert json.loads(content)["error"]["code"] == "request_too_large"
    assert not BatchRequest.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_chunked_body_without_length_is_refused_unread(live_server, api_key):
    """No Content-Length: 411 (Django reads at most what is declared), so 30 MB sent in chunks
    is never taken into memory."""
    head = request_head("/v1/chat/completions", api_key[1], "Transfer-Encoding: chunked")
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"x" * (1 << 20))
    status, content = raw_exchange(live_server.url, head, [chunk] * 30 + [b"0\r\n\r\n"])
    assert status == 411
    assert json.loads(content)["error"]["code"] == "length_required"
    assert_refused(status, "application/json", content)
    assert not BatchRequest.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_understated_length_reads_only_what_was_declared(live_server, api_key):
    head = request_head("/v1/chat/completions", api_key[1], "Content-Length: 12")
    status, content = raw_exchange(live_server.url, head, [b'{"model": "m", ' + b" " * (5 << 20)])
    assert status == 400
    assert_refused(status, "application/json", content)
    assert not BatchRequest.objects.exists()


# --- Generated input ------------------------------------------------------------------------

JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
CALL_LIKE = st.fixed_dictionaries(
    {"model": JSON_VALUE | st.text(max_size=40)},
    optional={
        "input": JSON_VALUE,
        "messages": JSON_VALUE,
        "stream": JSON_VALUE,
        "prompt": JSON_VALUE,
    },
).map(lambda body: json.dumps(body).encode())
# Nested near orjson's limit (1,024), with an odd leaf: what Python's recursive parser, the
# huge-integer check, or orjson may each trip on.
ODD_LEAF = st.sampled_from(
    [b"1234567890123456789", b"-99999999999999999999", b"1e400", b"NaN", b'"\\ud800"', b"1.5"]
)
DEEP_ODD = st.builds(
    lambda depth, leaf, dupe: (
        b'{"model": "m", "input": "x", "prompt": "p", '
        + (b'"input": "y", ' if dupe else b"")
        + b'"x": '
        + b"[" * depth
        + leaf
        + b"]" * depth
        + b"}"
    ),
    # Hypothesis favours small numbers: ask for the deep ones outright.
    st.integers(min_value=0, max_value=20) | st.integers(min_value=950, max_value=1100),
    ODD_LEAF,
    st.booleans(),
)
BODIES = st.one_of(
    CALL_LIKE,
    DEEP_ODD,
    JSON_VALUE.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=300),
    st.sampled_from([body for _, body in CORPUS]),
)
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # no .hypothesis folder in the work tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(endpoint=st.sampled_from(ENDPOINTS), body=BODIES, prefix=st.sampled_from(["/v1/", "/"]))
def test_generated_bodies_never_crash_and_refusals_store_nothing(
    client, api_key, endpoint, body, prefix
):
    before = snapshot()
    response = send(client, api_key[1], prefix + endpoint, body)
    if response.status_code == 422:  # accepted and queued
        assert json.loads(response.content)["error"]["code"] == "batch_pending"
        return
    if response.streaming:  # accepted, queued, and answered as the stream it asked for
        assert (response.status_code, response["Content-Type"]) == (200, "text/event-stream")
        response.close()
        return
    assert_refused(response.status_code, response["Content-Type"], response.content)
    assert snapshot() == before


@FUZZ
@given(body=DEEP_ODD, path=st.sampled_from(["/v1/embeddings", "/v1/messages"]))
def test_deep_and_odd_bodies_are_4xx_in_the_callers_shape(
    client, api_key, fake_anthropic, body, path
):
    before = snapshot()
    response = send(client, api_key[1], path, body)
    if response.status_code == 422:  # a valid call, queued (a duplicate key's last value wins)
        return
    if path == "/v1/messages":
        assert_refused_as_anthropic(
            response.status_code, response["Content-Type"], response.content
        )
    else:
        assert_refused(response.status_code, response["Content-Type"], response.content)
    assert snapshot() == before


@pytest.fixture
def openapi_schema(db):
    """The proxy's schema, served by its own WSGI app, which schemathesis then calls.

    As Django's test client does, requests must not close the test's database connection.
    """
    from batchproxy.wsgi import application

    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    yield schemathesis.openapi.from_wsgi("/v1/openapi.json", application)
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


@pytest.fixture
def no_holding(settings):
    """A generated `Prefer: wait=N` is parsed as ever, but held 0 s, not N (held calls have
    their own tests, test_held.py): holding made the schemathesis test take ten minutes."""
    settings.MAX_HOLD_SECONDS = 0


def test_schemathesis_over_the_proxys_own_openapi_description(openapi_schema, api_key, no_holding):
    """Every operation of /v1/openapi.json, fed valid and invalid requests by schemathesis."""
    auth = {"Authorization": f"Bearer {api_key[1]}"}
    operations = [result.ok() for result in openapi_schema.get_all_operations()]
    assert {op.path for op in operations} >= {f"/v1/{endpoint}" for endpoint in ENDPOINTS} | {
        "/v1/messages",
        "/v1beta/models/{model}:generateContent",
    }
    tried = []
    for operation, mode in itertools.product(operations, schemathesis.GenerationMode):

        @settings(FUZZ, max_examples=30)
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case):
            tried.append(case)
            if isinstance(case.body, dict) and case.body.get("stream") is True:
                # A stream of a pending call stays open until its batch lands (tests of
                # streams: test_held_streams.py); here the input's checks are the point.
                case.body["stream"] = False
            before = snapshot()
            response = case.call(headers=auth)
            content_type = response.headers.get("content-type", [""])
            content_type = content_type[0] if isinstance(content_type, list) else content_type
            if response.status_code in (200, 422):
                return
            if response.status_code == 502 and b'"batch_failed"' in response.content:
                # Its request's own answer: generated `X-Batch-Mode: now` calls, sent at once
                # to an upstream with no key here, failed it after SYNC_MAX_ATTEMPTS sends.
                return
            if case.operation.path == "/v1/messages":
                assert_refused_as_anthropic(response.status_code, content_type, response.content)
            elif case.operation.path.endswith(":generateContent"):
                assert_refused_as_google(response.status_code, content_type, response.content)
            else:
                assert_refused(response.status_code, content_type, response.content)
            assert snapshot() == before

        check()
    print(f"schemathesis: {len(tried)} cases over {len(operations)} operations")
    assert len(tried) >= 20 * len(operations)
