"""`manage.py serve`: the one command that runs the whole proxy (gunicorn + django-q2)."""

import os
import socket
import subprocess
import sys
import threading
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
        # Where gunicorn would put its control socket if it made one.
        "HOME": str(tmp_path / "home"),
    }
    env.pop("XDG_RUNTIME_DIR", None)
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
    output: list[str] = []  # what serve and its children print, read as it comes
    threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True).start()
    try:
        wait_for_port(port, proc)
        yield port, proc, output, tmp_path
    finally:
        proc.terminate()
        try:
            # serve gives its children 30 s to end their step before it kills them.
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def manage(*args: str, data_dir: Path, **env: str) -> subprocess.CompletedProcess:
    """A manage.py command in another shell: that data directory, no upstream key unless given."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "POSTGRES_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL")
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=base | {"DATA_DIR": str(data_dir)} | env,
        timeout=120,
    )


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
    port, proc, output, _ = served
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
    # Quiet by default: the scheduler says it runs, not every task of every tick.
    assert any("Q Cluster" in line and "running" in line for line in output)
    assert not [line for line in output if "Processed '" in line or "Enqueued [" in line]


def test_start_up_text_says_where_to_go_and_what_is_missing(served):
    """What serve prints, line by line; never the order of its lines among its children's
    (gunicorn and qcluster write to the same screen, as they come)."""
    port, _, output, tmp_path = served
    with socket.create_connection(("127.0.0.1", port)) as sock:  # a request: the app is loaded
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        sock.recv(1000)
    deadline = time.monotonic() + 90  # a loaded machine starts gunicorn slowly
    while not any("Try-out pace" in line for line in output) and time.monotonic() < deadline:
        time.sleep(0.2)
    text = "".join(output)
    running = f"batchproxy running (role: all) at http://127.0.0.1:{port}/ (listening on "
    assert running + "127.0.0.1 only)" in text
    assert f"SDK base URL: http://127.0.0.1:{port}/v1" in text
    assert f"Admin:        http://127.0.0.1:{port}/admin/" in text
    assert "Admin account: none yet. Make one:" in text and "manage.py createsuperuser" in text
    assert "Try-out pace: a new call is answered within about" in text
    assert "No directory at" not in text and "Warning" not in text
    # A try-out's key is for this machine: gunicorn itself bound loopback, not every address.
    assert f"Listening at: http://127.0.0.1:{port}" in text
    assert "0.0.0.0" not in text  # noqa: S104
    # No control socket in the home directory (gunicorn's default), nor anywhere.
    assert not (tmp_path / "home" / ".gunicorn").exists()
    assert "gunicorn.ctl" not in text


@pytest.mark.parametrize(
    "command", [["flush_batches"], ["poll_batches"], ["qcluster", "--run-once"]]
)
def test_commands_that_call_upstream_refuse_to_start_without_a_key(tmp_path, command):
    result = manage(*command, data_dir=tmp_path)
    assert result.returncode != 0
    assert "No upstream key is set" in result.stderr
    assert "--fake-openai" in result.stderr


def test_try_out_mode_is_found_by_the_other_commands_of_its_data_directory(served):
    """`serve --fake-openai` records its fake in DATA_DIR: a command in another shell, with no
    key or even with a real one, sends to that fake and never to OpenAI."""
    _, _, output, data_dir = served
    fake_url = next(line for line in output if "fake OpenAI at" in line).split(" at ")[1].strip()
    show = "from django.conf import settings; print(settings.OPENAI_BASE_URL)"
    for env in ({}, {"OPENAI_API_KEY": "sk-real-looking-key"}):
        shown = manage("shell", "-c", show, data_dir=data_dir, **env).stdout
        assert shown.strip().splitlines()[-1] == fake_url
    result = manage("poll_batches", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    assert "batches polled" in result.stdout


def test_try_out_sends_claude_to_its_fake_anthropic_in_every_process_never_a_real_key(served):
    """The fake Anthropic is in the record too: another shell's process, even with a real
    Anthropic key and an upstream of its own in its environment, routes claude-* to the fake,
    with a placeholder key."""
    _, _, output, data_dir = served
    fake_url = next(line for line in output if "fake Anthropic at" in line).split(" at ")[1]
    show = (
        "from batches_app import upstreams; "
        "u = upstreams.upstream_route(endpoint='/v1/messages', model='claude-sonnet-4-5'); "
        "print([x.name for x in upstreams.upstreams_all()], u.base_url, upstreams.upstream_key(u))"
    )
    real = {
        "ANTHROPIC_API_KEY": "sk-ant-real-looking-key",
        "UPSTREAMS": "groq",
        "UPSTREAM_GROQ_BASE_URL": "https://api.groq.com/openai/v1",
        "UPSTREAM_GROQ_MODELS": "*",
    }
    for env in ({}, real):
        shown = manage("shell", "-c", show, data_dir=data_dir, **env)
        assert shown.returncode == 0, shown.stderr
        names, url, key = shown.stdout.strip().splitlines()[-1].rsplit(" ", 2)
        kinds = "anthropic vertex gemini groq together mistral fireworks xai bedrock openai"
        fakes = str(kinds.split())
        assert names == fakes  # the environment's set aside
        assert (url, key) == (fake_url.strip(), "fake-anthropic")


def test_serve_with_a_real_key_refuses_a_try_out_data_directory(tmp_path):
    from batchproxy.tryout import tryout_record

    tryout_record(tmp_path, fakes={"openai": "http://127.0.0.1:1/v1"})
    result = manage("serve", data_dir=tmp_path, OPENAI_API_KEY="sk-real-looking-key")
    assert result.returncode != 0
    assert "try-out mode" in result.stderr
    assert "try-out.json" in result.stderr


@pytest.mark.parametrize(
    ("record", "fakes"),
    [
        ('{"fakes": {"openai": "http://f:1/v1", "anthropic": "http://f:2"}}', None),
        # Written before the fake Anthropic was recorded: the OpenAI fake only.
        ('{"openai_base_url": "http://f:1/v1", "pid": 7}', {"openai": "http://f:1/v1"}),
        # Damaged: still try-out, every kind sent where nothing listens.
        (
            "{not json",
            dict.fromkeys(
                (
                    "openai",
                    "anthropic",
                    "vertex",
                    "gemini",
                    "groq",
                    "together",
                    "mistral",
                    "fireworks",
                    "xai",
                    "bedrock",
                ),
                "http://127.0.0.1:9",
            ),
        ),
    ],
    ids=["current", "old", "damaged"],
)
def test_a_try_out_record_is_read_in_each_of_its_forms(tmp_path, record, fakes):
    from batchproxy.tryout import tryout_path, tryout_read, tryout_upstreams

    tryout_path(tmp_path).write_text(record)
    tryout = tryout_read(tmp_path)
    assert tryout["fakes"] == (fakes or {"openai": "http://f:1/v1", "anthropic": "http://f:2"})
    others = {u["name"]: u["models"] for u in tryout_upstreams(tryout)}
    expected = {
        "anthropic": ["claude-*"],
        "vertex": ["gemini-*-0[0-9][0-9]"],
        "gemini": ["gemini-*"],
        "groq": ["llama-*", "openai/gpt-oss-*"],
        "together": ["meta-llama/*"],
        "mistral": ["mistral-*", "ministral-*", "codestral-*"],
        "fireworks": ["accounts/fireworks/models/*"],
        "xai": ["grok-*"],
        "bedrock": ["anthropic.*", "amazon.*", "meta.*"],
    }
    assert others == {kind: expected[kind] for kind in tryout["fakes"] if kind != "openai"}
