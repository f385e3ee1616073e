"""Frameworks and tools as their users write them, against `serve --fake-openai`.

Each is unchanged but for its base URL, key and timeout, and `Prefer: wait=N` where it does not
stream: one call, no loop of ours, no error while the batch runs, and the caller's own answer
(the fake's `echo: <prompt>`). Retries are off where a framework has them, so that none can
hide a 422 behind a second call.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import openai
import pydantic
import pytest

from .processes import fresh_postgres
from .test_node_sdk import NODE_DIR, node_modules_ensure
from .test_serve import ROOT, free_port, wait_for_port

pytestmark = pytest.mark.e2e

KEY = "frameworks-key"
HOLD = {"Prefer": "wait=30"}  # held up to 30 s: the timeouts below are above it
TIMEOUT = 60


@pytest.fixture(scope="module")
def database():
    """A fresh PostgreSQL database when the run is on PostgreSQL (held callers are woken by
    its notifications there), else nothing: the try-out's SQLite file."""
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        yield {}
        return
    with fresh_postgres("frameworks") as url:
        yield {"DATABASE_URL": url}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, database) -> str:
    """`serve --fake-openai` with quick batches, shared by the module: its SDK base URL."""
    data_dir = tmp_path_factory.mktemp("frameworks")
    port = free_port()
    drop = ("DATABASE_URL", "POSTGRES_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL")
    env = {k: v for k, v in os.environ.items() if k not in drop} | database
    env |= {
        "DATA_DIR": str(data_dir),
        "BATCH_SERVER_API_KEY": KEY,
        "BATCH_MAX_WAIT": "0",
        "TICK_SECONDS": "0.5",
        "POLL_INTERVAL": "1",
        "WEB_CONCURRENCY": "1",
        "HOME": str(data_dir / "home"),
    }
    command = [sys.executable, "manage.py", "serve", "--fake-openai", "--fake-step-seconds", "0"]
    proc = subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        wait_for_port(port, proc)
        deadline = time.monotonic() + 60
        while not any("Q Cluster" in line and "running" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_langchain_chat_openai_invoke(proxy):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="gpt-4o-mini",
        base_url=proxy,
        api_key=KEY,
        timeout=TIMEOUT,
        default_headers=HOLD,
        max_retries=0,
    )
    assert llm.invoke("LangChain, invoked").content == "echo: LangChain, invoked"


def test_langchain_chat_openai_stream(proxy):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="gpt-4o-mini", base_url=proxy, api_key=KEY, timeout=TIMEOUT, max_retries=0
    )
    chunks = list(llm.stream("LangChain, streamed"))
    assert "".join(chunk.content for chunk in chunks) == "echo: LangChain, streamed"


LLAMAINDEX = "llama-index-llms-openai>=0.8,<0.9"
LLAMAINDEX_CALL = """
import sys
from llama_index.llms.openai import OpenAI

base_url, key, prefer, timeout = sys.argv[1:]
llm = OpenAI(
    model="gpt-4o-mini",
    api_base=base_url,
    api_key=key,
    timeout=float(timeout),
    default_headers={"Prefer": prefer},
    max_retries=0,
)
print(llm.complete("LlamaIndex, completed").text)
"""


def llamaindex_path() -> str:
    """LlamaIndex's OpenAI LLM, installed once into tests/.frameworks/ with the openai (2.x) it
    holds to, apart from the proxy's openai 3: put first on its process's path."""
    target = ROOT / "tests" / ".frameworks" / "llamaindex"
    if not (target / "llama_index" / "llms" / "openai").is_dir():
        installed = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), LLAMAINDEX],
            capture_output=True,
            text=True,
        )
        if installed.returncode != 0:
            pytest.skip(f"{LLAMAINDEX} could not be installed: {installed.stderr[-300:]}")
    return str(target)


def test_llamaindex_openai_llm(proxy):
    env = os.environ | {"PYTHONPATH": llamaindex_path()}
    called = subprocess.run(
        [sys.executable, "-c", LLAMAINDEX_CALL, proxy, KEY, HOLD["Prefer"], str(TIMEOUT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT + 60,
    )
    assert called.returncode == 0, called.stderr[-2000:]
    assert called.stdout.strip() == "echo: LlamaIndex, completed"


class City(pydantic.BaseModel):
    name: str
    visits: int


def test_instructor_gives_a_pydantic_model(proxy):
    import instructor

    client = instructor.from_openai(
        openai.OpenAI(
            base_url=proxy, api_key=KEY, timeout=TIMEOUT, default_headers=HOLD, max_retries=0
        ),
        # The fake answers in text (its echo of the prompt), never with a tool call: instructor's
        # mode that reads JSON out of text reads the object the prompt holds.
        mode=instructor.Mode.MD_JSON,
    )
    city = client.chat.completions.create(
        model="gpt-4o-mini",
        response_model=City,
        max_retries=0,
        messages=[
            {"role": "user", "content": 'Instructor, as JSON: {"name": "Oslo", "visits": 3}'}
        ],
    )
    # instructor hands back a model of its own making from City's schema, with City's fields.
    assert isinstance(city, pydantic.BaseModel) and city.model_dump() == {
        "name": "Oslo",
        "visits": 3,
    }


def test_pydantic_ai_agent_run(proxy):
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    client = openai.AsyncOpenAI(
        base_url=proxy, api_key=KEY, timeout=TIMEOUT, default_headers=HOLD, max_retries=0
    )
    model = OpenAIChatModel("gpt-4o-mini", provider=OpenAIProvider(openai_client=client))
    result = Agent(model).run_sync("pydantic-ai, run")
    assert result.output == "echo: pydantic-ai, run"


def test_litellm_completion(proxy, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of prices at import
    import litellm

    answer = litellm.completion(
        model="openai/gpt-4o-mini",
        api_base=proxy,
        api_key=KEY,
        timeout=TIMEOUT,
        extra_headers=HOLD,
        num_retries=0,
        messages=[{"role": "user", "content": "LiteLLM, completed"}],
    )
    assert answer.choices[0].message.content == "echo: LiteLLM, completed"


def test_vercel_ai_sdk_generate_text_and_stream_text(proxy):
    node_modules_ensure()
    out = subprocess.run(
        ["node", "frameworks.mjs", proxy, KEY, json.dumps(HOLD)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=2 * TIMEOUT,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "generateText": "echo: Vercel AI SDK, generateText",
        "streamText": "echo: Vercel AI SDK, streamText",
    }


def curl(proxy: str, *args: str, body: dict) -> str:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed on this machine")
    headers = ["-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json"]
    data = ["-d", json.dumps(body), f"{proxy}/chat/completions"]
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--max-time", str(TIMEOUT), *args, *headers, *data],
        capture_output=True,
        text=True,
        timeout=TIMEOUT + 10,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_curl_n_streams_the_answer(proxy):
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "curl, streamed"}],
    }
    events = curl(proxy, "-N", body=body).splitlines()
    data = [line.removeprefix("data: ") for line in events if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "echo: curl, streamed"


def test_curl_held_by_prefer_wait(proxy):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "curl, held"}]}
    answer = json.loads(curl(proxy, "-H", f"Prefer: {HOLD['Prefer']}", body=body))
    assert answer["choices"][0]["message"]["content"] == "echo: curl, held"
