"""A fake of OpenAI's Files and Batches API, served over real HTTP.

Tests point the official SDK (or the proxy) at it, and people without an OpenAI account can try
the proxy against it. Standard library only; all state is in memory.

A batch's status is recomputed from the time since its creation whenever it is observed (retrieve,
list, cancel): validating, then in_progress, finalizing and completed, one `step_seconds` each.

Answers echo the request text ("echo: <text>") so a test can tell which answer belongs to which
request. Markers anywhere in a request body ask for per-request outcomes:
    [[status:400]]          the response has that status and an OpenAI error body (error file)
    [[error:server_error]]  no response, only an error with that code (error file)
    [[invalid]]             the whole batch fails validation on that line
    [[image_bytes:N]]       an image answer's picture is padded to N bytes (before base64)
    [[truncate]]            its line of the output (or error) file is cut in half
    [[refuse]]              the create of a batch holding it is refused (HTTP 400)

Image answers draw the prompt: the picture is PNG's signature followed by "echo: <prompt>" (and,
for edits, " on <image urls or file ids>"). A video line is answered with a finished video object;
its content (MP4's signature, then "echo: <prompt>") is served at GET /v1/videos/{id}/content for
a day (`expire_videos()` ends that at once). Input lines are checked as OpenAI checks them: JSON
bodies, one model per batch, image edits in their JSON form only (`images` references), and a
video's `input_reference` a reference, not an upload.

With a `webhook_url` (and `webhook_secret`, `whsec_…`) configured, the fake also watches its
batches from a thread of its own and, when one ends, POSTs OpenAI's `batch.<status>` event to
that URL, signed as OpenAI signs them (Standard Webhooks: `webhook-id`, `webhook-timestamp`,
`webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`).

Synchronous calls (`POST /v1/chat/completions`, `/v1/responses`, ... and Azure's
`/openai/deployments/{name}/...`) are answered at once, the same answers as a batch line's, with
`service_tier` echoed ("flex" or "default"); with `refuse_flex` configured, a flex call is
refused with 429 `resource_unavailable`; with `flex_unsupported`, answered 400 (param
`service_tier`), as a deployment without flex answers. `sync_calls` lists them. To hold
batches unfinished (so that only a synchronous send can answer in time), configure
`stall_after_lines: 0`.

Run `python -m batchproxy.fakes.openai --port 9488 --step-seconds 2` to serve in the foreground.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import hmac
import json
import random
import re
import struct
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.utils import collapse_rfc2231_value
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .http import REFUSAL, REFUSE_MARKER, jsonl, serve_until_signalled

SOCKET_FAULTS = ("timeout", "disconnect", "lost_response")
DEFAULTS = {
    "step_seconds": 0.0,  # seconds spent in each of validating, in_progress and finalizing
    "expire_after_lines": None,  # batches finish only their first N lines, then expire
    "stall_after_lines": None,  # batches finish their first N lines, then stay in_progress
    "token_limit_failures": 0,  # the next K batches fail validation with token_limit_exceeded
    # {model: tokens}: a batch whose input tokens, with those of the model's unfinished batches,
    # exceed the model's limit fails validation with token_limit_exceeded, as OpenAI's do.
    "enqueued_token_limits": {},
    "fail_batches": 0,  # the next K batches fail validation with fail_code / fail_message
    "fail_code": "server_error",
    "fail_message": "The batch could not be processed because of an internal error.",
    "timeout_sleep": 5.0,  # how long a "timeout" fault holds the request
    "retry_after": 1,  # Retry-After seconds sent with an injected 429
    "webhook_url": None,  # where batch.<status> events go when a batch ends (None: nowhere)
    "webhook_secret": None,  # the endpoint's signing secret, "whsec_<base64>"
    # Synchronous calls (POST /v1/chat/completions, ...): refuse `service_tier: "flex"` with
    # 429 resource_unavailable, as OpenAI does when flex capacity is short.
    "refuse_flex": False,
    # Answer `service_tier: "flex"` with 400 unsupported_value (param `service_tier`), as OpenAI
    # does for a model without flex and Azure for a deployment that does not offer it.
    "flex_unsupported": False,
}
WEBHOOK_ATTEMPTS = 5
TERMINAL = ("failed", "completed", "expired", "cancelled")
MAX_LINES = 50_000
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
DAY = 24 * 3600
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
QUEUE_LIMIT_MESSAGE = (
    "Enqueued token limit reached for {model} in organization org-fake. Limit: {limit:,} "
    "enqueued tokens. Please try again once some in_progress batches have been completed."
)
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
FAULT_ERRORS = {
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
}
STATUS_MARK = re.compile(r"\[\[status:(\d{3})\]\]")
ERROR_MARK = re.compile(r"\[\[error:([\w.-]+)\]\]")
INVALID_MARK = "[[invalid]]"


class ApiError(Exception):
    def __init__(self, status, message, *, type="invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.body = status, _error_body(message, type, param, code)


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)


@dataclass
class Request:
    headers: dict
    query: dict
    body: bytes


@dataclass
class Result:
    """The outcome of one input line, decided when the batch passes validation."""

    line: dict
    ok: bool
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class Run:
    """What the fake keeps about a batch beside the Batch object it serves."""

    started: float
    lines: list  # (line number, parsed JSON or None) for each non-blank input line
    settings: dict  # configuration as it was when the batch was created
    forced_error: dict | None = None
    output_expiry: int = 30 * DAY
    results: list | None = None
    cancel_done: int = 0
    notified: bool = False  # its end was sent as a webhook
    tokens: int = 0  # input tokens, as the fake counts them for its queue limit


def new_webhook_secret() -> str:
    """A signing secret in OpenAI's format."""
    return "whsec_" + base64.b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes).decode()


def sign_webhook(body: bytes, secret: str, *, webhook_id: str, timestamp: int | None = None):
    """The Standard Webhooks headers OpenAI sends with `body`, signed with `secret`."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret
    key = key.encode() if isinstance(key, str) else key
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    signature = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": f"v1,{signature}",
    }


def _error_body(message, type="invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _json_reply(obj, status=200, headers=None) -> Reply:
    return Reply(status, json.dumps(obj).encode(), headers=headers or {})


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _tokens(text: str) -> int:
    # About four characters per token, like OpenAI's rule of thumb.
    return max(1, (len(text) + 3) // 4)


def _body_tokens(value) -> int:
    """The input tokens of a line's body, for the queue limit: every string but the model."""
    if isinstance(value, str):
        return _tokens(value)
    if isinstance(value, dict):
        return sum(_body_tokens(v) for k, v in value.items() if k != "model")
    if isinstance(value, list):
        return sum(_body_tokens(v) for v in value)
    return 0


def _content_text(content) -> str:
    """The text of a message content: a string, or the concatenated text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "".join(p for p in parts if isinstance(p, str))
    return ""


def _inputs(value) -> list:
    """Normalise an `input`/`prompt` that may be one item or a list of items."""
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return value
    return [] if value in (None, []) else [value]


def _as_text(item) -> str:
    return item if isinstance(item, str) else json.dumps(item)


def _item_tokens(item) -> int:
    is_token_array = isinstance(item, list) and all(isinstance(v, int) for v in item)
    return len(item) if is_token_array else _tokens(_as_text(item))


def _embedding(item) -> list[float]:
    digest = hashlib.sha256(json.dumps(item).encode()).digest()
    # Multiples of 1/128 are exact in float32, so float and base64 answers decode identically.
    return [(b - 128) / 128 for b in digest[:8]]


def _chat_answer(body):
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    text = "echo: " + (_content_text(messages[-1].get("content")) if messages else "")
    prompt = sum(_tokens(_content_text(m.get("content"))) for m in messages) or 1
    done = _tokens(text)
    message = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": done,
        "total_tokens": prompt + done,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    answer = {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }
    return answer, prompt, done


def _response_answer(body):
    given = body.get("input")
    if isinstance(given, list):
        messages = [i for i in given if isinstance(i, dict) and "content" in i]
        text_in = _content_text(messages[-1]["content"]) if messages else ""
        prompt = sum(_tokens(_content_text(m["content"])) for m in messages) or 1
    else:
        text_in = given if isinstance(given, str) else ""
        prompt = _tokens(text_in)
    text = "echo: " + text_in
    done = _tokens(text)
    now = int(time.time())
    content = [{"type": "output_text", "text": text, "annotations": []}]
    message = {
        "type": "message",
        "id": _new_id("msg_"),
        "status": "completed",
        "role": "assistant",
        "content": content,
    }
    answer = {
        "id": _new_id("resp_"),
        "object": "response",
        "created_at": now,
        "status": "completed",
        "completed_at": now,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body["model"],
        "output": [message],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": False,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": done,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + done,
        },
        "user": None,
        "metadata": body.get("metadata") or {},
    }
    return answer, prompt, done


def _completion_answer(body):
    prompts = _inputs(body.get("prompt", "")) or [""]
    texts = ["echo: " + _as_text(p) for p in prompts]
    prompt = sum(_item_tokens(p) for p in prompts)
    done = sum(_tokens(t) for t in texts)
    choices = [
        {"text": t, "index": i, "logprobs": None, "finish_reason": "stop"}
        for i, t in enumerate(texts)
    ]
    answer = {
        "id": _new_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": body["model"],
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": done,
            "total_tokens": prompt + done,
        },
        "system_fingerprint": "fp_fake",
    }
    return answer, prompt, done


def _embeddings_answer(body):
    items = _inputs(body.get("input"))
    data = []
    for index, item in enumerate(items):
        vector = _embedding(item)
        if body.get("encoding_format") == "base64":
            # What the SDK decodes: little-endian float32 values, base64 encoded.
            vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    prompt = sum(_item_tokens(item) for item in items)
    usage = {"prompt_tokens": prompt, "total_tokens": prompt}
    return {"object": "list", "data": data, "model": body["model"], "usage": usage}, prompt, 0


def _moderations_answer(body):
    given = body.get("input")
    # A list of content parts (multimodal input) is one input, a list of strings is many.
    is_parts = isinstance(given, list) and any(isinstance(i, dict) for i in given)
    items = [_content_text(given)] if is_parts else _inputs(given)
    result = {
        "flagged": False,
        "categories": dict.fromkeys(MODERATION_CATEGORIES, False),
        "category_scores": dict.fromkeys(MODERATION_CATEGORIES, 0.0001),
        "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
    }
    answer = {
        "id": _new_id("modr-"),
        "model": body["model"],
        "results": [copy.deepcopy(result) for _ in items],
    }
    return answer, 0, 0  # moderations are free: no usage


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMAGE_BYTES_MARK = re.compile(r"\[\[image_bytes:(\d+)\]\]")


def _image_bytes(text: str) -> bytes:
    """A stand-in image: PNG's signature, then the text, padded to [[image_bytes:N]] bytes."""
    content = PNG_MAGIC + text.encode()
    if match := IMAGE_BYTES_MARK.search(text):
        content = content.ljust(int(match[1]), b"\0")
    return content


def _image_answer(body, text: str, *, input_images: int = 0):
    """An ImagesResponse: GPT image models answer b64_json with token usage; DALL-E answers a
    URL by default (or b64_json when asked) and has no usage, being priced per image."""
    model = body["model"]
    count = body.get("n") if isinstance(body.get("n"), int) and body["n"] > 0 else 1
    gpt_image = model.startswith(("gpt-image", "chatgpt-image"))
    as_b64 = gpt_image or body.get("response_format") == "b64_json"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    data = []
    for index in range(count):
        item = {}
        if as_b64:
            item["b64_json"] = base64.b64encode(_image_bytes(text)).decode()
        else:
            item["url"] = f"https://images.fake-openai.invalid/{digest}-{index}.png"
        if model == "dall-e-3":
            item["revised_prompt"] = text
        data.append(item)
    answer = {"created": int(time.time()), "data": data}
    if not gpt_image:
        return answer, 0, 0
    prompt = _tokens(body.get("prompt") or "")
    image_in = 323 * input_images  # roughly what one input image costs in tokens
    done = 1056 * count  # a 1024x1024 image at medium quality
    answer |= {
        "background": "opaque",
        "output_format": body.get("output_format", "png"),
        "quality": body.get("quality", "medium"),
        "size": body.get("size", "1024x1024"),
        "usage": {
            "input_tokens": prompt + image_in,
            "input_tokens_details": {"text_tokens": prompt, "image_tokens": image_in},
            "output_tokens": done,
            "total_tokens": prompt + image_in + done,
        },
    }
    return answer, prompt + image_in, done


def _generation_answer(body):
    return _image_answer(body, "echo: " + str(body.get("prompt")))


def _edit_answer(body):
    refs = [ref.get("image_url") or ref.get("file_id") for ref in body["images"]]
    text = "echo: " + str(body.get("prompt")) + " on " + ", ".join(map(str, refs))
    return _image_answer(body, text, input_images=len(refs))


MP4_MAGIC = b"\x00\x00\x00\x18ftypmp42"


def _video_answer(body):
    """A video job, finished by the time the batch is: its content (MP4's signature, then
    "echo: <prompt>") is downloadable for a day (GET /v1/videos/{id}/content)."""
    now = int(time.time())
    answer = {
        "id": _new_id("video_"),
        "object": "video",
        "model": body["model"],
        "status": "completed",
        "progress": 100,
        "created_at": now,
        "completed_at": now,
        "expires_at": now + DAY,
        "prompt": body.get("prompt"),
        "size": body.get("size", "720x1280"),
        "seconds": str(body.get("seconds", "4")),
        "remixed_from_video_id": None,
        "error": None,
    }
    return answer, 0, 0  # priced per second of video, not per token


ANSWERS = {
    "/v1/chat/completions": _chat_answer,
    "/v1/responses": _response_answer,
    "/v1/completions": _completion_answer,
    "/v1/embeddings": _embeddings_answer,
    "/v1/moderations": _moderations_answer,
    "/v1/images/generations": _generation_answer,
    "/v1/images/edits": _edit_answer,
    "/v1/videos": _video_answer,
}
ENDPOINTS = tuple(ANSWERS)


def _execute(endpoint: str, line: dict) -> Result:
    """Answer one input line, honouring the [[status:N]] and [[error:CODE]] markers."""
    body = line["body"]
    raw = json.dumps(body)
    out = {"id": _new_id("batch_req_"), "custom_id": line["custom_id"], "response": None}
    if match := ERROR_MARK.search(raw):
        message = f"The request failed with {match[1]}."
        return Result(out | {"error": {"code": match[1], "message": message}}, ok=False)
    status = int(match[1]) if (match := STATUS_MARK.search(raw)) else 200
    if status != 200:
        kind = "server_error" if status >= 500 else "invalid_request_error"
        message = f"The request failed with status {status}."
        answer, used_in, used_out = _error_body(message, kind), 0, 0
    else:
        answer, used_in, used_out = ANSWERS[endpoint](body)
    response = {"status_code": status, "request_id": _new_id("req_"), "body": answer}
    return Result(out | {"response": response, "error": None}, status == 200, used_in, used_out)


def _parse_lines(content: bytes) -> list:
    parsed = []
    for number, raw in enumerate(content.split(b"\n"), start=1):
        if raw.strip():
            try:
                parsed.append((number, json.loads(raw)))
            except ValueError:
                parsed.append((number, None))
    return parsed


def _line_problem(endpoint: str, value) -> tuple | None:
    """(code, message, param) when a line is not a well-formed batch request."""
    if not isinstance(value, dict):
        return ("invalid_json_line", "This line is not parseable as valid JSON.", None)
    for name in ("custom_id", "method", "url", "body"):
        if name not in value:
            message = f"Missing required parameter: '{name}'."
            return ("missing_required_parameter", message, name)
    if not isinstance(value["custom_id"], str):
        return ("invalid_request", "The custom_id must be a string.", "custom_id")
    if value["method"] != "POST":
        return ("invalid_request", "The method must be POST.", "method")
    if value["url"] != endpoint:
        message = f"The url '{value['url']}' does not match the batch's endpoint '{endpoint}'."
        return ("invalid_request", message, "url")
    if not isinstance(value["body"], dict):
        return ("invalid_request", "The body must be a JSON object.", "body")
    if not isinstance(value["body"].get("model"), str):
        return ("missing_required_parameter", "Missing required parameter: 'model'.", "body.model")
    if problem := _image_line_problem(endpoint, value["body"]):
        return problem
    if INVALID_MARK in json.dumps(value["body"]):
        return ("invalid_request", "This request is marked [[invalid]].", None)
    return None


def _image_line_problem(endpoint: str, body: dict) -> tuple | None:
    """Image and video lines: a prompt, and for edits the JSON form (`images` by URL or file
    id); a video's `input_reference` likewise a reference, not an upload."""
    if endpoint not in ("/v1/images/generations", "/v1/images/edits", "/v1/videos"):
        return None
    if not isinstance(body.get("prompt"), str):
        return (
            "missing_required_parameter",
            "Missing required parameter: 'prompt'.",
            "body.prompt",
        )
    if endpoint == "/v1/videos":
        reference = body.get("input_reference")
        if reference is not None and not isinstance(reference, dict):
            message = "Batch videos take 'input_reference' as an image_url or file_id reference."
            return ("invalid_request", message, "body.input_reference")
        return None
    if endpoint == "/v1/images/generations":
        return None
    if "image" in body or ("mask" in body and not isinstance(body["mask"], dict)):
        message = (
            "Batch image edits take the JSON form: 'images' as image_url or file_id references."
        )
        return ("invalid_request", message, "body.image")
    images = body.get("images")
    if not (
        isinstance(images, list)
        and 1 <= len(images) <= 16
        and all(isinstance(i, dict) and ("image_url" in i or "file_id" in i) for i in images)
    ):
        message = "'images' must hold 1 to 16 references, each {image_url} or {file_id}."
        return ("invalid_request", message, "body.images")
    if body["model"].startswith("dall-e"):
        message = "JSON image edits support GPT image models only."
        return ("invalid_request", message, "body.model")
    return None


def _validate(endpoint: str, lines: list) -> list[dict]:
    """The errors the Batch API would report for an input file (at most 100)."""

    def error(code, message, param=None, line=None):
        return {"code": code, "message": message, "param": param, "line": line}

    if not lines:
        return [error("empty_file", "The input file is empty.")]
    if len(lines) > MAX_LINES:
        message = f"The input file has {len(lines)} requests; a batch holds at most {MAX_LINES}."
        return [error("invalid_request", message)]
    errors, seen, model = [], set(), None
    for number, value in lines:
        problem = _line_problem(endpoint, value)
        if problem is None and value["custom_id"] in seen:
            problem = ("duplicate_custom_id", "Another line has this custom_id.", "custom_id")
        elif problem is None and model not in (None, value["body"]["model"]):
            message = f"All requests of a batch must use one model; this one is not {model}."
            problem = ("mismatched_model", message, "body.model")
        if problem:
            errors.append(error(*problem, line=number))
            if len(errors) == 100:
                break
        else:
            seen.add(value["custom_id"])
            model = model or value["body"]["model"]
    if not errors and endpoint == "/v1/embeddings":
        total = sum(len(_inputs(value["body"].get("input"))) for _, value in lines)
        if total > MAX_LINES:
            message = f"The batch has {total} embedding inputs; at most {MAX_LINES} are allowed."
            errors.append(error("invalid_request", message))
    return errors


def _shuffled(lines: list, rng: random.Random) -> list:
    order = lines[:]
    rng.shuffle(order)
    # Real output order never follows the input; make sure no caller can come to rely on it.
    if len(order) > 1 and order == lines:
        order = order[1:] + order[:1]
    return order


def _page(items: list, after: str | None, limit: int) -> dict:
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(items) > limit,
    }


def _limit(query: dict, default: int, maximum: int) -> int:
    try:
        limit = int(query.get("limit", default))
    except ValueError:
        limit = 0
    if not 1 <= limit <= maximum:
        raise ApiError(400, f"limit must be between 1 and {maximum}.", param="limit")
    return limit


def _expiry(policy, param: str = "expires_after") -> int:
    """Seconds until a file expires: its `expires_after` policy, else 30 days."""
    if policy is None:
        return 30 * DAY
    seconds = policy.get("seconds") if isinstance(policy, dict) else None
    if isinstance(seconds, str) and seconds.isdigit():
        seconds = int(seconds)
    if policy.get("anchor") != "created_at" or not (
        isinstance(seconds, int) and 3600 <= seconds <= 30 * DAY
    ):
        message = f"{param} takes anchor 'created_at' and seconds between 3600 and 2592000."
        raise ApiError(400, message, param=param, code="invalid_value")
    return seconds


def _json_object(body: bytes) -> dict:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return value


def _parse_multipart(content_type: str, body: bytes) -> dict:
    """{field name: (filename or None, bytes)} from a multipart/form-data body."""
    parser = BytesHeaderParser()
    envelope = parser.parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode())
    boundary = envelope.get_param("boundary")
    if envelope.get_content_type() != "multipart/form-data" or not boundary:
        raise ApiError(400, "The request must be multipart/form-data.")
    fields = {}
    # One split over the whole body stays fast for files of hundreds of MB.
    for part in (b"\r\n" + body).split(b"\r\n--" + str(boundary).encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, value = part.partition(b"\r\n\r\n")
        headers = parser.parsebytes(head.strip() + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        if name:
            fields[collapse_rfc2231_value(name)] = (headers.get_filename(), value)
    return fields


class FakeOpenAI:
    """OpenAI's Files + Batches API in memory, served over HTTP from a daemon thread.

    An OpenAI-compatible provider with its own quirks (fakes/groq.py) is a subclass that
    changes where the API is served, which windows and sizes it takes, and whether it takes
    OpenAI's file expiry parameters.
    """

    prefix = "/v1"  # where the API is served
    max_upload_bytes = MAX_UPLOAD_BYTES
    takes_expiry = True  # `expires_after` on uploads, `output_expires_after` on batches

    def window_seconds(self, window) -> int | None:
        """The seconds of a `completion_window` this API takes, or None."""
        return DAY if window == "24h" else None

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, step_seconds: float = 0.0):
        self._address = (host, port)
        self._step_seconds = step_seconds
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None
        self._generation = 0
        self.reset()

    # -- life cycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{self.prefix}"

    @property
    def azure_endpoint(self) -> str:
        """The same API as Azure OpenAI serves it (`/openai/...`, `api-key`, `api-version`)."""
        return self.url.removesuffix(self.prefix)

    def start(self) -> FakeOpenAI:
        self._stopping.clear()
        self._server = ThreadingHTTPServer(self._address, _Handler)
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()
        return self

    def stop(self) -> None:
        # Wakes requests held by a "timeout" fault so they do not outlive the server.
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None

    def reset(self) -> None:
        with self._lock:
            self._files: dict[str, dict] = {}
            self._batches: dict[str, dict] = {}
            self._runs: dict[str, Run] = {}
            self._submitted: list[dict] = []
            self._videos: dict[str, dict] = {}  # video id: its content and when it expires
            self._calls: list[tuple[str, str]] = []
            self._keys: list[str] = []
            self._faults: list[list] = []
            self._webhooks: list[dict] = []  # every delivery attempt: event, status
            self._pending_events: list[dict] = []
            self._sync_calls: list[dict] = []
            self._config = DEFAULTS | {"step_seconds": self._step_seconds}
            # Requests still held by a "timeout" fault see the change and give up.
            self._generation += 1

    def configure(self, **options) -> None:
        """Change options (see DEFAULTS); batches take them as they are when created."""
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
        url = options.get("webhook_url")
        if url and not url.startswith(("http://", "https://")):
            raise ValueError("webhook_url must be an http(s) URL")
        with self._lock:
            self._config.update(options)

    def inject(self, operation: str, fault: str | int, times: int = 1) -> None:
        """Make the next `times` calls of `operation` (or "*": any) fail.

        `fault` is an HTTP status (answered with an OpenAI error body; 429 adds Retry-After),
        "timeout" (hold the request `timeout_sleep` seconds, then do it), "disconnect" (close
        without doing anything) or "lost_response" (do the work, then close without answering).
        """
        if operation != "*" and operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; one of {OPERATIONS} or '*'")
        if isinstance(fault, str) and fault.isdigit():
            fault = int(fault)
        if not (isinstance(fault, int) and 400 <= fault <= 599) and fault not in SOCKET_FAULTS:
            raise ValueError(f"unknown fault {fault!r}; an HTTP status or one of {SOCKET_FAULTS}")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.append([operation, fault, times])

    # -- read-only views for tests ---------------------------------------------------------------

    @property
    def batches(self) -> dict[str, dict]:
        """Batch objects as last served (looking at them here does not advance them)."""
        with self._lock:
            return copy.deepcopy(self._batches)

    @property
    def files(self) -> dict[str, dict]:
        with self._lock:
            return {
                k: {"object": dict(v["object"]), "content": v["content"]}
                for k, v in self._files.items()
            }

    @property
    def webhooks(self) -> list[dict]:
        """Every webhook delivery tried: {"event", "status" (HTTP status or None), "at"}."""
        with self._lock:
            return copy.deepcopy(self._webhooks)

    @property
    def sync_calls(self) -> list[dict]:
        """Every synchronous call: {"endpoint", "model", "service_tier", "refused", "body"}."""
        with self._lock:
            return copy.deepcopy(self._sync_calls)

    def submitted_lines(self) -> list[dict]:
        with self._lock:
            return copy.deepcopy(self._submitted)

    @property
    def calls(self) -> list[tuple[str, str]]:
        """(operation, path without query) of every /v1 request, in order."""
        with self._lock:
            return list(self._calls)

    @property
    def keys(self) -> list[str]:
        """The API key of every /v1 (or Azure /openai) request, in order."""
        with self._lock:
            return list(self._keys)

    def state(self) -> dict:
        """Everything but file contents, as JSON-ready data (served at GET /_fake/state)."""
        with self._lock:
            return copy.deepcopy(
                {
                    "batches": self._batches,
                    "files": {k: v["object"] for k, v in self._files.items()},
                    "submitted_lines": self._submitted,
                    "calls": [list(call) for call in self._calls],
                }
            )

    # -- webhooks --------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Advance every batch on time and deliver the events of those that ended."""
        while not self._stopping.wait(0.1):
            with self._lock:
                url, secret = self._config["webhook_url"], self._config["webhook_secret"]
                if url:
                    for batch_id, batch in self._batches.items():
                        self._advance(batch_id)
                        run = self._runs[batch_id]
                        if batch["status"] in TERMINAL and not run.notified:
                            run.notified = True
                            self._pending_events.append(self._event(batch))
                events, self._pending_events = self._pending_events, []
            for event in events:
                if not self._deliver(url, secret, event):
                    with self._lock:
                        self._pending_events.append(event)

    @staticmethod
    def _event(batch: dict) -> dict:
        return {
            "id": _new_id("evt_"),
            "object": "event",
            "type": f"batch.{batch['status']}",
            "created_at": int(time.time()),
            "data": {"id": batch["id"]},
            "attempts": 0,
        }

    def _deliver(self, url: str, secret: str | None, event: dict) -> bool:
        """POST one event; False when it should be tried again (up to WEBHOOK_ATTEMPTS)."""
        event["attempts"] += 1
        body = json.dumps({k: v for k, v in event.items() if k != "attempts"}).encode()
        headers = sign_webhook(body, secret or "", webhook_id=event["id"])
        headers["Content-Type"] = "application/json"
        # `configure` allows http(s) URLs only: the test's or the try-out's own proxy.
        request = urllib.request.Request(url, body, headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            status = None
        with self._lock:
            self._webhooks.append({"event": event["type"], "id": event["id"], "status": status})
        # Like OpenAI: any 2xx is delivered; anything else is retried, a few times here.
        return (status is not None and 200 <= status < 300) or event["attempts"] >= WEBHOOK_ATTEMPTS

    # -- request plumbing (called by _Handler) ---------------------------------------------------

    def _record(self, operation: str, path: str, key: str) -> int:
        with self._lock:
            self._calls.append((operation, path))
            self._keys.append(key)
            return self._generation

    def _take_fault(self, operation: str):
        with self._lock:
            for entry in self._faults:
                if entry[0] in ("*", operation):
                    entry[2] -= 1
                    if entry[2] == 0:
                        self._faults.remove(entry)
                    return entry[1]
        return None

    def _fault_reply(self, status: int) -> Reply:
        kind = "server_error" if status >= 500 else "invalid_request_error"
        message, kind, code = FAULT_ERRORS.get(status, (f"Injected HTTP {status}.", kind, None))
        headers = {"Retry-After": str(self._config["retry_after"])} if status == 429 else {}
        return _json_reply(_error_body(message, kind, None, code), status, headers)

    def _hold(self, generation: int) -> bool:
        """Sleep like a stuck upstream; False when reset or stopped meanwhile."""
        self._stopping.wait(self._config["timeout_sleep"])
        return generation == self._generation and not self._stopping.is_set()

    def _dispatch(self, handler: str, args: tuple, request: Request) -> Reply:
        with self._lock:
            try:
                return getattr(self, handler)(request, *args)
            except ApiError as exc:
                return _json_reply(exc.body, exc.status)

    def _control(self, method: str, path: str, body: bytes) -> Reply:
        try:
            if (method, path) == ("POST", "/_fake/reset"):
                self.reset()
            elif (method, path) == ("POST", "/_fake/configure"):
                self.configure(**_json_object(body))
            elif (method, path) == ("POST", "/_fake/inject"):
                options = _json_object(body)
                self.inject(options["operation"], options["fault"], int(options.get("times", 1)))
            elif (method, path) == ("GET", "/_fake/state"):
                return _json_reply(self.state())
            else:
                return _json_reply(_error_body(f"Unknown control endpoint {path}."), 404)
        except (ApiError, ValueError, TypeError, KeyError) as exc:
            return _json_reply(_error_body(f"Bad control request: {exc}"), 400)
        return _json_reply({"ok": True})

    # -- files -----------------------------------------------------------------------------------

    def _store_file(
        self, content: bytes, filename: str, purpose: str, expires_after: int = 30 * DAY
    ) -> dict:
        now = int(time.time())
        obj = {
            "id": _new_id("file-"),
            "object": "file",
            "bytes": len(content),
            "created_at": now,
            "expires_at": now + expires_after,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        self._files[obj["id"]] = {"object": obj, "content": content}
        return obj

    def _file(self, file_id: str, param: str = "id") -> dict:
        if file_id not in self._files:
            raise ApiError(404, f"No such File object: {file_id}", param=param)
        return self._files[file_id]

    def _upload(self, request: Request) -> Reply:
        fields = _parse_multipart(request.headers.get("Content-Type", ""), request.body)
        purpose = fields.get("purpose", (None, b""))[1].decode(errors="replace")
        if "file" not in fields:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        if purpose not in ("batch", "batch_output"):
            raise ApiError(400, f"Invalid value for purpose: '{purpose}'.", param="purpose")
        filename, content = fields["file"]
        filename = filename or "upload"
        if purpose == "batch" and not filename.endswith(".jsonl"):
            raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
        if len(content) > self.max_upload_bytes:
            limit = self.max_upload_bytes // (1024 * 1024)
            raise ApiError(400, f"Batch input files are limited to {limit} MB.", param="file")
        anchor = fields.get("expires_after[anchor]", (None, b""))[1].decode(errors="replace")
        seconds = fields.get("expires_after[seconds]", (None, b""))[1].decode(errors="replace")
        if (anchor or seconds) and not self.takes_expiry:
            raise ApiError(400, "Unknown parameter: 'expires_after'.", param="expires_after")
        expires = _expiry({"anchor": anchor, "seconds": seconds} if anchor or seconds else None)
        return _json_reply(self._store_file(content, filename, purpose, expires))

    def _list_files(self, request: Request) -> Reply:
        purpose = request.query.get("purpose")
        items = [f["object"] for f in self._files.values()]
        items = [item for item in items if not purpose or item["purpose"] == purpose]
        if request.query.get("order", "desc") == "desc":
            items.reverse()
        limit = _limit(request.query, 10_000, 10_000)
        return _json_reply(_page(items, request.query.get("after"), limit))

    def _retrieve_file(self, request: Request, file_id: str) -> Reply:
        return _json_reply(self._file(file_id)["object"])

    def _content(self, request: Request, file_id: str) -> Reply:
        return Reply(200, self._file(file_id)["content"], "application/octet-stream")

    def _delete(self, request: Request, file_id: str) -> Reply:
        self._file(file_id)
        del self._files[file_id]
        return _json_reply({"id": file_id, "object": "file", "deleted": True})

    # -- videos ----------------------------------------------------------------------------------

    def _keep_videos(self, results: list) -> None:
        for result in results:
            if result.ok:
                video = result.line["response"]["body"]
                content = MP4_MAGIC + f"echo: {video['prompt']}".encode()
                self._videos[video["id"]] = {"content": content, "expires_at": video["expires_at"]}

    def expire_videos(self) -> None:
        """Let a day pass for every video: their content is gone, as upstream after a day."""
        with self._lock:
            for video in self._videos.values():
                video["expires_at"] = int(time.time()) - 1

    def _video_content(self, request: Request, video_id: str) -> Reply:
        video = self._videos.get(video_id)
        if video is None or video["expires_at"] < time.time():
            raise ApiError(404, f"Video '{video_id}' not found or its content expired.")
        variant = request.query.get("variant", "video")
        if variant != "video":
            raise ApiError(404, f"Video '{video_id}' has no {variant}.", param="variant")
        return Reply(200, video["content"], "video/mp4")

    # -- batches ---------------------------------------------------------------------------------

    def _batch(self, batch_id: str) -> dict:
        if batch_id not in self._batches:
            raise ApiError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
        self._advance(batch_id)
        return self._batches[batch_id]

    def _create(self, request: Request) -> Reply:
        params = _json_object(request.body)
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not params.get(name):
                message = f"Missing required parameter: '{name}'."
                raise ApiError(400, message, param=name, code="missing_required_parameter")
        endpoint = params["endpoint"]
        if endpoint not in ENDPOINTS:
            message = f"Invalid endpoint '{endpoint}'; supported: {', '.join(ENDPOINTS)}."
            raise ApiError(400, message, param="endpoint", code="invalid_value")
        window = self.window_seconds(params["completion_window"])
        if window is None:
            message = f"Invalid completion_window '{params['completion_window']}'."
            raise ApiError(400, message, param="completion_window", code="invalid_value")
        if "output_expires_after" in params and not self.takes_expiry:
            message = "Unknown parameter: 'output_expires_after'."
            raise ApiError(400, message, param="output_expires_after")
        metadata = params.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict)
            and len(metadata) <= 16
            and all(isinstance(k, str) and len(k) <= 64 for k in metadata)
            and all(isinstance(v, str) and len(v) <= 512 for v in metadata.values())
        ):
            message = "metadata holds at most 16 string pairs, keys ≤ 64 and values ≤ 512 chars."
            raise ApiError(400, message, param="metadata", code="invalid_value")
        output_expiry = _expiry(params.get("output_expires_after"), "output_expires_after")
        stored = self._file(params["input_file_id"], "input_file_id")
        if stored["object"]["purpose"] != "batch":
            raise ApiError(400, "The input file must have purpose 'batch'.", param="input_file_id")

        if REFUSE_MARKER.encode() in stored["content"]:
            raise ApiError(400, REFUSAL, param="input_file_id", code="invalid_request")
        now = time.time()
        lines = _parse_lines(stored["content"])
        bodies = [v.get("body") for _, v in lines if isinstance(v, dict)]
        models = [
            b["model"] for b in bodies if isinstance(b, dict) and isinstance(b.get("model"), str)
        ]
        batch = {
            "id": _new_id("batch_"),
            "object": "batch",
            "endpoint": endpoint,
            "model": models[0] if models else None,
            "errors": None,
            "input_file_id": params["input_file_id"],
            "completion_window": params["completion_window"],
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(now),
            "in_progress_at": None,
            "expires_at": int(now) + window,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "usage": self._usage([]),
            "metadata": metadata,
        }
        run = Run(started=now, lines=lines, settings=dict(self._config))
        run.output_expiry = output_expiry
        run.tokens = sum(_body_tokens(body) for body in bodies)
        run.forced_error = self._take_batch_failure(batch["model"]) or self._over_queue_limit(
            batch["model"], run.tokens
        )
        self._batches[batch["id"]] = batch
        self._runs[batch["id"]] = run
        for _, value in lines:
            if isinstance(value, dict):
                self._submitted.append(copy.deepcopy(value) | {"batch_id": batch["id"]})
        return _json_reply(batch)

    def _take_batch_failure(self, model: str | None) -> dict | None:
        config = self._config
        if config["token_limit_failures"] > 0:
            config["token_limit_failures"] -= 1
            message = QUEUE_LIMIT_MESSAGE.format(model=model, limit=90_000)
            return {"code": "token_limit_exceeded", "message": message, "param": None, "line": None}
        if config["fail_batches"] > 0:
            config["fail_batches"] -= 1
            code, message = config["fail_code"], config["fail_message"]
            return {"code": code, "message": message, "param": None, "line": None}
        return None

    def _over_queue_limit(self, model: str | None, tokens: int) -> dict | None:
        limit = self._config["enqueued_token_limits"].get(model)
        if limit is None:
            return None
        queued = 0
        for batch_id, batch in self._batches.items():
            if batch["model"] == model:
                self._advance(batch_id)
                if batch["status"] in ("validating", "in_progress", "finalizing"):
                    queued += self._runs[batch_id].tokens
        if queued + tokens <= limit:
            return None
        message = QUEUE_LIMIT_MESSAGE.format(model=model, limit=limit)
        return {"code": "token_limit_exceeded", "message": message, "param": None, "line": None}

    def _retrieve(self, request: Request, batch_id: str) -> Reply:
        return _json_reply(self._batch(batch_id))

    def _list(self, request: Request) -> Reply:
        limit = _limit(request.query, 20, 100)
        page = _page(list(reversed(self._batches.values())), request.query.get("after"), limit)
        for batch in page["data"]:
            self._advance(batch["id"])
        return _json_reply(page)

    def _cancel(self, request: Request, batch_id: str) -> Reply:
        batch = self._batch(batch_id)
        if batch["status"] in ("completed", "failed", "expired"):
            message = f"Cannot cancel a batch with status '{batch['status']}'."
            raise ApiError(400, message, param="batch_id")
        if batch["status"] not in ("cancelling", "cancelled"):
            run = self._runs[batch_id]
            run.cancel_done = self._progress(run, time.time() - run.started)
            batch.update(status="cancelling", cancelling_at=int(time.time()))
        return _json_reply(batch)

    # -- webhook endpoints -----------------------------------------------------------------------

    def _sync(self, request: Request, endpoint: str) -> Reply:
        """A synchronous call, answered now as its batch line would be."""
        body = _json_object(request.body)
        tier = body.get("service_tier") or "default"
        refused = tier == "flex" and self._config["refuse_flex"]
        self._sync_calls.append(
            {
                "endpoint": f"/v1/{endpoint}",
                "model": body.get("model"),
                "service_tier": tier,
                "refused": refused,
                "body": body,
            }
        )
        if refused:
            message = "Flex capacity is temporarily unavailable. Please retry later."
            error = _error_body(message, "rate_limit_error", None, "resource_unavailable")
            return _json_reply(error, 429)
        if tier == "flex" and self._config["flex_unsupported"]:
            model = body.get("model")
            message = f"Unsupported value: 'service_tier' does not support 'flex' with {model}."
            error = _error_body(
                message, "invalid_request_error", "service_tier", "unsupported_value"
            )
            return _json_reply(error, 400)
        result = _execute(f"/v1/{endpoint}", {"custom_id": "sync", "body": body})
        response = result.line["response"]
        if response is None:
            return _json_reply(_error_body(result.line["error"]["message"], "server_error"), 500)
        answer = response["body"]
        if response["status_code"] == 200 and isinstance(answer, dict):
            answer["service_tier"] = "flex" if tier == "flex" else "default"
        return _json_reply(answer, response["status_code"])

    def _create_webhook(self, request: Request) -> Reply:
        """Register an endpoint: from now on, batch events are signed and sent to it."""
        params = _json_object(request.body)
        for name in ("url", "name", "event_types"):
            if not params.get(name):
                message = f"Missing required parameter: '{name}'."
                raise ApiError(400, message, param=name, code="missing_required_parameter")
        if not str(params["url"]).startswith(("http://", "https://")):
            raise ApiError(400, "The url must be an http(s) URL.", param="url")
        secret = new_webhook_secret()
        self._config.update(webhook_url=params["url"], webhook_secret=secret)
        now = int(time.time())
        return _json_reply(
            {
                "id": _new_id("we_"),
                "object": "webhook_endpoint",
                "created_at": now,
                "updated_at": now,
                "name": params["name"],
                "url": params["url"],
                "event_types": params["event_types"],
                "signing_secret": secret,
                "signing_secret_hint": secret[:10] + "…",
            }
        )

    # -- batch life, decided lazily on observation -----------------------------------------------

    def _progress(self, run: Run, elapsed: float) -> int:
        """How many lines (in input order) are done after `elapsed` seconds."""
        if run.results is None:
            return 0
        total, step = len(run.results), run.settings["step_seconds"]
        done = total if elapsed >= 2 * step else int(total * (elapsed - step) / step)
        for cap in (run.settings["expire_after_lines"], run.settings["stall_after_lines"]):
            if cap is not None:
                done = min(done, cap)
        return max(done, 0)

    def _advance(self, batch_id: str) -> None:
        batch, run = self._batches[batch_id], self._runs[batch_id]
        if batch["status"] == "cancelling":
            self._finish(batch, run, run.cancel_done, "cancelled", int(time.time()))
        if batch["status"] in ("failed", "completed", "expired", "cancelled"):
            return
        elapsed, step = time.time() - run.started, run.settings["step_seconds"]

        def at(steps: int) -> int:
            return int(run.started + steps * step)

        if batch["status"] == "validating":
            if elapsed < step:
                return
            errors = (
                [run.forced_error] if run.forced_error else _validate(batch["endpoint"], run.lines)
            )
            if errors:
                errors_list = {"object": "list", "data": errors}
                batch.update(status="failed", failed_at=at(1), errors=errors_list)
                return
            endpoint = batch["endpoint"]
            run.results = [_execute(endpoint, value) for _, value in run.lines]
            if endpoint == "/v1/videos":
                self._keep_videos(run.results)
            batch.update(status="in_progress", in_progress_at=at(1))

        total, done = len(run.results), self._progress(run, elapsed)
        expire_cap, stall_cap = (
            run.settings["expire_after_lines"],
            run.settings["stall_after_lines"],
        )
        if stall_cap is not None and stall_cap < total:
            pass  # stays in_progress until cancelled
        elif expire_cap is not None and expire_cap < total:
            if elapsed >= 3 * step:
                self._finish(batch, run, done, "expired", at(3))
                return
        elif elapsed >= 3 * step:
            batch.update(finalizing_at=batch["finalizing_at"] or at(2))
            self._finish(batch, run, total, "completed", at(3))
            return
        elif elapsed >= 2 * step and batch["status"] == "in_progress":
            batch.update(status="finalizing", finalizing_at=at(2))
        self._count(batch, run.results[:done], [])

    def _count(self, batch: dict, finished: list, unfinished_errors: list) -> None:
        ok = sum(result.ok for result in finished)
        failed = len(finished) - ok + len(unfinished_errors)
        total = len(self._runs[batch["id"]].results or [])
        batch["request_counts"] = {"total": total, "completed": ok, "failed": failed}

    def _finish(self, batch: dict, run: Run, done: int, status: str, when: int) -> None:
        """Write the output and error files and end the batch with `status`."""
        finished = (run.results or [])[:done]
        good = [r.line for r in finished if r.ok]
        bad = [r.line for r in finished if not r.ok]
        expired = []
        if status == "expired":
            for result in run.results[done:]:
                error = {"code": "batch_expired", "message": EXPIRED_MESSAGE}
                line = {"id": _new_id("batch_req_"), "custom_id": result.line["custom_id"]}
                expired.append(line | {"response": None, "error": error})
        rng = random.Random(batch["id"])
        for key, kind, lines in (
            ("output_file_id", "output", good),
            ("error_file_id", "error", bad + expired),
        ):
            if lines:
                content = jsonl(_shuffled(lines, rng))
                name = f"{batch['id']}_{kind}.jsonl"
                stored = self._store_file(content.encode(), name, "batch_output", run.output_expiry)
                batch[key] = stored["id"]
        self._count(batch, finished, expired)
        batch["usage"] = self._usage([r for r in finished if r.ok])
        batch.update({"status": status, f"{status}_at": when})

    @staticmethod
    def _usage(results: list) -> dict:
        used_in = sum(r.input_tokens for r in results)
        used_out = sum(r.output_tokens for r in results)
        return {
            "input_tokens": used_in,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": used_out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": used_in + used_out,
        }


ROUTES = [
    ("POST", re.compile(r"/v1/files"), "upload"),
    ("GET", re.compile(r"/v1/files"), "list_files"),
    ("GET", re.compile(r"/v1/files/([^/]+)"), "retrieve_file"),
    ("GET", re.compile(r"/v1/files/([^/]+)/content"), "content"),
    ("DELETE", re.compile(r"/v1/files/([^/]+)"), "delete"),
    ("POST", re.compile(r"/v1/batches"), "create"),
    ("GET", re.compile(r"/v1/batches"), "list"),
    ("GET", re.compile(r"/v1/batches/([^/]+)"), "retrieve"),
    ("POST", re.compile(r"/v1/batches/([^/]+)/cancel"), "cancel"),
    ("POST", re.compile(r"/v1/webhook_endpoints"), "create_webhook"),
    ("GET", re.compile(r"/v1/videos/([^/]+)/content"), "video_content"),
    (
        "POST",
        re.compile(
            r"/v1/(?:deployments/[^/]+/)?(chat/completions|responses|completions|embeddings|moderations)"
        ),
        "sync",
    ),
]
# Faults are injected per operation (or "*" for any of them).
OPERATIONS = tuple(name for _, _, name in ROUTES)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, which the SDK's connection pool relies on
    disable_nagle_algorithm = True  # headers and body go out in two writes; do not delay the second

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")

    def log_message(self, format, *args):
        pass  # tests and the CLI stay quiet

    def _handle(self, method: str) -> None:
        fake: FakeOpenAI = self.server.fake
        body = self._read_body()
        url = urlsplit(self.path)
        if url.path.startswith("/_fake/"):
            return self._send(fake._control(method, url.path, body))
        operation, args = "unknown", ()
        # Azure OpenAI: the same routes under /openai, keyed by `api-key`, versioned by query.
        # A provider serving them under a prefix of its own (Groq's /openai/v1) is not Azure.
        own = fake.prefix != "/v1" and url.path.startswith(fake.prefix + "/")
        azure = not own and url.path.startswith("/openai/")
        path = "/v1/" + url.path.removeprefix("/openai/") if azure else url.path
        if own:
            path = "/v1" + url.path.removeprefix(fake.prefix)
        for route_method, pattern, name in ROUTES:
            if route_method == method and (match := pattern.fullmatch(path)):
                operation, args = name, match.groups()
        key = self.headers.get("api-key") if azure else self.headers.get("Authorization", "")
        generation = fake._record(operation, url.path, (key or "").removeprefix("Bearer "))
        if azure and not (self.headers.get("api-key") and "api-version=" in url.query):
            message = "Access denied: send the api-key header and the api-version query."
            return self._send(_json_reply(_error_body(message, code="invalid_api_key"), 401))
        if not azure and not self.headers.get("Authorization", "").startswith("Bearer "):
            message = "You didn't provide an API key. Use 'Authorization: Bearer YOUR_KEY'."
            return self._send(_json_reply(_error_body(message, code="invalid_api_key"), 401))
        if operation == "unknown":
            message = f"Invalid URL ({method} {url.path})"
            return self._send(_json_reply(_error_body(message), 404))
        fault = fake._take_fault(operation)
        if isinstance(fault, int):
            return self._send(fake._fault_reply(fault))
        if fault == "disconnect" or (fault == "timeout" and not fake._hold(generation)):
            self.close_connection = True
            return None
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        reply = fake._dispatch(f"_{operation}", args, Request(self.headers, query, body))
        if fault == "lost_response":
            # The work is done; only the answer is lost, so a blind retry makes a duplicate.
            self.close_connection = True
            return None
        return self._send(reply)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.send_header("x-request-id", _new_id("req_"))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up, e.g. after its own timeout


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m batchproxy.fakes.openai",
        description="Serve a fake OpenAI Files + Batches API until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9488)
    parser.add_argument("--step-seconds", type=float, default=0.0)
    parser.add_argument("--webhook-url", help="POST signed batch.<status> events here")
    parser.add_argument("--webhook-secret", help="their signing secret (whsec_…)")
    args = parser.parse_args(argv)
    fake = FakeOpenAI(args.host, args.port, step_seconds=args.step_seconds)
    fake.configure(webhook_url=args.webhook_url, webhook_secret=args.webhook_secret)
    serve_until_signalled(fake, f"Fake OpenAI API (step_seconds={args.step_seconds})")


if __name__ == "__main__":
    main()
