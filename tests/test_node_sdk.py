"""The official OpenAI Node SDK against a live proxy, with and without /v1 in its base URL, and
the official Anthropic TypeScript SDK against its /v1/messages."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .engine import cycle

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
NODE_DIR = Path(__file__).parent / "node"


def node_modules_ensure() -> None:
    """Skip without Node; install tests/node's SDKs when one is missing (a checkout made
    before a dependency joined has the others only)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js is not installed on this machine")
    dependencies = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    if not all((NODE_DIR / "node_modules" / name).exists() for name in dependencies):
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, capture_output=True
        )


@pytest.fixture(scope="module")
def node_client():
    node_modules_ensure()

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


def test_anthropic_typescript_sdk_gets_422_then_its_own_message_or_its_error(
    node_client, live_server, api_key, fake_anthropic
):
    for who in ("carol", "dave"):
        first = node_client(live_server.url, api_key[1], who, "anthropic.mjs")
        assert {r["status"] for r in first.values()} == {422}
        for pending in first.values():
            assert pending["body"]["type"] == "error"  # Anthropic's shape, not OpenAI's
            assert pending["body"]["error"]["type"] == "batch_pending"
            assert int(pending["retryAfter"]) >= 1 and pending["requestId"]
    cycle()

    for who in ("carol", "dave"):
        answers = node_client(live_server.url, api_key[1], who, "anthropic.mjs")
        assert answers["message"] == {"status": 200, "answer": f"echo: message for {who}"}
        refused = answers["refused"]
        assert refused["status"] == 400
        # The fake's error for that request, as it sent it.
        assert refused["body"] == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "Injected 400 for this request."},
            "request_id": "req_fake",
        }
    assert len(fake_anthropic.submitted()) == 4  # each caller's two calls, once each


def test_google_genai_typescript_sdk_gets_422_then_its_own_answer_or_its_error(
    node_client, live_server, api_key, fake_gemini
):
    for who in ("erin", "frank"):
        first = node_client(live_server.url, api_key[1], who, "gemini.mjs")
        assert {r["status"] for r in first.values()} == {422}
        for pending in first.values():
            error = pending["body"]["error"]  # Google's shape, not OpenAI's
            assert (error["code"], error["status"]) == (422, "FAILED_PRECONDITION")
            assert error["details"][0]["reason"] == "BATCH_PENDING"
    cycle()

    for who in ("erin", "frank"):
        answers = node_client(live_server.url, api_key[1], who, "gemini.mjs")
        assert answers["answer"] == {"status": 200, "answer": f"echo: answer for {who}"}
        refused = answers["refused"]
        assert refused["status"] == 400
        assert refused["body"]["error"] == {
            "code": 400,
            "message": "Injected 400.",
            "status": "INVALID_ARGUMENT",
        }
    assert len(fake_gemini.submitted()) == 4  # each caller's two calls, once each
    assert all(r["request"]["model"] == "models/gemini-2.5-flash" for r in fake_gemini.submitted())
