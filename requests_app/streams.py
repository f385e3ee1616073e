"""A stored answer replayed as its provider's own server-sent-event stream.

Pure encoding, no database and no views: `stream_events` turns one stored answer (the HTTP
status and JSON body the proxy would answer without streaming) into the frames of the
endpoint's provider, exactly what that provider's official SDK parsers assemble back into the
same answer; `keepalive` is the frame sent while the batch runs, in a form the SDK ignores;
`error_event` is a failed or cancelled request as the provider's error event.

The whole answer is at hand, so text is cut into pieces of at most PIECE_CHARS only for the
parsers to see deltas as a provider sends them: few frames per answer, since thousands of
streams may be answered at once.
"""

from collections.abc import Iterator

import orjson

from .errors import anthropic_error, google_error, proxy_error
from .models import Endpoint

SSE_CONTENT_TYPE = "text/event-stream"
PIECE_CHARS = 128

# What the OpenAI SDKs (Python and Node) skip: an SSE comment.
_COMMENT = b": keepalive\n\n"
# Anthropic's own keepalive event, which its SDKs skip.
_PING = b'event: ping\ndata: {"type": "ping"}\n\n'
# google-genai reads every non-`data:` line as JSON and raises on a comment; a chunk whose one
# part is empty text is read as an answer chunk whose `.text` is "" (not None, which would
# break `text += chunk.text`), with no finish reason: nothing added to what the caller reads.
_GEMINI_EMPTY = (
    b'data: {"candidates":[{"content":{"parts":[{"text":""}],"role":"model"},"index":0}]}\n\n'
)


def _frame(data: dict, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def _pieces(text: str) -> list[str]:
    """`text` in pieces of at most PIECE_CHARS; one empty piece for an empty text."""
    return [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)] or [""]


# -- OpenAI: chat completions and completions -------------------------------------------------


def _chat_chunks(answer: dict, include_usage: bool) -> Iterator[bytes]:
    """`chat.completion.chunk`s, one choice after the other: the role (with the message's
    other fields), the content, the refusal, each tool call (its name, then its arguments),
    the finish reason with the logprobs (on a choice's first chunk the SDK's helper would
    count them twice); then the usage chunk when asked; then [DONE]."""
    envelope = {
        key: answer[key]
        for key in ("id", "created", "model", "system_fingerprint", "service_tier")
        if key in answer
    }
    envelope["object"] = "chat.completion.chunk"
    if include_usage:
        envelope["usage"] = None

    def chunk(index: int, delta: dict, finish_reason=None, **extra) -> bytes:
        choice = {"index": index, "delta": delta, "finish_reason": finish_reason, **extra}
        return _frame({**envelope, "choices": [choice]})

    for position, choice in enumerate(answer.get("choices") or []):
        index, message = choice.get("index", position), dict(choice.get("message") or {})
        content, refusal = message.pop("content", None), message.pop("refusal", None)
        tool_calls = message.pop("tool_calls", None) or []
        yield chunk(index, message)
        for field, text in (("content", content), ("refusal", refusal)):
            if isinstance(text, str):
                for piece in _pieces(text):
                    yield chunk(index, {field: piece})
        for at, call in enumerate(tool_calls):
            function = call.get("function")
            if call.get("type") != "function" or not isinstance(function, dict):
                yield chunk(index, {"tool_calls": [{"index": at, **call}]})
                continue
            head = {**call, "function": {**function, "arguments": ""}}
            yield chunk(index, {"tool_calls": [{"index": at, **head}]})
            for piece in _pieces(function.get("arguments") or ""):
                part = {"index": at, "function": {"arguments": piece}}
                yield chunk(index, {"tool_calls": [part]})
        yield chunk(index, {}, choice.get("finish_reason"), logprobs=choice.get("logprobs"))
    if include_usage:
        yield _frame({**envelope, "choices": [], "usage": answer.get("usage")})
    yield b"data: [DONE]\n\n"


def _completion_chunks(answer: dict, include_usage: bool) -> Iterator[bytes]:
    """`text_completion` chunks: each choice's text in pieces, its finish reason (and
    logprobs) on the last; the usage chunk when asked; then [DONE]."""
    envelope = {key: value for key, value in answer.items() if key not in ("choices", "usage")}
    if include_usage:
        envelope["usage"] = None
    for choice in answer.get("choices") or []:
        pieces = _pieces(choice.get("text") or "")
        for n, piece in enumerate(pieces, 1):
            last = n == len(pieces)
            part = {
                "text": piece,
                "index": choice["index"],
                "logprobs": choice.get("logprobs") if last else None,
                "finish_reason": choice.get("finish_reason") if last else None,
            }
            yield _frame({**envelope, "choices": [part]})
    if include_usage:
        yield _frame({**envelope, "choices": [], "usage": answer.get("usage")})
    yield b"data: [DONE]\n\n"


def _openai_error(status: int, body: bytes) -> dict:
    """An OpenAI error body `{"error": {...}}` (the stored one, or one made of a body that is
    not one)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return {"error": error}
    message = body.decode(errors="replace").strip() or f"HTTP {status}"
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


def _openai_error_frame(status: int, body: bytes) -> bytes:
    """What the OpenAI SDKs raise as `APIError` mid-stream: a data chunk with `error`."""
    return _frame(_openai_error(status, body))


# -- OpenAI: Responses -------------------------------------------------------------------------


class _Sequence:
    """Responses events, numbered by `sequence_number` in the order they are made."""

    def __init__(self):
        self.number = -1

    def __call__(self, kind: str, **fields) -> bytes:
        self.number += 1
        return _frame({"type": kind, "sequence_number": self.number, **fields}, kind)


def _response_events(answer: dict, include_usage: bool) -> Iterator[bytes]:
    """response.created and .in_progress (the response with no output yet), each output item
    from output_item.added to output_item.done with its deltas, then the stored response
    whole in response.completed (or .incomplete / .failed, by its status)."""
    event = _Sequence()
    started = {**answer, "status": "in_progress", "output": [], "usage": None}
    if "completed_at" in started:
        started["completed_at"] = None
    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    for index, item in enumerate(answer.get("output") or []):
        yield from _response_item(event, index, item)
    status = answer.get("status")
    terminal = status if status in ("incomplete", "failed") else "completed"
    yield event(f"response.{terminal}", response=answer)


def _response_item(event: _Sequence, index: int, item: dict) -> Iterator[bytes]:
    where = {"item_id": item.get("id", ""), "output_index": index}
    kind = item.get("type")
    opened = {**item, "status": "in_progress"} if "status" in item else dict(item)
    if kind == "message":
        yield event(
            "response.output_item.added", output_index=index, item={**opened, "content": []}
        )
        for content_index, part in enumerate(item.get("content") or []):
            yield from _response_part(event, {**where, "content_index": content_index}, part)
    elif kind == "function_call":
        yield event(
            "response.output_item.added", output_index=index, item={**opened, "arguments": ""}
        )
        arguments = item.get("arguments") or ""
        for piece in _pieces(arguments):
            yield event("response.function_call_arguments.delta", **where, delta=piece)
        yield event("response.function_call_arguments.done", **where, arguments=arguments)
    elif kind == "reasoning":
        yield event(
            "response.output_item.added", output_index=index, item={**opened, "summary": []}
        )
        for summary_index, part in enumerate(item.get("summary") or []):
            at = {**where, "summary_index": summary_index}
            text = part.get("text", "")
            yield event("response.reasoning_summary_part.added", **at, part={**part, "text": ""})
            for piece in _pieces(text):
                yield event("response.reasoning_summary_text.delta", **at, delta=piece)
            yield event("response.reasoning_summary_text.done", **at, text=text)
            yield event("response.reasoning_summary_part.done", **at, part=part)
    else:
        yield event("response.output_item.added", output_index=index, item=opened)
    yield event("response.output_item.done", output_index=index, item=item)


def _response_part(event: _Sequence, where: dict, part: dict) -> Iterator[bytes]:
    """One content part of a message: added (empty), its text or refusal in deltas, done."""
    kind = part.get("type")
    if kind == "output_text":
        text = part.get("text", "")
        logprobs = part.get("logprobs") or []
        empty = {**part, "text": "", "annotations": []}
        if "logprobs" in part:
            empty["logprobs"] = []
        yield event("response.content_part.added", **where, part=empty)
        for piece in _pieces(text):
            yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
        yield event("response.output_text.done", **where, text=text, logprobs=logprobs)
    elif kind == "refusal":
        refusal = part.get("refusal", "")
        yield event("response.content_part.added", **where, part={**part, "refusal": ""})
        for piece in _pieces(refusal):
            yield event("response.refusal.delta", **where, delta=piece)
        yield event("response.refusal.done", **where, refusal=refusal)
    else:
        yield event("response.content_part.added", **where, part=part)
    yield event("response.content_part.done", **where, part=part)


def _response_error_frame(status: int, body: bytes) -> bytes:
    """The Responses `error` event (type, code, message, param, sequence_number), with the
    error object also under `error`, which both OpenAI SDKs raise as `APIError`."""
    error = _openai_error(status, body)["error"]
    fields = {key: error.get(key) for key in ("code", "message", "param")}
    return _frame({"type": "error", "sequence_number": 0, **fields, "error": error}, "error")


# -- Anthropic: Messages -----------------------------------------------------------------------

# Blocks whose `input` arrives as input_json_delta.
_TOOL_BLOCKS = ("tool_use", "server_tool_use", "mcp_tool_use")


def _message_events(answer: dict, include_usage: bool) -> Iterator[bytes]:
    """message_start (the message with no content, its input usage), each content block from
    content_block_start to content_block_stop with its deltas, message_delta (stop reason,
    stop sequence, output usage), message_stop."""
    usage = answer.get("usage") or {}
    started = {
        **answer,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 0},
    }
    yield _frame({"type": "message_start", "message": started}, "message_start")
    for index, block in enumerate(answer.get("content") or []):
        yield from _message_block(index, block)
    delta = {key: answer.get(key) for key in ("stop_reason", "stop_sequence")}
    delta.update({key: answer[key] for key in ("stop_details", "container") if key in answer})
    output = {"output_tokens": usage.get("output_tokens", 0)}
    if usage.get("server_tool_use") is not None:
        output["server_tool_use"] = usage["server_tool_use"]
    yield _frame({"type": "message_delta", "delta": delta, "usage": output}, "message_delta")
    yield _frame({"type": "message_stop"}, "message_stop")


def _message_block(index: int, block: dict) -> Iterator[bytes]:
    def delta(**fields) -> bytes:
        return _frame(
            {"type": "content_block_delta", "index": index, "delta": fields}, "content_block_delta"
        )

    kind, deltas = block.get("type"), []
    start = dict(block)
    if kind == "text":
        start.update(text="")
        citations = start.pop("citations", None) or []
        deltas = [delta(type="text_delta", text=p) for p in _pieces(block.get("text", ""))]
        deltas += [delta(type="citations_delta", citation=c) for c in citations]
    elif kind == "thinking":
        start.update(thinking="", signature="")
        deltas = [delta(type="thinking_delta", thinking=p) for p in _pieces(block["thinking"])]
        deltas.append(delta(type="signature_delta", signature=block.get("signature", "")))
    elif kind in _TOOL_BLOCKS:
        start.update(input={})
        arguments = orjson.dumps(block.get("input", {})).decode()
        deltas = [delta(type="input_json_delta", partial_json=p) for p in _pieces(arguments)]
    yield _frame(
        {"type": "content_block_start", "index": index, "content_block": start},
        "content_block_start",
    )
    yield from deltas
    yield _frame({"type": "content_block_stop", "index": index}, "content_block_stop")


def _anthropic_error_frame(status: int, body: bytes) -> bytes:
    """Anthropic's `event: error` with `{"type": "error", "error": {"type", "message"}}`."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if not (isinstance(parsed, dict) and parsed.get("type") == "error"):
        error = proxy_error(body) or _openai_error(status, body)["error"]
        parsed = anthropic_error(status, error)
    return _frame(parsed, "error")


# -- Gemini: streamGenerateContent?alt=sse ----------------------------------------------------


def _gemini_chunks(answer: dict, include_usage: bool) -> Iterator[bytes]:
    """GenerateContentResponse chunks, as Gemini streams one candidate: a chunk per part (a
    text or thought part in pieces), the last carrying the candidate's finish reason and the
    usage. An answer of several candidates (or none, or no parts) is one chunk, whole:
    google-genai hands chunks over one by one and never merges them."""
    candidates = answer.get("candidates") or []
    content = (candidates[0].get("content") or {}) if len(candidates) == 1 else {}
    parts = []
    for part in content.get("parts") or []:
        if "text" in part and set(part) <= {"text", "thought"}:
            parts += [{**part, "text": piece} for piece in _pieces(part["text"])]
        else:
            parts.append(part)  # a call, or a part that carries a thought signature
    if not parts:
        yield _frame(answer)
        return
    head = {k: v for k, v in answer.items() if k not in ("candidates", "usageMetadata")}
    where = {"index": candidates[0]["index"]} if "index" in candidates[0] else {}
    for part in parts[:-1]:
        piece = {"content": {**content, "parts": [part]}, **where}
        yield _frame({"candidates": [piece], **head})
    last = {**candidates[0], "content": {**content, "parts": parts[-1:]}}
    yield _frame({**answer, "candidates": [last]})


def _gemini_error_frame(status: int, body: bytes) -> bytes:
    """Google's `{"error": {"code", "message", "status", ...}}`, `error` first, as Google
    sends an error in a stream: bare JSON, not a `data:` line. google-genai (Python) reads a
    line that is not `data:` as JSON and raises an error chunk as `errors.APIError` of its
    code; @google/genai (Node) raises only a read that parses whole as such JSON, and passes
    a `data:` error chunk over in silence."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    ours = proxy_error(body)
    if ours is not None or not (isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)):
        error = google_error(status, ours or _openai_error(status, body)["error"])
    else:
        error = {"error": {"code": status, **parsed["error"]}}
    return orjson.dumps(error) + b"\n\n"


# -- The table ---------------------------------------------------------------------------------

# endpoint -> (answer's frames, error's frame, keepalive)
_SHAPES = {
    Endpoint.CHAT_COMPLETIONS: (_chat_chunks, _openai_error_frame, _COMMENT),
    Endpoint.COMPLETIONS: (_completion_chunks, _openai_error_frame, _COMMENT),
    Endpoint.RESPONSES: (_response_events, _response_error_frame, _COMMENT),
    Endpoint.MESSAGES: (_message_events, _anthropic_error_frame, _PING),
    Endpoint.GENERATE_CONTENT: (_gemini_chunks, _gemini_error_frame, _GEMINI_EMPTY),
}


def _shape(endpoint: str) -> tuple:
    try:
        return _SHAPES[endpoint]
    except KeyError:
        raise ValueError(f"{endpoint} answers are not streamed") from None


def stream_events(
    *, endpoint: str, status: int, body: bytes, include_usage: bool = False
) -> Iterator[bytes]:
    """The SSE frames that replay one stored answer (its HTTP status and JSON body, exactly as
    the proxy stores and would answer it without streaming) as the provider's own stream:
    OpenAI's chat chunks (the usage chunk when `include_usage`, from the caller's
    `stream_options`) or completions chunks then [DONE], Responses events, Anthropic's
    message_start … message_stop, Gemini's chunks. A status other than 200 (a per-request
    error from upstream) is that provider's error event. Checked when called, before any
    frame: ValueError for an endpoint that does not stream (or a 200 body that is not JSON)."""
    answer_frames, error_frame, _ = _shape(endpoint)
    if status != 200:
        return iter([error_frame(status, body)])
    return answer_frames(orjson.loads(body), include_usage)


def keepalive(endpoint: str) -> bytes:
    """One frame sent every STREAM_KEEPALIVE_SECONDS while the batch runs, in a form the
    endpoint's official SDK parser accepts and ignores (or yields harmlessly): an SSE comment
    for OpenAI's, Anthropic's `ping`, a Gemini chunk of empty text."""
    return _shape(endpoint)[2]


def error_event(endpoint: str, *, status: int, body: bytes) -> bytes:
    """A proxy-side error (body: the OpenAI-shaped error JSON the proxy answers today, e.g. a
    failed or cancelled request, 502/409) as the endpoint's provider's error event."""
    return _shape(endpoint)[1](status, body)
