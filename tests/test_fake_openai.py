"""The fake OpenAI Files + Batches API, driven by the official SDK over real HTTP (no Django)."""

import array
import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
from openai import OpenAI
from openai.types import (
    Completion,
    CreateEmbeddingResponse,
    ImagesResponse,
    ModerationCreateResponse,
)
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from batchproxy.fakes.openai import PNG_MAGIC, FakeOpenAI

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def server():
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(server):
    server.reset()
    return server


@pytest.fixture
def client(fake):
    with OpenAI(api_key="sk-test", base_url=fake.url, max_retries=0, timeout=10) as sdk:
        yield sdk


def chat(text: str, model: str = "gpt-4o-mini") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def jsonl(lines: list) -> bytes:
    # A str line is written as is, to smuggle broken JSON into a file.
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


def request_lines(endpoint: str, bodies: list[dict]) -> list[dict]:
    return [
        {"custom_id": f"req-{i}", "method": "POST", "url": endpoint, "body": body}
        for i, body in enumerate(bodies)
    ]


def submit_lines(client, endpoint: str, lines: list, **options):
    upload = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=upload.id, endpoint=endpoint, completion_window="24h", **options
    )


def submit(client, endpoint: str, bodies: list[dict], **options):
    return submit_lines(client, endpoint, request_lines(endpoint, bodies), **options)


def read_lines(client, file_id: str) -> list[dict]:
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def raw_call(fake, method: str, path: str, body=None, auth=True) -> tuple[int, dict]:
    """A bare HTTP call, for what the SDK cannot send (no key, control endpoints)."""
    headers = {"Authorization": "Bearer sk-test"} if auth else {}
    data = None if body is None else json.dumps(body)
    connection = http.client.HTTPConnection(urlsplit(fake.url).netloc, timeout=10)
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def usage_in(answer: dict) -> int:
    usage = answer.get("usage") or {}
    return usage.get("prompt_tokens", usage.get("input_tokens", 0))


# endpoint -> (body for request i, what identifies the answer, what it should be for request i).
# Embeddings and moderations cannot echo, so request i sends i + 1 inputs.
ENDPOINT_CASES = {
    "/v1/chat/completions": (
        lambda i: {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"question {i}"},
            ],
        },
        lambda a: ChatCompletion.model_validate(a).choices[0].message.content,
        lambda i: f"echo: question {i}",
    ),
    "/v1/responses": (
        lambda i: {"model": "gpt-4.1-mini", "input": f"question {i}"},
        lambda a: Response.model_validate(a).output_text,
        lambda i: f"echo: question {i}",
    ),
    "/v1/completions": (
        lambda i: {"model": "gpt-3.5-turbo-instruct", "prompt": f"question {i}"},
        lambda a: Completion.model_validate(a).choices[0].text,
        lambda i: f"echo: question {i}",
    ),
    "/v1/embeddings": (
        lambda i: {"model": "text-embedding-3-small", "input": [f"q{i}"] * (i + 1)},
        lambda a: len(CreateEmbeddingResponse.model_validate(a).data),
        lambda i: i + 1,
    ),
    "/v1/moderations": (
        lambda i: {"model": "omni-moderation-latest", "input": [f"q{i}"] * (i + 1)},
        lambda a: len(ModerationCreateResponse.model_validate(a).results),
        lambda i: i + 1,
    ),
}


@pytest.mark.parametrize("endpoint", list(ENDPOINT_CASES))
def test_batch_completes_with_shuffled_answers_matched_by_custom_id(fake, client, endpoint):
    make_body, identify, expected = ENDPOINT_CASES[endpoint]
    bodies = [make_body(i) for i in range(8)]
    created = submit(client, endpoint, bodies, metadata={"job": "nightly"})
    assert created.status == "validating"

    batch = client.batches.retrieve(created.id)

    assert batch.status == "completed"
    assert batch.model == bodies[0]["model"]
    assert batch.metadata == {"job": "nightly"}
    assert batch.request_counts.model_dump() == {"total": 8, "completed": 8, "failed": 0}
    assert batch.error_file_id is None
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
    lines = read_lines(client, batch.output_file_id)
    assert [line["custom_id"] for line in lines] != [f"req-{i}" for i in range(8)]
    for line in lines:
        i = int(line["custom_id"].removeprefix("req-"))
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        assert identify(line["response"]["body"]) == expected(i)
    answers = [line["response"]["body"] for line in lines]
    assert batch.usage.input_tokens == sum(usage_in(a) for a in answers)
    if endpoint != "/v1/moderations":
        assert batch.usage.input_tokens > 0


def test_message_lists_echo_the_text_of_the_last_message(client):
    parts = [{"type": "input_text", "text": "hello "}, {"type": "input_text", "text": "there"}]
    batch = submit(
        client,
        "/v1/responses",
        [{"model": "gpt-4.1-mini", "input": [{"role": "user", "content": parts}]}],
    )
    [line] = read_lines(client, client.batches.retrieve(batch.id).output_file_id)
    answer = Response.model_validate(line["response"]["body"])
    assert answer.output_text == "echo: hello there"
    assert answer.usage.input_tokens > 0 and answer.usage.output_tokens > 0

    text_parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    batch = submit(
        client, CHAT, [{"model": "m", "messages": [{"role": "user", "content": text_parts}]}]
    )
    [line] = read_lines(client, client.batches.retrieve(batch.id).output_file_id)
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "echo: ab"


def test_embeddings_in_base64_decode_like_the_sdk(client):
    model = "text-embedding-3-small"
    bodies = [
        {"model": model, "input": ["alpha", "beta"], "encoding_format": "base64"},
        {"model": model, "input": ["alpha", "beta"], "encoding_format": "float"},
        {"model": model, "input": [[1, 2, 3], [4, 5]]},
    ]
    batch = client.batches.retrieve(submit(client, "/v1/embeddings", bodies).id)
    answers = {
        line["custom_id"]: line["response"]["body"]
        for line in read_lines(client, batch.output_file_id)
    }

    # The SDK decodes base64 embeddings as little-endian float32 values.
    decoded = [
        array.array("f", base64.b64decode(item["embedding"])).tolist()
        for item in answers["req-0"]["data"]
    ]
    floats = [item["embedding"] for item in answers["req-1"]["data"]]
    assert decoded == floats
    assert len(floats[0]) == 8 and floats[0] != floats[1]
    assert len(answers["req-2"]["data"]) == 2
    assert answers["req-2"]["usage"]["prompt_tokens"] == 5


def test_status_progresses_with_step_seconds(fake, client):
    fake.configure(step_seconds=0.3)
    batch = submit(client, CHAT, [chat("a"), chat("b")])
    seen = [batch.status]
    deadline = time.monotonic() + 5
    while seen[-1] != "completed" and time.monotonic() < deadline:
        status = client.batches.retrieve(batch.id).status
        if status != seen[-1]:
            seen.append(status)
        time.sleep(0.03)

    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    done = client.batches.retrieve(batch.id)
    stamps = [done.created_at, done.in_progress_at, done.finalizing_at, done.completed_at]
    assert stamps == sorted(stamps)


def mismatched_model(lines):
    lines[2]["body"]["model"] = "gpt-4o"


def marked_invalid(lines):
    lines[1]["body"]["messages"][0]["content"] = "please fail [[invalid]]"


def duplicate_custom_id(lines):
    lines[2]["custom_id"] = lines[0]["custom_id"]


def wrong_url(lines):
    lines[0]["url"] = "/v1/embeddings"


def broken_json(lines):
    lines[1] = '{"custom_id": "req-1", '


@pytest.mark.parametrize(
    ("mutate", "code", "line"),
    [
        (mismatched_model, "mismatched_model", 3),
        (marked_invalid, "invalid_request", 2),
        (duplicate_custom_id, "duplicate_custom_id", 3),
        (wrong_url, "invalid_request", 1),
        (broken_json, "invalid_json_line", 2),
    ],
)
def test_validation_failure_reports_the_line(client, mutate, code, line):
    lines = request_lines(CHAT, [chat("a"), chat("b"), chat("c")])
    mutate(lines)
    batch = client.batches.retrieve(submit_lines(client, CHAT, lines).id)

    assert batch.status == "failed" and batch.failed_at is not None
    assert (batch.errors.data[0].code, batch.errors.data[0].line) == (code, line)
    assert batch.output_file_id is None and batch.error_file_id is None


def test_status_and_error_markers_send_lines_to_the_error_file(client):
    texts = ["fine", "bad [[status:400]]", "flaky [[error:server_error]]", "down [[status:503]]"]
    batch = client.batches.retrieve(submit(client, CHAT, [chat(t) for t in texts]).id)

    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 4, "completed": 1, "failed": 3}
    [good] = read_lines(client, batch.output_file_id)
    assert good["custom_id"] == "req-0"
    errors = {line["custom_id"]: line for line in read_lines(client, batch.error_file_id)}
    assert errors["req-1"]["response"]["status_code"] == 400
    assert errors["req-1"]["error"] is None
    error_body = errors["req-1"]["response"]["body"]["error"]
    assert set(error_body) == {"message", "type", "param", "code"}
    assert errors["req-3"]["response"]["status_code"] == 503
    assert errors["req-2"]["response"] is None
    assert errors["req-2"]["error"]["code"] == "server_error"


def test_batch_where_every_line_fails_has_no_output_file(client):
    batch = client.batches.retrieve(submit(client, CHAT, [chat("x [[status:422]]")]).id)
    assert (batch.status, batch.output_file_id) == ("completed", None)
    assert batch.error_file_id is not None


def test_expiry_delivers_finished_lines_and_marks_the_rest_expired(fake, client):
    fake.configure(expire_after_lines=2)
    batch = client.batches.retrieve(submit(client, CHAT, [chat(f"q{i}") for i in range(5)]).id)

    assert batch.status == "expired" and batch.expired_at is not None
    assert batch.request_counts.model_dump() == {"total": 5, "completed": 2, "failed": 3}
    done = {line["custom_id"] for line in read_lines(client, batch.output_file_id)}
    assert done == {"req-0", "req-1"}
    expired = read_lines(client, batch.error_file_id)
    assert {line["custom_id"] for line in expired} == {"req-2", "req-3", "req-4"}
    assert all(line["response"] is None for line in expired)
    assert {line["error"]["code"] for line in expired} == {"batch_expired"}
    assert expired[0]["error"]["message"] == (
        "This request could not be executed before the completion window expired."
    )


def test_cancel_keeps_the_lines_done_so_far(fake, client):
    fake.configure(stall_after_lines=2)
    batch = submit(client, CHAT, [chat(f"q{i}") for i in range(5)])
    running = client.batches.retrieve(batch.id)
    assert running.status == "in_progress"
    assert running.request_counts.completed == 2

    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    cancelled = client.batches.retrieve(batch.id)

    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    done = {line["custom_id"] for line in read_lines(client, cancelled.output_file_id)}
    assert done == {"req-0", "req-1"}
    assert cancelled.error_file_id is None
    assert client.batches.cancel(batch.id).status == "cancelled"  # a retried cancel is harmless


def test_cancel_before_validation_leaves_no_files(fake, client):
    fake.configure(step_seconds=3600)
    batch = submit(client, CHAT, [chat("slow")])
    assert client.batches.cancel(batch.id).status == "cancelling"
    cancelled = client.batches.retrieve(batch.id)
    assert cancelled.status == "cancelled"
    assert (cancelled.output_file_id, cancelled.error_file_id) == (None, None)


def test_cancel_of_a_finished_batch_is_rejected(client):
    batch = submit(client, CHAT, [chat("quick")])
    assert client.batches.retrieve(batch.id).status == "completed"
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(batch.id)


def test_token_limit_failure_hits_only_the_next_batches(fake, client):
    fake.configure(token_limit_failures=1)
    first = client.batches.retrieve(submit(client, CHAT, [chat("a", model="gpt-4o")]).id)
    second = client.batches.retrieve(submit(client, CHAT, [chat("b", model="gpt-4o")]).id)

    assert first.status == "failed"
    [error] = first.errors.data
    assert (error.code, error.line) == ("token_limit_exceeded", None)
    assert error.message.startswith("Enqueued token limit reached for gpt-4o in organization")
    assert "once some in_progress batches have been completed" in error.message
    assert second.status == "completed"


def test_fail_batches_fails_with_the_given_code(fake, client):
    fake.configure(fail_batches=1, fail_code="internal_error")
    batch = client.batches.retrieve(submit(client, CHAT, [chat("a")]).id)
    assert (batch.status, batch.errors.data[0].code) == ("failed", "internal_error")


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_http_status_fault_reaches_the_sdk(fake, client, status):
    batch = submit(client, CHAT, [chat("a")])
    fake.inject("retrieve", status)

    with pytest.raises(openai.APIStatusError) as raised:
        client.batches.retrieve(batch.id)

    assert raised.value.status_code == status
    assert set(raised.value.body) == {"message", "type", "param", "code"}
    if status == 429:
        assert raised.value.response.headers["retry-after"] == "1"
    assert client.batches.retrieve(batch.id).status == "completed"


def test_fault_fires_for_the_given_number_of_calls(fake, client):
    fake.inject("*", 500, times=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.batches.list()
    assert client.batches.list().data == []


def test_sdk_retries_through_rate_limits(fake):
    fake.configure(retry_after=0.01)
    fake.inject("upload", 429, times=2)
    with OpenAI(api_key="sk-test", base_url=fake.url, max_retries=2) as patient:
        upload = patient.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    assert upload.id in fake.files
    assert [op for op, _ in fake.calls] == ["upload"] * 3


def test_timeout_fault_holds_the_request_past_the_client_timeout(fake, client):
    fake.configure(timeout_sleep=1.0)
    fake.inject("list", "timeout")
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.2).batches.list()
    assert client.batches.list().data == []


def test_disconnect_fault_closes_without_doing_the_work(fake, client):
    upload = client.files.create(file=("in.jsonl", jsonl([])), purpose="batch")
    fake.inject("create", "disconnect")
    with pytest.raises(openai.APIConnectionError):
        client.batches.create(input_file_id=upload.id, endpoint=CHAT, completion_window="24h")
    assert fake.batches == {}


def test_lost_response_fault_does_the_work_anyway(fake, client):
    fake.inject("upload", "lost_response")
    with pytest.raises(openai.APIConnectionError):
        client.files.create(file=("in.jsonl", jsonl([])), purpose="batch")
    [file_id] = fake.files

    fake.inject("create", "lost_response")
    with pytest.raises(openai.APIConnectionError):
        client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    assert len(fake.batches) == 1


def test_batches_list_newest_first_with_pagination(fake, client):
    upload = client.files.create(
        file=("in.jsonl", jsonl(request_lines(CHAT, [chat("a")]))), purpose="batch"
    )
    ids = [
        client.batches.create(input_file_id=upload.id, endpoint=CHAT, completion_window="24h").id
        for _ in range(5)
    ]
    newest_first = ids[::-1]

    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2] and page.has_more
    assert [b.id for b in client.batches.list(limit=2)] == newest_first  # auto-paging
    status, raw = raw_call(fake, "GET", f"/v1/batches?limit=2&after={newest_first[3]}")
    assert status == 200
    assert (raw["first_id"], raw["last_id"], raw["has_more"]) == (ids[0], ids[0], False)
    assert raw["data"][0]["status"] == "completed"  # listing observes the batches too
    with pytest.raises(openai.BadRequestError):
        client.batches.list(limit=101)


def test_files_list_filters_by_purpose(client):
    batch = client.batches.retrieve(submit(client, CHAT, [chat("a")]).id)
    outputs = client.files.list(purpose="batch_output")
    assert [f.id for f in outputs] == [batch.output_file_id]
    assert [f.id for f in client.files.list(purpose="batch")] == [batch.input_file_id]
    assert len(client.files.list().data) == 2


def test_file_delete_then_lookups_are_404(fake, client):
    upload = client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    assert client.files.content(upload.id).content == b"{}\n"

    deleted = client.files.delete(upload.id)

    assert (deleted.id, deleted.object, deleted.deleted) == (upload.id, "file", True)
    assert fake.files == {}
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(upload.id)


@pytest.mark.parametrize(
    "options",
    [
        {"endpoint": "/v1/audio/speech"},
        {"completion_window": "48h"},
        {"output_expires_after": {"anchor": "created_at", "seconds": 60}},
        {"metadata": {f"k{i}": "v" for i in range(17)}},
        {"metadata": {"k" * 65: "v"}},
        {"metadata": {"k": "v" * 513}},
    ],
)
def test_create_rejects_bad_parameters(client, options):
    upload = client.files.create(
        file=("in.jsonl", jsonl(request_lines(CHAT, [chat("a")]))), purpose="batch"
    )
    params = {"input_file_id": upload.id, "endpoint": CHAT, "completion_window": "24h"} | options
    with pytest.raises(openai.BadRequestError):
        client.batches.create(**params)


def test_create_with_unknown_file_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")


def test_upload_rejects_other_purposes(client):
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("in.jsonl", b"{}\n"), purpose="fine-tune")


def test_missing_api_key_is_401(fake):
    status, body = raw_call(fake, "GET", "/v1/batches", auth=False)
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_big_upload_is_read_in_one_go(client):
    content = jsonl(request_lines(CHAT, [chat("x" * 1000)])) * 20_000  # about 22 MB
    started = time.monotonic()
    upload = client.files.create(file=("big.jsonl", content), purpose="batch")
    assert time.monotonic() - started < 5
    assert upload.bytes == len(content)
    assert client.files.content(upload.id).content == content


def test_submitted_lines_and_calls_are_recorded(fake, client):
    batch = submit(client, CHAT, [chat("a"), chat("b")])
    client.batches.retrieve(batch.id)

    lines = fake.submitted_lines()
    assert [(line["custom_id"], line["batch_id"]) for line in lines] == [
        ("req-0", batch.id),
        ("req-1", batch.id),
    ]
    assert fake.calls == [
        ("upload", "/v1/files"),
        ("create", "/v1/batches"),
        ("retrieve", f"/v1/batches/{batch.id}"),
    ]


def test_control_endpoints_work_from_another_process(fake, client):
    assert (
        raw_call(fake, "POST", "/_fake/configure", {"expire_after_lines": 1}, auth=False)[0] == 200
    )
    assert raw_call(fake, "POST", "/_fake/configure", {"no_such_option": 1}, auth=False)[0] == 400
    batch = client.batches.retrieve(submit(client, CHAT, [chat("a"), chat("b")]).id)
    assert batch.status == "expired"

    body = {"operation": "retrieve", "fault": 503, "times": 1}
    assert raw_call(fake, "POST", "/_fake/inject", body, auth=False)[0] == 200
    with pytest.raises(openai.InternalServerError):
        client.batches.retrieve(batch.id)

    status, state = raw_call(fake, "GET", "/_fake/state", auth=False)
    assert status == 200
    assert list(state["batches"]) == [batch.id]
    assert len(state["files"]) == 3 and "content" not in state["files"][batch.input_file_id]
    assert len(state["submitted_lines"]) == 2
    assert state["calls"][-1] == ["retrieve", f"/v1/batches/{batch.id}"]

    assert raw_call(fake, "POST", "/_fake/reset", auth=False)[0] == 200
    assert fake.batches == {} and fake.calls == []


def test_main_serves_until_sigterm():
    root = Path(__file__).resolve().parents[1]
    env = os.environ | {"PYTHONPATH": str(root)}
    command = [sys.executable, "-m", "batchproxy.fakes.openai", "--port", "0"]
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().split(" on ")[1].split()[0]  # "Fake OpenAI API … on URL"
        with OpenAI(api_key="sk-test", base_url=url, max_retries=0) as sdk:
            assert sdk.batches.list().data == []
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.stdout.close()


EDITS = "/v1/images/edits"


def edit(prompt: str, model: str = "gpt-image-1", **fields) -> dict:
    return {"model": model, "prompt": prompt, "images": [{"image_url": "https://e/a.png"}]} | fields


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"model": "gpt-image-1", "prompt": "b", "image": "cat.png"}, "invalid_request"),
        (edit("b", images=[]), "invalid_request"),
        (edit("b", model="dall-e-2"), "invalid_request"),
        ({"model": "gpt-image-1", "images": [{"file_id": "file-1"}]}, "missing_required_parameter"),
        (edit("b", model="gpt-image-1-mini"), "mismatched_model"),
    ],
)
def test_image_edit_lines_must_be_the_json_form_of_one_model(client, body, code):
    lines = request_lines(EDITS, [edit("a"), body])
    batch = client.batches.retrieve(submit_lines(client, EDITS, lines).id)

    assert batch.status == "failed"
    assert (batch.errors.data[0].code, batch.errors.data[0].line) == (code, 2)


def test_image_answers_draw_the_prompt_in_the_spec_shape(client):
    lines = request_lines(EDITS, [edit("a hat", n=2)])
    batch = client.batches.retrieve(submit_lines(client, EDITS, lines).id)
    [line] = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    answer = ImagesResponse.model_validate(line["response"]["body"])

    assert len(answer.data) == 2 and answer.usage.input_tokens_details.image_tokens > 0
    assert (
        base64.b64decode(answer.data[0].b64_json) == PNG_MAGIC + b"echo: a hat on https://e/a.png"
    )
