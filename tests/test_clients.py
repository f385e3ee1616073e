"""The client helpers (clients/python, clients/node): SDK calls that simply return their answer.

Unit tests drive the transports with a mock; the end-to-end ones run the example scripts and
the Node helper against a live proxy and the fake OpenAI, with the engine cycling meanwhile the
way the scheduler would.
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from batchproxy_client import (
    AsyncWaitingTransport,
    WaitingTransport,
    abulk,
    bulk,
    httpx,
)

from .engine import cycle

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "clients" / "python" / "examples"
NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="module")
def node() -> None:
    """Node.js with tests/node installed (the official SDK), as tests/test_node_sdk.py has it."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js is not installed on this machine")
    if not (NODE_DIR / "node_modules" / "openai").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, capture_output=True
        )


def pending_then_answer(times: int, retry_after: str = "7"):
    """A fake proxy: 422 pending `times` times, then the answer; counts the asks."""
    asked = []

    def handler(request):
        asked.append(request.content)
        if len(asked) <= times:
            return httpx.Response(
                422,
                headers={"retry-after": retry_after, "x-batch-request-id": "r1"},
                json={"error": {"code": "batch_pending"}},
            )
        return httpx.Response(200, json={"answer": 42})

    return handler, asked


def test_transport_repeats_the_identical_call_after_retry_after_until_answered():
    handler, asked = pending_then_answer(2)
    slept = []
    client = httpx.Client(
        transport=WaitingTransport(httpx.MockTransport(handler), sleep=slept.append)
    )
    response = client.post("http://proxy/v1/responses", content=b'{"model":"m"}')
    assert response.json() == {"answer": 42}
    assert slept == [7.0, 7.0]
    assert asked == [b'{"model":"m"}'] * 3


def test_transport_gives_the_sdk_the_422_once_the_deadline_has_passed():
    handler, asked = pending_then_answer(1000, retry_after="1")
    transport = WaitingTransport(
        httpx.MockTransport(handler), deadline=0.3, min_wait=0.1, max_wait=0.1
    )
    started = time.monotonic()
    response = httpx.Client(transport=transport).post("http://proxy/v1/responses", content=b"{}")
    assert response.status_code == 422
    assert 0.25 <= time.monotonic() - started < 2
    assert 2 <= len(asked) <= 5


def test_transport_leaves_other_answers_alone():
    def handler(request):
        return httpx.Response(422, json={"error": {"code": "something_else"}})

    slept = []
    transport = WaitingTransport(httpx.MockTransport(handler), sleep=slept.append)
    assert httpx.Client(transport=transport).get("http://proxy/x").status_code == 422
    assert slept == []


def test_async_transport_waits_without_blocking_the_loop():
    handler, asked = pending_then_answer(1, retry_after="0.2")

    async def main():
        transport = AsyncWaitingTransport(httpx.MockTransport(handler), min_wait=0.05)
        async with httpx.AsyncClient(transport=transport) as client:
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            task = asyncio.create_task(ticker())
            response = await client.post("http://proxy/v1/responses", content=b"{}")
            task.cancel()
            return response, ticks

    response, ticks = asyncio.run(main())
    assert response.json() == {"answer": 42} and len(asked) == 2
    assert ticks >= 5  # the loop ran on while the call waited


def test_bulk_returns_results_in_order_and_exceptions_in_place():
    def call(i):
        time.sleep(0.01 * (5 - i))
        if i == 3:
            raise ValueError("three")
        return i

    results = bulk([lambda i=i: call(i) for i in range(5)], progress=False, return_exceptions=True)
    assert results[:3] == [0, 1, 2] and results[4] == 4
    assert isinstance(results[3], ValueError)
    with pytest.raises(ValueError, match="three"):
        bulk([lambda i=i: call(i) for i in range(5)], progress=False)


def test_bulk_without_tqdm_says_how_to_get_its_progress_bar(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` raises ImportError
    with pytest.warns(UserWarning, match=r"batchproxy-client\[progress\]"):
        assert bulk([lambda: 1, lambda: 2]) == [1, 2]


def test_bulk_with_progress_off_warns_of_nothing(monkeypatch, recwarn):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert bulk([lambda: 1], progress=False) == [1]
    assert not recwarn.list


@pytest.mark.parametrize("script", ["sync_example.py", "async_example.py"])
def test_an_example_script_without_arguments_says_what_it_needs(script):
    result = subprocess.run(
        [sys.executable, script], cwd=EXAMPLES, capture_output=True, text=True, env=python_env()
    )
    assert result.returncode == 2
    assert f"usage: {script} [-h] base_url api_key [who]" in result.stderr
    assert "the following arguments are required: base_url, api_key" in result.stderr


def answering_proxy():
    """A fake proxy through the real SDK: each body is pending on its first ask only."""
    asked: list[str] = []

    def handler(request):
        body = json.loads(request.content)["input"]
        first = body not in asked
        asked.append(body)
        if first:
            return httpx.Response(
                422,
                headers={"retry-after": "1", "x-batch-request-id": body},
                json={"error": {"message": "pending", "type": "batch_pending"}},
            )
        return httpx.Response(200, json=response_body(body))

    return handler, asked


def response_body(text: str) -> dict:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 0,
        "model": "m",
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
    }


def test_bulk_queues_every_call_before_any_waits():
    import openai

    handler, asked = answering_proxy()
    transport = WaitingTransport(httpx.MockTransport(handler), sleep=lambda s: None)
    client = openai.OpenAI(
        base_url="http://proxy/v1",
        api_key="k",
        max_retries=0,
        http_client=httpx.Client(transport=transport),
    )
    texts = [f"t{i}" for i in range(10)]
    results = bulk(
        [lambda t=t: client.responses.create(model="m", input=t) for t in texts],
        concurrency=2,
        progress=False,
    )
    assert [r.output_text for r in results] == texts
    # All ten were asked (and so queued) before any was asked a second time.
    assert sorted(asked[:10]) == sorted(texts) and len(asked) == 20


def test_abulk_queues_every_call_before_any_waits():
    import openai

    handler, asked = answering_proxy()

    async def no_sleep(seconds):
        return None

    async def main():
        transport = AsyncWaitingTransport(httpx.MockTransport(handler), sleep=no_sleep)
        client = openai.AsyncOpenAI(
            base_url="http://proxy/v1",
            api_key="k",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=transport),
        )
        return await abulk(
            [lambda t=t: client.responses.create(model="m", input=t) for t in texts],
            concurrency=3,
            progress=False,
        )

    texts = [f"a{i}" for i in range(9)]
    results = asyncio.run(main())
    assert [r.output_text for r in results] == texts
    assert sorted(asked[:9]) == sorted(texts) and len(asked) == 18


def test_abulk_bounds_concurrency_and_keeps_order():
    running, peak = 0, 0

    async def call(i):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01 * (6 - i))
        running -= 1
        return i * i

    results = asyncio.run(abulk([lambda i=i: call(i) for i in range(6)], concurrency=2))
    assert results == [0, 1, 4, 9, 16, 25]
    assert peak == 2


# --- Against a live proxy ---------------------------------------------------------------------


@pytest.fixture
def fast_proxy(settings):
    """Retry-After of one second: the proxy flushes at once and polls every second."""
    settings.BATCH_MAX_WAIT = 0
    settings.POLL_INTERVAL = 1


def run_while_cycling(args: list[str], cwd: Path, env: dict | None = None) -> dict:
    """Run a client script while the engine cycles, as the scheduler would; its JSON output."""
    proc = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the client script did not finish"
        cycle()
        time.sleep(0.3)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    return json.loads(out)


def python_env() -> dict:
    return os.environ | {"PYTHONPATH": str(ROOT / "clients" / "python")}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_python_sync_script_gets_its_answers_with_no_loop_of_its_own(
    live_server, api_key, fake_openai, fast_proxy
):
    out = run_while_cycling(
        [sys.executable, "sync_example.py", f"{live_server.url}/v1", api_key[1], "ann"],
        EXAMPLES,
        python_env(),
    )
    assert out == {
        "single": "echo: single for ann",
        "bulk": [f"echo: bulk {i} for ann" for i in range(4)],
    }


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_python_asyncio_script_gets_its_answers_with_no_loop_of_its_own(
    live_server, api_key, fake_openai, fast_proxy
):
    out = run_while_cycling(
        [sys.executable, "async_example.py", f"{live_server.url}/v1", api_key[1], "bo"],
        EXAMPLES,
        python_env(),
    )
    assert out == {"single": "echo: async single for bo", "bulk": [8] * 5}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_node_helper_gets_its_answers_with_no_loop_of_its_own(
    node, live_server, api_key, fake_openai, fast_proxy
):
    out = run_while_cycling(
        ["node", "waiting.mjs", f"{live_server.url}/v1", api_key[1], "cy"], NODE_DIR
    )
    assert out == {
        "single": "echo: node single for cy",
        "bulk": [f"echo: node bulk {i} for cy" for i in range(4)],
    }


def test_node_bulk_queues_every_call_before_any_waits(node):
    out = subprocess.run(
        ["node", "bulk_order.mjs"], cwd=NODE_DIR, check=True, capture_output=True, text=True
    )
    result = json.loads(out.stdout)
    inputs = [f"n{i}" for i in range(8)]
    assert result["answers"] == inputs
    assert sorted(result["asked"][:8]) == inputs and len(result["asked"]) == 16


def test_node_fetch_gives_the_sdk_the_422_once_its_deadline_has_passed(node):
    out = subprocess.run(
        ["node", "deadline.mjs"], cwd=NODE_DIR, check=True, capture_output=True, text=True
    )
    result = json.loads(out.stdout)
    assert (result["status"], result["code"]) == (422, "batch_pending")
    assert 300 <= result["ms"] < 3000 and 3 <= result["asks"] <= 10
