"""Try-out mode, recorded in the data directory so that no process of it leaves it by accident.

`serve --fake-openai` writes DATA_DIR/try-out.json with its fake OpenAI's URL. Every process of
that data directory reads it at start (batchproxy/settings.py) and sends to that fake, whatever
OPENAI_API_KEY says: `flush_batches` or `poll_batches` in another shell reach the fake, never
api.openai.com. The record stays after the try-out stops, so a later `serve` with a real key
refuses to send the try-out's queued prompts to OpenAI until the operator removes it.

Standard library only: the settings module reads it before Django is set up.
"""

import json
import os
from pathlib import Path

FILE_NAME = "try-out.json"
FAKE_API_KEY = "fake-openai"


def tryout_path(data_dir: Path) -> Path:
    return Path(data_dir) / FILE_NAME


def tryout_read(data_dir: Path) -> dict | None:
    """The try-out record of this data directory: {"openai_base_url": …}, or None."""
    try:
        record = json.loads(tryout_path(data_dir).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        record = {}  # a damaged record still means try-out: never fall back to OpenAI
    return {"openai_base_url": str(record.get("openai_base_url", "http://127.0.0.1:9/v1"))}


def tryout_record(data_dir: Path, *, openai_base_url: str) -> Path:
    """Record (or move) this data directory's try-out to the fake at `openai_base_url`."""
    path = tryout_path(data_dir)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps({"openai_base_url": openai_base_url, "pid": os.getpid()}))
    partial.replace(path)  # readers see the old record or the new one, never half of one
    return path
