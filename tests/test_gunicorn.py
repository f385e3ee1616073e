"""The proxy behind gunicorn, with its own config: even gunicorn's refusals are OpenAI-shaped."""

import json
import socket
import subprocess
import sys
import time

import pytest

from .processes import ROOT, free_port, process_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def gunicorn_port(tmp_path):
    port = free_port()
    env = process_env(tmp_path, PORT=str(port), HOST="127.0.0.1", BATCH_SERVER_API_KEY="k")
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "batchproxy/gunicorn.conf.py", "batchproxy.wsgi"],
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
    assert headers["X-Batch-Request-Id"]
