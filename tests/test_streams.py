"""Stored answers replayed as each provider's own stream (issue 25, streams): a tiny local
server sends keepalive frames, then `requests_app.streams`' frames of a stored answer, and each
official SDK, pointed at it, assembles back exactly the answer it would have got without
streaming; an error answer is raised as that SDK's own error, with its message."""

import copy
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors

from requests_app import streams
from requests_app.models import Endpoint

from .test_node_sdk import NODE_DIR, node_modules_ensure

KEEPALIVES = 3
LONG = "The Batch API takes requests now and answers them within a day, at half the price. " * 4

# -- stored answers, as the proxy stores them (the fakes' shapes, and the providers' docs') -----

CHAT_TEXT = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": LONG, "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}


def _chat(*choices: dict, **fields) -> dict:
    return {**copy.deepcopy(CHAT_TEXT), "choices": list(choices), **fields}


def _tool_call(n: int, name: str, arguments: dict) -> dict:
    return {
        "id": f"call_{n}abcDEF",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


CHAT_TOOLS = _chat(
    {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "annotations": [],
            "tool_calls": [
                _tool_call(1, "get_weather", {"location": "Paris, France", "unit": "celsius"}),
                _tool_call(2, "search", {"query": LONG}),
            ],
        },
        "logprobs": None,
        "finish_reason": "tool_calls",
    }
)
CHAT_REFUSAL = _chat(
    {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": None,
            "refusal": "I'm sorry, I can't help with that.",
            "annotations": [],
        },
        "logprobs": None,
        "finish_reason": "stop",
    }
)
LOGPROBS = {
    "content": [
        {"token": "Hello", "logprob": -0.31, "bytes": [72, 101, 108, 108, 111], "top_logprobs": []},
        {"token": "!", "logprob": -0.02, "bytes": [33], "top_logprobs": []},
    ],
    "refusal": None,
}
CHAT_TWO = _chat(
    {
        "index": 0,
        "message": {"role": "assistant", "content": "Hello!", "refusal": None, "annotations": []},
        "logprobs": LOGPROBS,
        "finish_reason": "stop",
    },
    {
        "index": 1,
        "message": {"role": "assistant", "content": LONG, "refusal": None, "annotations": []},
        "logprobs": LOGPROBS,
        "finish_reason": "stop",
    },
)
CHAT_ANSWERS = {"text": CHAT_TEXT, "tools": CHAT_TOOLS, "refusal": CHAT_REFUSAL, "n=2": CHAT_TWO}

COMPLETION = {
    "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
    "object": "text_completion",
    "created": 1589478378,
    "model": "gpt-3.5-turbo-instruct",
    "system_fingerprint": "fp_44709d6fcb",
    "choices": [
        {"text": LONG, "index": 0, "logprobs": None, "finish_reason": "length"},
        {
            "text": "\n\nThis is indeed a test",
            "index": 1,
            "logprobs": None,
            "finish_reason": "stop",
        },
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
}

RESPONSE = {
    "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41",
    "object": "response",
    "created_at": 1741476777,
    "status": "completed",
    "completed_at": 1741476778,
    "background": False,
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "max_output_tokens": None,
    "model": "o4-mini-2025-04-16",
    "output": [
        {
            "type": "reasoning",
            "id": "rs_6820f383d7c08191846711c5df8233bc0ac5ba57aafcbac7",
            "summary": [
                {"type": "summary_text", "text": "**Weighing the request**\n\n" + LONG},
                {"type": "summary_text", "text": "**Answering**"},
            ],
        },
        {
            "type": "message",
            "id": "msg_67ccd3acc8d48190a77525dc6de64b4104becb25c45c1d41",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": LONG, "annotations": [], "logprobs": []},
                {"type": "refusal", "refusal": "I can't share the rest."},
            ],
        },
        {
            "type": "function_call",
            "id": "fc_67ca09c6bedc8190a7abfec07b1a1332096610f474011cc0",
            "call_id": "call_unLAR8MvFNptuiZK6K6HCy5k",
            "name": "get_current_weather",
            "arguments": json.dumps({"location": "Boston, MA", "unit": "celsius"}),
            "status": "completed",
        },
    ],
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": {"effort": "medium", "summary": "auto"},
    "service_tier": "default",
    "store": False,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [
        {
            "type": "function",
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["location", "unit"],
            },
            "strict": False,
        }
    ],
    "top_p": 1.0,
    "truncation": "disabled",
    "usage": {
        "input_tokens": 36,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 87,
        "output_tokens_details": {"reasoning_tokens": 64},
        "total_tokens": 123,
    },
    "user": None,
    "metadata": {},
}

MESSAGE = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-20250514",
    "content": [
        {
            "type": "thinking",
            "thinking": "The user wants the weather; I should call the tool.\n" + LONG,
            "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds",
        },
        {"type": "text", "text": LONG, "citations": None},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"location": "San Francisco, CA", "notes": LONG},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 472,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 89,
        "service_tier": "batch",
    },
}

GENERATED = {
    "candidates": [
        {
            "content": {"parts": [{"text": LONG}], "role": "model"},
            "finishReason": "STOP",
            "avgLogprobs": -0.1,
        }
    ],
    "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 40, "totalTokenCount": 48},
    "modelVersion": "gemini-2.5-flash",
    "responseId": "Oq-6aKW_EtaB7M8PqLDo8Aw",
}

GENERATED_CALL = {
    "candidates": [
        {
            "content": {
                "parts": [
                    {"text": "**Planning**\n" + LONG, "thought": True},
                    {"text": "Let me look that up. "},
                    {
                        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                        "thoughtSignature": "CiQB0e2Kb7Vx",
                    },
                ],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 9, "totalTokenCount": 39},
    "modelVersion": "gemini-2.5-pro",
    "responseId": "xq-6aKW_EtaB7M8PqLDo8Aw",
}
TWO_CANDIDATES = {
    **GENERATED,
    "candidates": [
        {**GENERATED["candidates"][0], "index": 0},
        {**GENERATED["candidates"][0], "content": {"parts": [{"text": "Hi"}], "role": "model"},
         "index": 1},
    ],
}  # fmt: skip

# -- the server the SDKs are pointed at --------------------------------------------------------


def frames_of(endpoint: str, answer: dict | bytes, status: int = 200, **options) -> list[bytes]:
    body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
    return list(streams.stream_events(endpoint=endpoint, status=status, body=body, **options))


@contextmanager
def sse_server(endpoint: str, frames: list[bytes]) -> Iterator[str]:
    """A loopback server answering every POST with KEEPALIVES keepalive frames, a little
    apart, then `frames`, as the proxy's stream does once the batch lands."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", streams.SSE_CONTENT_TYPE)
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(KEEPALIVES):
                self.wfile.write(streams.keepalive(endpoint))
                self.wfile.flush()
                time.sleep(0.05)
            for frame in frames:
                self.wfile.write(frame)
                self.wfile.flush()

        def log_message(self, format, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def without(value, keys=("parsed", "parsed_arguments", "parsed_output")):
    """A dict without the SDK helpers' own parse results, at any depth, nor None values (an
    SDK's model fills in the optional fields an answer leaves out)."""
    if isinstance(value, dict):
        return {k: without(v, keys) for k, v in value.items() if k not in keys and v is not None}
    if isinstance(value, list):
        return [without(v, keys) for v in value]
    return value


def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)


ASK = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]}

# -- OpenAI chat completions -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CHAT_ANSWERS))
def test_chat_stream_helper_assembles_the_stored_completion_with_its_usage(name):
    stored = CHAT_ANSWERS[name]
    frames = frames_of(Endpoint.CHAT_COMPLETIONS, stored, include_usage=True)
    with (
        sse_server(Endpoint.CHAT_COMPLETIONS, frames) as url,
        openai_client(url).chat.completions.stream(
            **ASK, stream_options={"include_usage": True}
        ) as stream,
    ):
        final = stream.get_final_completion()
    assembled = without(final.to_dict())
    for choice in assembled["choices"]:
        for call in choice["message"].get("tool_calls", []):
            assert call.pop("index") in (0, 1)  # the SDK keeps the deltas' index
    assert assembled == without(stored)


@pytest.mark.parametrize("name", list(CHAT_ANSWERS))
def test_a_chat_stream_loop_sees_each_choice_its_text_tool_calls_and_finish(name):
    stored = CHAT_ANSWERS[name]
    with sse_server(Endpoint.CHAT_COMPLETIONS, frames_of(Endpoint.CHAT_COMPLETIONS, stored)) as url:
        chunks = list(openai_client(url).chat.completions.create(**ASK, stream=True))
    seen: dict[int, dict] = {}
    for chunk in chunks:
        assert chunk.usage is None  # not asked for
        for choice in chunk.choices:
            got = seen.setdefault(
                choice.index, {"content": None, "calls": {}, "finish": None, "logprobs": []}
            )
            if choice.logprobs is not None:
                got["logprobs"] += [p.to_dict() for p in choice.logprobs.content or []]
            if choice.delta.content is not None:
                got["content"] = (got["content"] or "") + choice.delta.content
            for call in choice.delta.tool_calls or []:
                held = got["calls"].setdefault(call.index, {"name": None, "arguments": ""})
                held["name"] = held["name"] or call.function.name
                held["arguments"] += call.function.arguments or ""
            got["finish"] = got["finish"] or choice.finish_reason
    assert seen == {
        choice["index"]: {
            "content": choice["message"]["content"],
            "calls": {
                i: {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                for i, c in enumerate(choice["message"].get("tool_calls") or [])
            },
            "finish": choice["finish_reason"],
            "logprobs": (choice["logprobs"] or {}).get("content") or [],
        }
        for choice in stored["choices"]
    }


def test_chat_usage_arrives_in_a_last_chunk_with_no_choices_when_asked():
    frames = frames_of(Endpoint.CHAT_COMPLETIONS, CHAT_TEXT, include_usage=True)
    with sse_server(Endpoint.CHAT_COMPLETIONS, frames) as url:
        chunks = list(
            openai_client(url).chat.completions.create(
                **ASK, stream=True, stream_options={"include_usage": True}
            )
        )
    assert chunks[-1].choices == [] and chunks[-1].usage.to_dict() == CHAT_TEXT["usage"]
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == LONG
    assert len(chunks) > 4  # the text came in pieces


def test_the_stream_ends_with_done_and_keepalive_is_a_comment():
    frames = frames_of(Endpoint.CHAT_COMPLETIONS, CHAT_TEXT)
    assert frames[-1] == b"data: [DONE]\n\n"
    assert streams.keepalive(Endpoint.RESPONSES).startswith(b":")
    assert streams.keepalive(Endpoint.COMPLETIONS).startswith(b":")


def test_an_upstream_error_answer_is_raised_by_the_chat_stream_with_its_message():
    error = {"error": {"message": "Invalid 'messages'.", "type": "invalid_request_error",
                       "param": "messages", "code": None}}  # fmt: skip
    frames = frames_of(Endpoint.CHAT_COMPLETIONS, error, status=400)
    with (
        sse_server(Endpoint.CHAT_COMPLETIONS, frames) as url,
        pytest.raises(openai.APIError, match="Invalid 'messages'") as raised,
    ):
        list(openai_client(url).chat.completions.create(**ASK, stream=True))
    assert raised.value.body == error["error"]


def proxy_error(status: int, kind: str, message: str) -> bytes:
    """The OpenAI-shaped body the proxy answers for a failed (502) or cancelled (409) call."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    return json.dumps(body).encode()


FAILED = proxy_error(502, "batch_failed", "Request 7 failed in the Batch API: expired")
CANCELLED = proxy_error(409, "batch_cancelled", "Request 7 was cancelled by an operator.")


@pytest.mark.parametrize("endpoint", [Endpoint.CHAT_COMPLETIONS, Endpoint.COMPLETIONS])
def test_a_failed_request_is_raised_by_the_openai_stream(endpoint):
    frames = [streams.error_event(endpoint, status=502, body=FAILED)]
    with sse_server(endpoint, frames) as url:
        client = openai_client(url)
        with pytest.raises(openai.APIError, match="failed in the Batch API: expired") as raised:
            if endpoint == Endpoint.COMPLETIONS:
                list(client.completions.create(model="m", prompt="p", stream=True))
            else:
                list(client.chat.completions.create(**ASK, stream=True))
    assert raised.value.code == "batch_failed"


# -- OpenAI completions (legacy) -----------------------------------------------------------------


def test_a_completions_stream_gives_each_choice_its_text_then_the_usage():
    frames = frames_of(Endpoint.COMPLETIONS, COMPLETION, include_usage=True)
    with sse_server(Endpoint.COMPLETIONS, frames) as url:
        chunks = list(
            openai_client(url).completions.create(
                model="gpt-3.5-turbo-instruct",
                prompt=["a", "b"],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    texts, finishes = {}, {}
    for chunk in chunks[:-1]:
        assert chunk.object == "text_completion" and chunk.id == COMPLETION["id"]
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            finishes[choice.index] = finishes.get(choice.index) or choice.finish_reason
    assert texts == {c["index"]: c["text"] for c in COMPLETION["choices"]}
    assert finishes == {c["index"]: c["finish_reason"] for c in COMPLETION["choices"]}
    assert chunks[-1].choices == [] and chunks[-1].usage.to_dict() == COMPLETION["usage"]


# -- OpenAI Responses ----------------------------------------------------------------------------


def test_the_responses_stream_helper_gives_the_stored_response_whole():
    frames = frames_of(Endpoint.RESPONSES, RESPONSE)
    with (
        sse_server(Endpoint.RESPONSES, frames) as url,
        openai_client(url).responses.stream(model="o4-mini", input="Hi") as stream,
    ):
        events = list(stream)
        final = stream.get_final_response()
    assert without(final.to_dict()) == without(RESPONSE)
    numbers = [event.sequence_number for event in events]
    assert numbers == list(range(len(events)))
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]


def test_a_responses_stream_loop_sees_the_text_reasoning_and_arguments():
    frames = frames_of(Endpoint.RESPONSES, RESPONSE)
    with sse_server(Endpoint.RESPONSES, frames) as url:
        events = list(openai_client(url).responses.create(model="o4-mini", input="Hi", stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    arguments = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta"
    )
    refusal = "".join(e.delta for e in events if e.type == "response.refusal.delta")
    assert text == LONG
    assert summary == "".join(part["text"] for part in RESPONSE["output"][0]["summary"])
    assert arguments == RESPONSE["output"][2]["arguments"]
    assert refusal == "I can't share the rest."
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == LONG


def test_an_incomplete_response_ends_as_openai_ends_one_in_response_incomplete():
    stored = {**RESPONSE, "status": "incomplete", "completed_at": None,
              "incomplete_details": {"reason": "max_output_tokens"}}  # fmt: skip
    with sse_server(Endpoint.RESPONSES, frames_of(Endpoint.RESPONSES, stored)) as url:
        events = list(openai_client(url).responses.create(model="o4-mini", input="Hi", stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert "response.completed" not in {event.type for event in events}


def test_a_failed_request_is_raised_by_the_responses_stream_as_an_error_event():
    frames = [streams.error_event(Endpoint.RESPONSES, status=409, body=CANCELLED)]
    with (
        sse_server(Endpoint.RESPONSES, frames) as url,
        pytest.raises(openai.APIError, match="cancelled by an operator") as raised,
        openai_client(url).responses.stream(model="o4-mini", input="Hi") as stream,
    ):
        stream.get_final_response()
    assert raised.value.code == "batch_cancelled"
    event = json.loads(frames[0].split(b"data: ", 1)[1])
    assert openai.types.responses.ResponseErrorEvent.model_validate(event).message == (
        "Request 7 was cancelled by an operator."
    )


# -- Anthropic Messages ------------------------------------------------------------------------


def claude_client(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="k", max_retries=0)


CLAUDE_ASK = {
    "model": "claude-sonnet-4-20250514",
    "max_tokens": 1024,
    "messages": [{"role": "user", "content": "Weather?"}],
}


def test_messages_stream_gives_the_stored_message_and_its_text():
    frames = frames_of(Endpoint.MESSAGES, MESSAGE)
    with (
        sse_server(Endpoint.MESSAGES, frames) as url,
        claude_client(url).messages.stream(**CLAUDE_ASK) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == LONG
    assert without(final.to_dict()) == without(MESSAGE)
    assert streams.keepalive(Endpoint.MESSAGES).startswith(b"event: ping\n")


def test_a_raw_messages_stream_has_anthropics_event_order():
    frames = frames_of(Endpoint.MESSAGES, MESSAGE)
    with sse_server(Endpoint.MESSAGES, frames) as url:
        events = list(claude_client(url).messages.create(**CLAUDE_ASK, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert events[0].message.content == [] and events[0].message.usage.input_tokens == 472
    deltas = {e.delta.type for e in events if e.type == "content_block_delta"}
    assert deltas == {"thinking_delta", "signature_delta", "text_delta", "input_json_delta"}
    assert events[-2].delta.stop_reason == "tool_use" and events[-2].usage.output_tokens == 89


@pytest.mark.parametrize(
    ("status", "body", "kind", "message"),
    [
        (502, FAILED, "batch_failed", "failed in the Batch API: expired"),
        (409, CANCELLED, "batch_cancelled", "cancelled by an operator"),
    ],
)
def test_a_failed_request_is_raised_by_messages_stream_as_anthropics_error(
    status, body, kind, message
):
    frames = [streams.error_event(Endpoint.MESSAGES, status=status, body=body)]
    with (
        sse_server(Endpoint.MESSAGES, frames) as url,
        pytest.raises(anthropic.APIStatusError, match=message) as raised,
        claude_client(url).messages.stream(**CLAUDE_ASK) as stream,
    ):
        stream.get_final_message()
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] == kind


def test_an_upstream_error_answer_is_raised_by_messages_stream_unchanged():
    error = {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens"}}
    frames = frames_of(Endpoint.MESSAGES, error, status=400)
    with (
        sse_server(Endpoint.MESSAGES, frames) as url,
        pytest.raises(anthropic.APIStatusError, match="max_tokens") as raised,
    ):
        list(claude_client(url).messages.create(**CLAUDE_ASK, stream=True))
    assert raised.value.body == error


# -- Gemini -----------------------------------------------------------------------------------


def gemini_stream(url: str) -> list:
    client = genai.Client(api_key="k", http_options={"base_url": url})
    return list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="Hi"))


def test_generate_content_stream_yields_the_answer_in_pieces_after_harmless_keepalives():
    frames = frames_of(Endpoint.GENERATE_CONTENT, GENERATED)
    with sse_server(Endpoint.GENERATE_CONTENT, frames) as url:
        chunks = gemini_stream(url)
    assert len(chunks) > KEEPALIVES + 2  # the keepalives, then the text in pieces
    assert [chunk.text for chunk in chunks[:KEEPALIVES]] == [""] * KEEPALIVES
    text = ""
    for chunk in chunks:
        text += chunk.text  # as a caller's loop would: no None, no junk
    assert text == LONG
    assert all(chunk.candidates[0].finish_reason is None for chunk in chunks[:-1])
    last = chunks[-1]
    assert last.candidates[0].finish_reason == "STOP"
    assert last.usage_metadata.total_token_count == 48
    assert {chunk.response_id for chunk in chunks[KEEPALIVES:]} == {GENERATED["responseId"]}


def merged_parts(chunks) -> list[dict]:
    """The parts of a streamed candidate, consecutive text pieces of one kind joined."""
    parts: list[dict] = []
    for chunk in chunks:
        for part in chunk.candidates[0].content.parts:
            part = part.model_dump(mode="json", by_alias=True, exclude_none=True)
            if parts and {"text"} <= set(part) and set(parts[-1]) == set(part):
                parts[-1]["text"] += part["text"]
            else:
                parts.append(part)
    return parts


def test_generate_content_stream_keeps_thoughts_calls_and_signatures_apart():
    frames = frames_of(Endpoint.GENERATE_CONTENT, GENERATED_CALL)
    with sse_server(Endpoint.GENERATE_CONTENT, frames) as url:
        chunks = gemini_stream(url)[KEEPALIVES:]
    assert merged_parts(chunks) == GENERATED_CALL["candidates"][0]["content"]["parts"]
    assert "".join(chunk.text or "" for chunk in chunks) == "Let me look that up. "
    assert chunks[-1].function_calls[0].args == {"city": "Paris"}


def test_an_answer_of_two_candidates_is_one_chunk_whole():
    frames = frames_of(Endpoint.GENERATE_CONTENT, TWO_CANDIDATES)
    assert frames == [
        b"data: " + json.dumps(TWO_CANDIDATES, separators=(",", ":")).encode() + b"\n\n"
    ]
    with sse_server(Endpoint.GENERATE_CONTENT, frames) as url:
        (chunk,) = gemini_stream(url)[KEEPALIVES:]
    assert [c.content.parts[0].text for c in chunk.candidates] == [LONG, "Hi"]


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (502, FAILED, genai_errors.ServerError, "failed in the Batch API: expired"),
        (409, CANCELLED, genai_errors.ClientError, "cancelled by an operator"),
    ],
)
def test_a_failed_request_is_raised_by_generate_content_stream_with_its_code(
    status, body, error, message
):
    frames = [streams.error_event(Endpoint.GENERATE_CONTENT, status=status, body=body)]
    with (
        sse_server(Endpoint.GENERATE_CONTENT, frames) as url,
        pytest.raises(error, match=message) as raised,
    ):
        gemini_stream(url)
    assert raised.value.code == status


def test_an_upstream_error_answer_is_raised_by_generate_content_stream():
    error = {
        "error": {"code": 400, "message": "Invalid JSON payload", "status": "INVALID_ARGUMENT"}
    }
    frames = frames_of(Endpoint.GENERATE_CONTENT, error, status=400)
    with (
        sse_server(Endpoint.GENERATE_CONTENT, frames) as url,
        pytest.raises(genai_errors.ClientError, match="Invalid JSON payload") as raised,
    ):
        gemini_stream(url)
    assert raised.value.code == 400 and raised.value.status == "INVALID_ARGUMENT"


# -- what does not stream ----------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", [Endpoint.EMBEDDINGS, Endpoint.IMAGES_GENERATIONS, "/v1/x"])
def test_an_endpoint_that_does_not_stream_is_refused(endpoint):
    with pytest.raises(ValueError, match="not streamed"):
        streams.stream_events(endpoint=endpoint, status=200, body=b"{}")  # at once, not lazily
    with pytest.raises(ValueError):
        streams.keepalive(endpoint)
    with pytest.raises(ValueError):
        streams.error_event(endpoint, status=502, body=FAILED)


# -- the Node SDKs -------------------------------------------------------------------------------

FAILED_MESSAGE = json.loads(FAILED)["error"]["message"]
# What the Node helpers add to a final answer: parse results and `output_text`.
NODE_EXTRAS = ("parsed", "parsed_arguments", "parsed_output", "output_text")


def _failed(endpoint: str) -> list[bytes]:
    return [streams.error_event(endpoint, status=502, body=FAILED)]


NODE_CASES = {
    "chat": (Endpoint.CHAT_COMPLETIONS, lambda: frames_of(
        Endpoint.CHAT_COMPLETIONS, CHAT_TWO, include_usage=True)),
    "responses": (Endpoint.RESPONSES, lambda: frames_of(Endpoint.RESPONSES, RESPONSE)),
    "failed": (Endpoint.CHAT_COMPLETIONS, lambda: _failed(Endpoint.CHAT_COMPLETIONS)),
    "claude": (Endpoint.MESSAGES, lambda: frames_of(Endpoint.MESSAGES, MESSAGE)),
    "claudeFailed": (Endpoint.MESSAGES, lambda: _failed(Endpoint.MESSAGES)),
    "gemini": (Endpoint.GENERATE_CONTENT, lambda: frames_of(Endpoint.GENERATE_CONTENT, GENERATED)),
    "geminiFailed": (Endpoint.GENERATE_CONTENT, lambda: _failed(Endpoint.GENERATE_CONTENT)),
}  # fmt: skip


@pytest.fixture(scope="module")
def node_stream():
    """tests/node/stream.mjs against a stream of this module's server: what the official
    Node SDK (openai, @anthropic-ai/sdk, @google/genai) assembled, as JSON."""
    node_modules_ensure()

    def run(case: str):
        endpoint, frames = NODE_CASES[case]
        with sse_server(endpoint, frames()) as url:
            out = subprocess.run(
                ["node", "stream.mjs", url, case],
                cwd=NODE_DIR,
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            )
        return json.loads(out.stdout)

    return run


def test_the_node_openai_sdk_streams_chat_choices_and_usage_past_keepalive_comments(node_stream):
    assert node_stream("chat") == {
        "texts": {"0": "Hello!", "1": LONG},
        "finish": {"0": "stop", "1": "stop"},
        "usage": CHAT_TWO["usage"],
    }


def test_the_node_openai_sdk_streams_a_response_whole(node_stream):
    got = node_stream("responses")
    assert got["text"] == LONG
    assert without(got["final"], NODE_EXTRAS) == without(RESPONSE)


def test_the_node_anthropic_sdk_streams_the_message_past_pings(node_stream):
    got = node_stream("claude")
    assert got["text"] == LONG
    assert without(got["final"], NODE_EXTRAS) == without(MESSAGE)


def test_the_node_genai_sdk_streams_empty_keepalives_then_the_answer(node_stream):
    texts = node_stream("gemini")["texts"]
    assert texts[:KEEPALIVES] == [""] * KEEPALIVES
    assert "".join(texts[KEEPALIVES:]) == LONG and len(texts) > KEEPALIVES + 1


def test_each_node_sdk_raises_a_failed_request_as_its_own_error(node_stream):
    assert node_stream("failed") == {"error": "APIError", "message": FAILED_MESSAGE}
    claude = node_stream("claudeFailed")
    assert claude["error"] == "APIError" and claude["body"]["error"] == {
        "type": "batch_failed",
        "message": FAILED_MESSAGE,
    }
    gemini = node_stream("geminiFailed")
    assert gemini["error"] == "ApiError" and gemini["status"] == 502
    assert FAILED_MESSAGE in gemini["message"]
