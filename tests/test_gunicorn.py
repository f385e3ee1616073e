"""The proxy behind gunicorn, with its own config: uvicorn's worker (ASGI, the default) and the
threaded WSGI worker; even gunicorn's own refusals are OpenAI-shaped (WSGI worker)."""

import contextlib
import json
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from .processes import ROOT, free_port, process_env

pytestmark = pytest.mark.e2e


WSGI = {"WEB_WORKER_CLASS": "batchproxy.web_worker.BufferingThreadWorker"}
ASGI = {}  # the config's default: uvicorn's worker
BOTH = pytest.mark.parametrize("gunicorn_port", [ASGI, WSGI], ids=["asgi", "wsgi"], indirect=True)


@pytest.fixture
def gunicorn_port(tmp_path, request):
    port = free_port()
    extra = getattr(request, "param", WSGI)
    env = process_env(tmp_path, PORT=str(port), HOST="127.0.0.1", BATCH_SERVER_API_KEY="k", **extra)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "batchproxy/gunicorn.conf.py"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert proc.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
        time.sleep(0.2)
    yield port
    proc.terminate()
    proc.wait(30)


def exchange(port: int, head: bytes) -> tuple[str, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = raw_head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status, headers, body


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: "
            + b"a" * 20000
            + b"\r\n\r\n",
            "431",
        ),
        (b"POST /v1/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "414"),
        (b"NOT A REQUEST\r\n\r\n", "400"),
    ],
    ids=["header-too-large", "request-line-too-long", "garbage"],
)
def test_gunicorns_own_refusals_are_openai_shaped(gunicorn_port, head, status):
    line, headers, body = exchange(gunicorn_port, head)
    assert line.split()[1] == status
    assert headers["Content-Type"] == "application/json"
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}


@BOTH
def test_gunicorn_serves_the_proxy(gunicorn_port):
    body = b'{"model": "m", "input": "x"}'
    line, headers, _ = exchange(
        gunicorn_port,
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body,
    )
    assert line.split()[1] == "422"
    assert {name.lower(): value for name, value in headers.items()}["x-batch-request-id"]


@BOTH
def test_slow_clients_do_not_take_the_web_workers(gunicorn_port):
    """50 clients send their request a byte a second (half still in the headers, half in a
    body with a good key); meanwhile /healthz answers at once, every time."""
    port = gunicorn_port
    healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert exchange(port, healthz)[0].split()[1] == "200"  # the app loaded: time it warm
    heads = [
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nX-Slow: ",
    ]
    drippers = []
    for i in range(50):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(heads[i % 2])
        drippers.append(sock)
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(1.0):
            for sock in drippers:
                with contextlib.suppress(OSError):  # cut off by the server: allowed
                    sock.sendall(b"a")

    dripping = threading.Thread(target=drip)
    dripping.start()
    try:
        time.sleep(1.5)  # every dripper has had its chance to take a thread
        waits = []
        for _ in range(10):
            started = time.monotonic()
            line, _, body = exchange(port, healthz)
            waits.append(time.monotonic() - started)
            assert line.split()[1] == "200", body
            time.sleep(0.5)
        assert max(waits) < 1.0, waits
    finally:
        stop.set()
        dripping.join()
        for sock in drippers:
            sock.close()


@pytest.mark.parametrize("gunicorn_port", [WSGI | {"WEB_READ_TIMEOUT": "2"}], indirect=True)
def test_a_request_not_received_in_time_is_408_and_closed(gunicorn_port):
    with socket.create_connection(("127.0.0.1", gunicorn_port), timeout=30) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
        started = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert 1.5 < time.monotonic() - started < 25  # a loaded machine answers late
    assert data.startswith(b"HTTP/1.1 408 ")
    assert json.loads(data.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"


def test_kept_alive_connections_are_received_whole_too(gunicorn_port):
    body = b'{"model": "m", "input": "x"}'
    call = (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", gunicorn_port), timeout=30) as sock:
        for _ in range(3):
            sock.sendall(call[:20])
            time.sleep(0.2)
            sock.sendall(call[20:])
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(1)
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
            answer = sock.recv(length, socket.MSG_WAITALL)
            assert head.startswith(b"HTTP/1.1 422 "), head
            assert json.loads(answer)["error"]["code"] == "batch_pending"
