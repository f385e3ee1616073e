"""Try-out mode, recorded in the data directory so that no process of it leaves it by accident.

`serve --fake-openai` (or `--fake-upstreams`) starts a fake of each kind of upstream and writes
DATA_DIR/try-out.json with their URLs, `{"fakes": {kind: base URL}}`. Every process of that data
directory reads it at start (batchproxy/settings.py) and sends to those fakes only, whatever
OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY or UPSTREAMS say: `flush_batches` or
`poll_batches` in another shell reach the fakes, never a provider. The record stays after the
try-out stops, so a later `serve` with a real key refuses to send the try-out's queued prompts
upstream until the operator removes it.

Standard library only: the settings module reads it before Django is set up.
"""

import json
import os
from pathlib import Path

FILE_NAME = "try-out.json"
FAKE_API_KEY = "fake-openai"
# Nothing listens there: a damaged record still means try-out, and reaches no provider.
NOWHERE = "http://127.0.0.1:9"
# The models each fake serves in a try-out, by upstream kind (serve starts one fake of each;
# a new kind of fake is an entry here and one in serve's FAKES). The OpenAI fake is the
# default upstream: it takes every model no other claims.
FAKE_MODELS = {
    "openai": ("*",),
    "anthropic": ("claude-*",),
    # Vertex AI's versioned Gemini ids (gemini-2.0-flash-001); ahead of the fake Gemini, which
    # takes the other gemini-* models.
    "vertex": ("gemini-*-0[0-9][0-9]",),
    "gemini": ("gemini-*",),
    "groq": ("llama-*", "openai/gpt-oss-*"),
    "together": ("meta-llama/*",),
    "mistral": ("mistral-*", "ministral-*", "codestral-*"),
    "fireworks": ("accounts/fireworks/models/*",),
    "xai": ("grok-*",),
    # Bedrock's model ids, on its own endpoints (boto3's bedrock-runtime) only.
    "bedrock": ("anthropic.*", "amazon.*", "meta.*"),
}


def fake_key(kind: str) -> str:
    """The placeholder key sent to a try-out's fake of this kind: never a real one."""
    return f"fake-{kind}"


def tryout_path(data_dir: Path) -> Path:
    return Path(data_dir) / FILE_NAME


def tryout_read(data_dir: Path) -> dict | None:
    """The try-out record of this data directory, `{"fakes": {kind: base URL}}` with an
    `openai` entry always, or None outside try-out mode.

    A record written before there were several fakes (`{"openai_base_url": …}`) names the
    OpenAI fake only; a damaged one sends every kind nowhere.
    """
    try:
        record = json.loads(tryout_path(data_dir).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return {"fakes": {kind: NOWHERE for kind in FAKE_MODELS}}
    fakes = record.get("fakes")
    if isinstance(fakes, dict):
        fakes = {str(kind): str(url) for kind, url in fakes.items()}
    else:
        fakes = {"openai": str(record.get("openai_base_url", NOWHERE))}
    fakes.setdefault("openai", NOWHERE)
    return {"fakes": fakes}


def tryout_upstreams(tryout: dict) -> list[dict]:
    """The upstreams of a try-out besides the default (OpenAI) one: one per fake, named after
    its kind, in settings.UPSTREAMS's shape. A kind this checkout does not know is left out."""
    return [
        {
            "name": kind,
            "kind": kind,
            "base_url": url,
            "key_env": "",  # no variable: the key is `fake_key(kind)`
            "models": list(FAKE_MODELS[kind]),
            "api_version": "",
        }
        for kind, url in tryout["fakes"].items()
        if kind != "openai" and kind in FAKE_MODELS
    ]


def tryout_record(data_dir: Path, *, fakes: dict[str, str]) -> Path:
    """Record (or move) this data directory's try-out to the fakes at these base URLs."""
    path = tryout_path(data_dir)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps({"fakes": fakes, "pid": os.getpid()}))
    partial.replace(path)  # readers see the old record or the new one, never half of one
    return path
