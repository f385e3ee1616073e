"""The try-out a new user makes: `serve --fake-openai`, then the documented examples, as written."""

import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import openai
import pytest

from .test_node_sdk import NODE_DIR, node_modules_ensure
from .test_serve import ROOT, free_port, wait_for_port

pytestmark = pytest.mark.e2e


EXAMPLES = 2  # per language: with the repository's client helper, then the bare loop
ANSWER = "echo: Summarise the Batch API in one line."


# Where a user reads the examples: the README's first call, then the pages of docs/.
DOCUMENTS = ("README.md", "docs/clients.md", "docs/providers.md", "docs/api.md")


def documented_blocks(language: str) -> list[str]:
    """Every whole example in `language` of the documents, each once, in reading order.

    Whole examples are the blocks that make their own client (`localhost:9487`); the others
    are fragments that continue one of them. The README's first call is also in docs/clients.md.
    """
    blocks = []
    for document in DOCUMENTS:
        text = (ROOT / document).read_text()
        for block in re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL):
            if "localhost:9487" in block and block not in blocks:
                blocks.append(block)
    return blocks


def readme_example(language: str, number: int) -> str:
    """The documents' whole OpenAI example number `number` in `language`, as copied."""
    whole = [b for b in documented_blocks(language) if not any(m in b for m in PROVIDER_SDKS)]
    assert len(whole) == EXAMPLES, f"the documented {language} examples changed: {len(whole)}"
    return whole[number]


def test_the_readmes_first_call_is_one_of_the_examples_run():
    [first_call] = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert first_call == readme_example("python", 0)


# How an example of another provider's SDK shows itself.
PROVIDER_SDKS = ("anthropic", "from google import genai", "@google/genai")


def readme_provider_example(language: str, sdk: str) -> str:
    """The documents' one whole example of that provider's SDK in `language`."""
    whole = [b for b in documented_blocks(language) if sdk in b]
    assert len(whole) == 1, f"the documented {language} {sdk} examples changed: {len(whole)}"
    return whole[0]


def first_call_to_answer(command: list[str], cwd, data_dir, env=None) -> tuple[float, str]:
    """Run an example; the seconds from its first call to its first printed line, and that line.

    The first call's time is its request's `created_at` in the proxy's database: the example's
    own start (an interpreter and the SDK loading, seconds on a busy machine) is not the proxy's.
    """
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline().strip()
        printed = datetime.now(UTC)
        _, err = proc.communicate(timeout=60)  # the rest of the example runs to its end too
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    with sqlite3.connect(data_dir / "batchproxy.sqlite3") as db:
        [(first,)] = db.execute("SELECT min(created_at) FROM requests_app_batchrequest")
    first_call = datetime.fromisoformat(first).replace(tzinfo=UTC)
    return (printed - first_call).total_seconds(), line


@pytest.fixture
def try_out(tmp_path, request):
    """`serve --fake-openai` as the README's quick start runs it: no settings but the key
    (and those a test passes as its parameter)."""
    port = free_port()
    drop = ("DATABASE_URL", "POSTGRES_URL", "BATCH_MAX_WAIT", "POLL_INTERVAL", "TICK_SECONDS")
    drop += ("SECRET_KEY", "ALLOWED_HOSTS")  # a try-out needs neither
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PYTEST")}
    env |= {"DATA_DIR": str(tmp_path), "BATCH_SERVER_API_KEY": "my-proxy-key"}
    env |= {"WEB_CONCURRENCY": "1"}  # a shared 2-core machine
    env |= getattr(request, "param", {})
    command = [sys.executable, "manage.py", "serve", "--fake-openai", "--port", str(port)]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        wait_for_port(port, proc)
        # As a user would: once serve says both its web server and its scheduler are up.
        deadline = time.monotonic() + 60
        while not any("Q Cluster" in line and "running" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            time.sleep(0.2)
        yield port, lines, tmp_path
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("number", range(EXAMPLES), ids=["helper", "loop"])
def test_a_readme_python_example_prints_its_answer_within_15_seconds(try_out, number):
    port, output, data_dir = try_out
    code = readme_example("python", number).replace("localhost:9487", f"localhost:{port}")
    assert f"localhost:{port}" in code
    # What `pip install ./clients/python` gives the helper's example.
    env = os.environ | {"PYTHONPATH": str(ROOT / "clients" / "python")}

    took, line = first_call_to_answer([sys.executable, "-c", code], ROOT, data_dir, env)

    assert line == ANSWER
    print(f"README Python example {number} answered {took:.1f} s after its first call")
    assert took < 15
    assert any("Try-out waits: BATCH_MAX_WAIT=1 s, TICK_SECONDS=1 s" in line for line in output)


def node_example_answer(code: str, data_dir, name: str) -> tuple[float, str]:
    """`first_call_to_answer` for a Node example, run as a script beside the test client, so
    that its imports (`openai`, `@anthropic-ai/sdk`, `@google/genai`) find the installed SDKs."""
    script = NODE_DIR / f"{name}.mjs"
    script.write_text(code)
    try:
        return first_call_to_answer(["node", script.name], NODE_DIR, data_dir)
    finally:
        script.unlink()


@pytest.mark.parametrize("number", range(EXAMPLES), ids=["helper", "loop"])
def test_a_readme_node_example_prints_its_answer_within_15_seconds(try_out, number):
    node_modules_ensure()
    port, _, data_dir = try_out
    code = readme_example("js", number).replace("localhost:9487", f"localhost:{port}")
    # The helper from the checkout, as its import's own comment offers.
    helper = (ROOT / "clients" / "node" / "index.js").as_uri()
    code = code.replace('from "batchproxy-client"', f'from "{helper}"')
    took, line = node_example_answer(code, data_dir, f"readme-example-{port}")

    assert line == ANSWER
    print(f"README Node example {number} answered {took:.1f} s after its first call")
    assert took < 15


@pytest.mark.parametrize("try_out", [{"POLL_INTERVAL": "3600"}], indirect=True)
def test_with_polls_an_hour_apart_the_webhook_brings_the_answer_within_seconds(try_out):
    """qcluster alone drives the engine; only the fake's webhook can bring the answer soon."""
    port, _, data_dir = try_out
    client = openai.OpenAI(
        base_url=f"http://localhost:{port}/v1", api_key="my-proxy-key", max_retries=0
    )
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hook me"}]}
    started = time.monotonic()
    while time.monotonic() - started < 30:
        try:
            answer = client.chat.completions.create(**body)
            break
        except openai.UnprocessableEntityError:
            time.sleep(0.2)  # sooner than Retry-After: to see when the answer is there
    else:
        raise AssertionError("no answer within 30 s")
    took = time.monotonic() - started
    print(f"answered {took:.1f} s after the first call, polls an hour apart")
    assert answer.choices[0].message.content == "echo: hook me"
    # A tick to flush (BATCH_MAX_WAIT 1 s, ticks of 1 s), 1.5 s upstream, then the webhook.
    assert took < 10
    with sqlite3.connect(data_dir / "batchproxy.sqlite3") as db:
        [(received,)] = db.execute("SELECT count(*) FROM batches_app_openaiwebhook").fetchall()
    assert received == 1


def batched_to(data_dir) -> tuple[str, str]:
    """The upstream and endpoint of the one request a try-out's example made."""
    with sqlite3.connect(data_dir / "batchproxy.sqlite3") as db:
        [(upstream, endpoint)] = db.execute(
            "SELECT b.upstream, r.endpoint FROM requests_app_batchrequest r "
            "JOIN batches_app_batch b ON b.id = r.batch_id"
        ).fetchall()
    return upstream, endpoint


# What serve says of each fake besides OpenAI's.
FAKE_LINES = {
    "anthropic": "claude-* models to the built-in fake Anthropic at",
    "gemini": "gemini-* models to the built-in fake Gemini at",
}


@pytest.mark.parametrize(
    ("sdk", "language", "kind", "endpoint"),
    [
        ("anthropic", "python", "anthropic", "/v1/messages"),
        ("anthropic", "js", "anthropic", "/v1/messages"),
        ("from google import genai", "python", "gemini", "/v1beta/models:generateContent"),
        ("@google/genai", "js", "gemini", "/v1beta/models:generateContent"),
    ],
    ids=["anthropic-python", "anthropic-js", "gemini-python", "gemini-js"],
)
def test_a_readme_provider_example_is_answered_by_its_fake(try_out, sdk, language, kind, endpoint):
    """claude-* and gemini-* in try-out mode: the provider SDK's call is batched to the fake
    of its kind that serve started, and answered within 15 s, as the OpenAI examples are."""
    port, output, data_dir = try_out
    code = readme_provider_example(language, sdk).replace("localhost:9487", f"localhost:{port}")
    assert f"localhost:{port}" in code
    if language == "python":
        took, line = first_call_to_answer([sys.executable, "-c", code], ROOT, data_dir)
    else:
        node_modules_ensure()
        took, line = node_example_answer(code, data_dir, f"readme-provider-{port}")

    assert line == ANSWER
    print(f"README {kind} {language} example answered {took:.1f} s after its first call")
    assert took < 15
    assert any(FAKE_LINES[kind] in line for line in output)
    assert batched_to(data_dir) == (kind, endpoint)
