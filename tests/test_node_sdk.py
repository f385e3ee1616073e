"""The official OpenAI Node SDK against a live proxy, with and without /v1 in its base URL."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .engine import cycle

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
NODE_DIR = Path(__file__).parent / "node"


@pytest.fixture(scope="module")
def node_client():
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js is not installed on this machine")
    if not (NODE_DIR / "node_modules" / "openai").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, capture_output=True
        )

    def run(base_url: str, key: str, who: str, script: str = "client.mjs") -> dict:
        out = subprocess.run(
            ["node", script, base_url, key, who],
            cwd=NODE_DIR,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return json.loads(out.stdout)

    return run


@pytest.mark.parametrize("suffix", ["/v1", ""], ids=["v1", "no-v1"])
def test_node_sdk_gets_422_then_its_own_answers(
    node_client, live_server, api_key, fake_openai, suffix
):
    base_url = live_server.url + suffix
    for who in ("carol", "dave"):
        first = node_client(base_url, api_key[1], who)
        assert {r["status"] for r in first.values()} == {422}
        assert all(
            r["code"] == "batch_pending" and int(r["retryAfter"]) >= 1 for r in first.values()
        )
    cycle()

    for who in ("carol", "dave"):
        answers = node_client(base_url, api_key[1], who)
        assert {name: r["answer"] for name, r in answers.items()} == {
            "responses": f"echo: responses for {who}",
            "chat": f"echo: chat for {who}",
            "completions": f"echo: completions for {who}",
            "embeddings": 8,
            "moderations": 1,
        }


@pytest.mark.parametrize("suffix", ["/v1", ""], ids=["v1", "no-v1"])
@pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")  # the proxy's own SDK
def test_node_sdk_gets_422_then_the_image_or_video_of_its_own_call(
    node_client, live_server, api_key, fake_openai, suffix
):
    base_url = live_server.url + suffix
    for who in ("carol", "dave"):
        first = node_client(base_url, api_key[1], who, "images.mjs")
        assert {name: r["status"] for name, r in first.items()} == {
            "gptImage": 422,
            "dallE": 422,
            "edit": 422,
            "video": 422,
            "multipartEdit": 400,
        }
        assert "JSON form" in first["multipartEdit"]["message"]
    cycle()

    for who in ("carol", "dave"):
        answers = node_client(base_url, api_key[1], who, "images.mjs")
        assert {name: r.get("answer") for name, r in answers.items()} == {
            "gptImage": f"echo: a fox for {who}",
            "dallE": f"echo: a lake for {who}",
            "edit": f"echo: a hat for {who} on https://example.com/cat.png",
            "video": f"echo: a film for {who}",
            "multipartEdit": None,
        }
