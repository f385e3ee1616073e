"""`manage.py serve`: the one command that runs the whole proxy (gunicorn + django-q2)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
def served(tmp_path):
    """A proxy started the way the README says, on a fresh SQLite file, in try-out mode."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "POSTGRES_URL")}
    env |= {
        "DATA_DIR": str(tmp_path),
        "BATCH_SERVER_API_KEY": "serve-test-key",
        "BATCH_MAX_WAIT": "0",
        "POLL_INTERVAL": "1",
        "WEB_CONCURRENCY": "1",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "serve",
            "--fake-openai",
            "--fake-step-seconds",
            "0",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port, proc)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(30)


def test_serve_refuses_to_start_without_an_upstream_key(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "POSTGRES_URL", "OPENAI_API_KEY")
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "serve"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env | {"DATA_DIR": str(tmp_path)},
        timeout=60,
    )
    assert result.returncode != 0
    assert "OPENAI_API_KEY" in result.stderr
    assert "--fake-openai" in result.stderr


def test_serve_answers_through_its_own_scheduler(served):
    """One full cycle with nothing but the scheduler's schedules: 422, then the answer."""
    port, proc = served
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="serve-test-key", max_retries=0
    )
    ask = lambda: client.chat.completions.create(  # noqa: E731
        model="gpt-4o-mini", messages=[{"role": "user", "content": "served?"}]
    )
    started = time.monotonic()
    with pytest.raises(openai.UnprocessableEntityError):
        ask()
    # django-q2 wakes every 30 s and the schedules run each minute: allow two rounds.
    while time.monotonic() - started < 150:
        try:
            answer = ask()
            break
        except openai.UnprocessableEntityError:
            time.sleep(1)
    else:
        raise AssertionError("no answer within 150 s")
    assert answer.choices[0].message.content == "echo: served?"
    print(f"full cycle through serve: {time.monotonic() - started:.1f} s")
    assert proc.poll() is None
