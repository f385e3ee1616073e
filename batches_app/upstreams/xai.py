"""xAI's Batch API, through its documented REST shape with the OpenAI SDK's HTTP client.

The official `xai-sdk` (1.x on PyPI) speaks gRPC only (`BatchMgmt`, `Files`), so the proxy makes
the REST calls of docs.x.ai's API reference through the OpenAI SDK's client (httpx underneath:
auth, timeouts, retries of reads, errors), with the field names of the SDK's `batch_pb2`
messages, whose JSON form the REST API speaks:
- the input is a JSONL file of OpenAI's batch lines, uploaded to `POST /v1/files` (multipart
  `file`; no purpose); `POST /v1/batches` with `name` and `input_file_id` makes a batch that
  loads the file's requests and is sealed;
- a batch has no status word: `state` counts `num_requests`, `num_pending`, `num_success`,
  `num_error`, `num_cancelled`, beside `create_time`, `expire_time`, `cancel_time` (and
  `cancel_by_xai_message` when xAI cancelled it); it has ended when nothing is pending;
- results are paged from `GET /v1/batches/{id}/results` (`limit`, `pagination_token`), each
  `{"batch_request_id", "batch_result": {"response": {"chat_get_completion": <completion>}}}`
  or, failed, `{"batch_request_id", "batch_result": {"error": {"code", "message"}}}` with a
  gRPC status code;
- `POST /v1/batches/{id}:cancel`; batches cannot be deleted (their results stay with xAI);
  the input file is deleted as OpenAI's are (`DELETE /v1/files/{id}`).
The batch is named after the proxy's batch, so an interrupted create is found again by name in
`GET /v1/batches` and never made twice; the file after its name (`find_files`).
"""

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson

from .base import METADATA_KEY, UpstreamError, unreadable_line
from .openai import OpenAITransport

ENDPOINT = "/v1/chat/completions"
# The results of a batch are no file: the engine's "output file" of an xAI batch names them.
RESULTS = "results-"
# gRPC status codes (google.rpc.Code) -> the HTTP status a caller's SDK gets.
GRPC_HTTP = {3: 400, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 11: 400, 12: 501, 16: 401}
# gRPC codes that say the upstream failed, not the request: retried as OpenAI's server_error.
GRPC_TRANSIENT = {1, 2, 4, 10, 13, 14, 15}


def _unix(value) -> int | None:
    if not value:
        return None
    try:
        return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def _status(batch: dict, now: float) -> str:
    state = batch.get("state") or {}
    pending = int(state.get("num_pending") or 0)
    if batch.get("cancel_time"):
        return "cancelling" if pending else "cancelled"
    if not int(state.get("num_requests") or 0):
        return "validating"  # the file's requests not loaded yet
    if pending:
        expired = (_unix(batch.get("expire_time")) or now + 1) <= now
        return "expired" if expired else "in_progress"
    if batch.get("cancel_by_xai_message"):
        return "failed"
    return "expired" if int(state.get("num_cancelled") or 0) else "completed"


def _batch(batch: dict) -> dict:
    """An xAI batch in OpenAI's Batch shape, as the engine reads it."""
    now = datetime.now(UTC).timestamp()
    status = _status(batch, now)
    state = batch.get("state") or {}
    ended = status in ("completed", "expired", "cancelled", "failed")
    message = batch.get("cancel_by_xai_message")
    return {
        "id": batch["batch_id"],
        "object": "batch",
        "status": status,
        "endpoint": ENDPOINT,
        "input_file_id": batch.get("input_file_id") or None,
        "output_file_id": f"{RESULTS}{batch['batch_id']}" if ended else None,
        "error_file_id": None,
        "created_at": _unix(batch.get("create_time")),
        "completed_at": int(now) if ended else None,
        "request_counts": {
            "total": int(state.get("num_requests") or 0),
            "completed": int(state.get("num_success") or 0),
            "failed": int(state.get("num_error") or 0),
        },
        "errors": {"data": [{"code": "batch_failed", "message": message}]} if message else None,
        "usage": None,
    }


def result_line(result: dict) -> str | None:
    """One result in OpenAI's output line shape: a completion is a 200 answer; a failure is the
    request's own error (an HTTP status from its gRPC code), or OpenAI's `server_error` line
    where xAI failed (retried by the usual rules)."""
    custom_id = result.get("batch_request_id") if isinstance(result, dict) else None
    if not isinstance(custom_id, str):
        return None
    outcome = result.get("batch_result") or {}
    chat = (outcome.get("response") or {}).get("chat_get_completion")
    error = outcome.get("error")
    if isinstance(chat, dict):
        line = {"custom_id": custom_id, "response": {"status_code": 200, "body": chat}}
    elif isinstance(error, dict):
        code, message = int(error.get("code") or 2), str(error.get("message") or "failed")
        if code in GRPC_TRANSIENT:
            failure = {"code": "server_error", "message": message}
            line = {"custom_id": custom_id, "response": None, "error": failure}
        else:
            status = GRPC_HTTP.get(code, 400)
            kind = "invalid_request_error" if status < 500 else "server_error"
            body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
            line = {"custom_id": custom_id, "response": {"status_code": status, "body": body}}
    else:
        return unreadable_line(orjson.dumps(result), id_field="batch_request_id")
    line.setdefault("error", None)
    return orjson.dumps(line).decode()


class XaiTransport(OpenAITransport):
    def offers_flex(self) -> bool:
        return False

    def upload_file(self, path: Path, filename: str) -> str:
        with path.open("rb") as fh:
            created = self._call(
                self.client(retries=False).post,
                "/files",
                body={},
                files=[("file", (filename, fh, "application/jsonl"))],
                options={"headers": {"Content-Type": "multipart/form-data"}},
                cast_to=object,
            )
        return created["id"]

    def create_batch(
        self, *, input_file_id: str, endpoint: str, model: str, metadata: dict[str, str]
    ) -> dict:
        if endpoint != ENDPOINT:
            message = f"the proxy sends xAI batches of {ENDPOINT} only, not {endpoint}"
            raise UpstreamError(message, permanent=True, code="unsupported_endpoint")
        body = {"name": f"batchproxy-{metadata[METADATA_KEY]}", "input_file_id": input_file_id}
        created = self._call(self.client(retries=False).post, "/batches", body=body, cast_to=object)
        return _batch(created)

    def retrieve_batch(self, batch_id: str) -> dict:
        return _batch(self._call(self.client().get, f"/batches/{batch_id}", cast_to=object))

    def cancel_batch(self, batch_id: str) -> dict:
        cancelled = self._call(self.client().post, f"/batches/{batch_id}:cancel", cast_to=object)
        return _batch(cancelled)

    def _pages(self, path: str, field: str, *, max_pages: int = 10_000) -> Iterator[dict]:
        """Every item of a paged list (`limit`, `pagination_token`)."""
        token = ""
        for _ in range(max_pages):
            query = {"limit": 100} | ({"pagination_token": token} if token else {})
            page = self._call(self.client().get, path, options={"params": query}, cast_to=object)
            yield from page.get(field) or []
            token = page.get("pagination_token") or ""
            if not token or not page.get(field):
                return

    def find_batch(self, *, value: str, attempted_at: float, **_) -> dict | None:
        """The batch named after this proxy batch, if an interrupted create made it; the list
        is newest first, so the search stops an hour before the attempt."""
        wanted, since = f"batchproxy-{value}", attempted_at - 3600
        for found in self._pages("/batches", "batches", max_pages=50):
            if found.get("name") == wanted:
                return _batch(found)
            if (_unix(found.get("create_time")) or 0) < since:
                break
        return None

    def find_files(self, *, filename: str) -> Iterator[str]:
        for found in self._pages("/files", "data", max_pages=100):
            if found.get("filename") == filename:
                yield found["id"]

    def iter_file_lines(self, file_id: str) -> Iterator[str]:
        """A batch's results, page by page, as OpenAI's output lines."""
        batch_id = file_id.removeprefix(RESULTS)
        for result in self._pages(f"/batches/{batch_id}/results", "results"):
            if line := result_line(result):
                yield line

    def delete_file(self, file_id: str) -> None:
        if file_id.startswith(RESULTS):
            return  # a batch's results: xAI deletes no batch
        super().delete_file(file_id)
