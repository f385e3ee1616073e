"""Anthropic's Message Batches, through the official `anthropic` SDK.

A batch takes its requests inline (`create_inline`): there is no file to upload. What the
engine reads is normalised to OpenAI's shapes, so the engine stays one:
- a MessageBatch becomes `{id, status, output_file_id, request_counts, created_at}`, its
  `status` one of OpenAI's (`in_progress`, `cancelling`, `completed`, `expired`, `cancelled`);
- the batch's results (its `results_url`, read by the SDK with our key, never shown to a
  caller) are its "output file", named by the batch id; each result becomes an OpenAI output
  line: `succeeded` -> 200 with the Message, `errored` -> its HTTP status with Anthropic's error
  body; `canceled` and `expired` lines are left out, so the engine requeues them;
- deleting that "file" deletes the batch upstream (allowed once it has ended).
Anthropic batches carry no metadata: `find_batch` recognises an earlier, interrupted create by
its time and its number of requests, among the batches no other proxy batch has recorded.
"""

from collections.abc import Iterable, Iterator
from datetime import datetime
from functools import cache
from pathlib import Path

import anthropic
import httpx2
import orjson
from django.conf import settings

from ops_app.metrics import observe_upstream, upstream_observed

from .base import Transport, Upstream, UpstreamError, unreadable_line

# An errored result's error type -> the HTTP status Anthropic would have answered.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


@cache
def _client(base_url: str, api_key: str, max_retries: int, timeout: float) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key=api_key or "missing", base_url=base_url, timeout=timeout, max_retries=max_retries
    )


def _translate(exc: anthropic.AnthropicError) -> UpstreamError:
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        transient = status in (401, 403, 408, 409, 429) or status >= 500
        kind = (exc.body or {}).get("error", {}).get("type") if isinstance(exc.body, dict) else None
        code = kind or f"http_{status}"
        message = f"HTTP {status}: {exc.message}"
        return UpstreamError(message, permanent=not transient, code=code, status=status)
    if isinstance(exc, anthropic.APITimeoutError):
        return UpstreamError("timed out", permanent=False, code="timeout")
    if isinstance(exc, anthropic.APIConnectionError):
        return UpstreamError("connection error", permanent=False, code="connection_error")
    return UpstreamError(str(exc), permanent=False)


@observe_upstream
def _call(upstream: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except anthropic.AnthropicError as exc:
        raise _translate(exc) from exc


def _unix(value) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return value


def _normalised(batch) -> dict:
    """A MessageBatch in the shape the engine reads (OpenAI's Batch)."""
    counts = batch.request_counts
    status = {"in_progress": "in_progress", "canceling": "cancelling"}.get(batch.processing_status)
    if status is None:  # ended
        if batch.cancel_initiated_at:
            status = "cancelled"
        elif counts.expired:
            status = "expired"
        else:
            status = "completed"
    total = sum((counts.processing, counts.succeeded, counts.errored, counts.canceled))
    return {
        "id": batch.id,
        "status": status,
        "output_file_id": batch.id if batch.processing_status == "ended" else "",
        "error_file_id": "",
        "request_counts": {
            "total": total + counts.expired,
            "completed": counts.succeeded,
            "failed": counts.errored,
        },
        "created_at": _unix(batch.created_at),
    }


def _output_line(result: dict) -> str | None:
    """One result as an OpenAI output line; None for a request that never ran."""
    outcome = result["result"]
    if outcome["type"] == "succeeded":
        response = {"status_code": 200, "body": outcome["message"]}
    elif outcome["type"] == "errored":
        error = outcome.get("error") or {}
        kind = (error.get("error") or {}).get("type")
        response = {"status_code": ERROR_STATUS.get(kind, 500), "body": error}
    else:  # canceled, expired: left for the engine to requeue
        return None
    return orjson.dumps({"custom_id": result["custom_id"], "response": response}).decode()


def _result_line(raw: str) -> str | None:
    try:
        return _output_line(orjson.loads(raw))
    except (ValueError, KeyError, TypeError, AttributeError):
        return unreadable_line(raw, id_field="custom_id")


class AnthropicTransport(Transport):
    def __init__(self, upstream: Upstream, api_key: str):
        super().__init__(upstream)
        self._api_key = api_key

    def client(self, *, retries: bool = True) -> anthropic.Anthropic:
        return _client(
            self.upstream.base_url,
            self._api_key,
            settings.OPENAI_MAX_RETRIES if retries else 0,
            settings.OPENAI_TIMEOUT,
        )

    def _call(self, fn, *args, **kwargs):
        return _call(self.upstream.name, fn, *args, **kwargs)

    def upload_file(self, path: Path, filename: str) -> str:
        raise UpstreamError("Anthropic batches take their requests inline", permanent=True)

    def create_batch(self, **_) -> dict:
        raise UpstreamError("Anthropic batches take their requests inline", permanent=True)

    def takes_inline(self, input_bytes: int) -> bool:
        return True

    def create_inline(self, *, requests: Iterable[tuple[str, str]], **_) -> dict:
        """Create a batch of (custom_id, canonical JSON body) requests, never retried blindly."""
        items = [{"custom_id": str(pk), "params": orjson.loads(body)} for pk, body in requests]
        batches = self.client(retries=False).messages.batches
        return _normalised(self._call(batches.create, requests=items))

    def retrieve_batch(self, batch_id: str) -> dict:
        return _normalised(self._call(self.client().messages.batches.retrieve, batch_id))

    def cancel_batch(self, batch_id: str) -> dict:
        return _normalised(self._call(self.client().messages.batches.cancel, batch_id))

    def find_batch(
        self, *, key: str, value: str, attempted_at: float, request_count: int, known: frozenset
    ) -> dict | None:
        since = attempted_at - 60  # room for the clocks' difference; counts must match too
        page = self._call(self.client().messages.batches.list, limit=100)
        for batch in page.data:
            found = _normalised(batch)
            if found["created_at"] < since:
                break
            if found["id"] not in known and found["request_counts"]["total"] == request_count:
                return found
        return None

    def find_files(self, *, filename: str) -> Iterator[str]:
        return iter(())  # nothing is uploaded

    def iter_file_lines(self, file_id: str) -> Iterator[str]:
        """The batch's results as OpenAI output lines, streamed."""
        with upstream_observed("messages.batches.results", upstream=self.upstream.name):
            try:
                # The raw lines, not the SDK's decoder: one unreadable line must not end the
                # read of all the others (the decoder raises on it).
                decoder = self.client().messages.batches.results(file_id)
                try:
                    for raw in decoder.http_response.iter_lines():
                        if raw.strip() and (line := _result_line(raw)):
                            yield line
                finally:
                    decoder.close()
            except anthropic.AnthropicError as exc:
                raise _translate(exc) from exc
            except httpx2.HTTPError as exc:
                raise UpstreamError(f"download broken off: {exc!r}", permanent=False) from exc

    def delete_file(self, file_id: str) -> None:
        """Delete the batch (and its results) upstream."""
        with upstream_observed("messages.batches.delete", upstream=self.upstream.name):
            try:
                self.client().messages.batches.delete(file_id)
            except anthropic.NotFoundError:
                return
            except anthropic.AnthropicError as exc:
                raise _translate(exc) from exc
