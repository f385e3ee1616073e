"""Mistral's batch jobs, through the official `mistralai` SDK (`mistralai.client.Mistral`).

A JSONL file of `{"custom_id", "body"}` lines is uploaded (`files.upload`, purpose `batch`);
a job is created over it (`batch.jobs.create`: `input_files`, `endpoint`, `model`, `metadata`,
`timeout_hours` from the upstream's completion window); its `status` goes `QUEUED`, `RUNNING`,
then `SUCCESS`, `FAILED`, `TIMEOUT_EXCEEDED` or `CANCELLED` (`CANCELLATION_REQUESTED` between);
its `output_file` and `error_file` hold OpenAI's output lines (`custom_id`, `response`,
`error`). Jobs are read here in OpenAI's Batch shape, as the engine expects.

Synchronous sends (batches_app.tiers) go through the SDK's own calls, at the standard tier
(Mistral has no flex; `service_tier: "standard_only"` keeps a call off the dearer priority
capacity): `chat.complete` and `embeddings.create`, the endpoints its batches run. The body's
fields are the SDK's arguments (an OpenAI `input` is Mistral's `inputs`); a field the SDK does
not take cannot be sent this way, and the request is left to its batch (a permanent error).

The SDK retries nothing unless told to; a failed call is retried on a later tick, and calls
that create something (upload, create) are never retried blindly (base.Transport).
"""

from collections.abc import Iterator
from functools import cache
from pathlib import Path

import httpx2
import orjson
from django.conf import settings
from mistralai.client import Mistral, errors

from ops_app.metrics import observe_upstream, upstream_observed

from .base import SyncAnswer, Transport, Upstream, UpstreamError, retry_after_of

STATUSES = {
    "QUEUED": "validating",
    "RUNNING": "in_progress",
    "SUCCESS": "completed",
    "FAILED": "failed",
    "TIMEOUT_EXCEEDED": "expired",
    "CANCELLATION_REQUESTED": "cancelling",
    "CANCELLED": "cancelled",
}


@cache
def _client(server_url: str, api_key: str, timeout: float) -> Mistral:
    return Mistral(api_key=api_key, server_url=server_url, timeout_ms=int(timeout * 1000))


def _translate(exc: Exception) -> UpstreamError:
    if isinstance(exc, errors.MistralError):
        status = exc.status_code
        transient = status in (401, 403, 408, 409, 429) or status >= 500
        return UpstreamError(
            f"HTTP {status}: {exc.body[:500]}",
            permanent=not transient,
            code=f"http_{status}",
            status=status,
            retry_after=retry_after_of(exc.headers) if status == 429 else None,
        )
    if isinstance(exc, httpx2.TimeoutException):
        return UpstreamError("timed out", permanent=False, code="timeout")
    return UpstreamError(f"connection error: {exc!r}", permanent=False, code="connection_error")


FAILURES = (errors.MistralError, errors.NoResponseError, httpx2.HTTPError)


@observe_upstream  # latency and errors per upstream and operation, for /metrics
def _call(upstream: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except FAILURES as exc:
        raise _translate(exc) from exc


def _batch(job) -> dict:
    """A Mistral job in OpenAI's Batch shape."""
    status = STATUSES.get(str(job.status), "in_progress")
    failures = [{"code": "batch_failed", "message": e.message} for e in job.errors or []]
    return {
        "id": job.id,
        "object": "batch",
        "status": status,
        "endpoint": job.endpoint,
        "model": job.model or None,
        "input_file_id": (job.input_files or [None])[0],
        "output_file_id": job.output_file or None,
        "error_file_id": job.error_file or None,
        "created_at": job.created_at,
        "completed_at": job.completed_at or None,
        "metadata": job.metadata or {},
        "request_counts": {
            "total": job.total_requests,
            "completed": job.succeeded_requests,
            "failed": job.failed_requests,
        },
        "errors": {"data": failures} if status == "failed" and failures else None,
        "usage": None,
    }


class MistralTransport(Transport):
    def __init__(self, upstream: Upstream, api_key: str):
        super().__init__(upstream)
        self._api_key = api_key

    def client(self) -> Mistral:
        return _client(self.upstream.base_url, self._api_key, settings.OPENAI_TIMEOUT)

    def _call(self, fn, *args, **kwargs):
        return _call(self.upstream.name, fn, *args, **kwargs)

    SYNC = True
    # The proxy's endpoint: the SDK call, and the body fields it names otherwise.
    SENDS = {
        "/v1/chat/completions": ("chat.complete", {}),
        "/v1/embeddings": ("embeddings.create", {"input": "inputs"}),
    }

    @classmethod
    def offers_sync(cls, endpoint: str) -> bool:
        return endpoint in cls.SENDS

    def send(self, *, endpoint: str, body: str, tier: str, timeout: float) -> SyncAnswer:
        """One call of the SDK at the standard tier; the answer as Mistral's JSON."""
        if endpoint not in self.SENDS:
            raise UpstreamError(f"no synchronous {endpoint} on Mistral", permanent=True)
        method, renamed = self.SENDS[endpoint]
        kwargs = {renamed.get(k, k): v for k, v in orjson.loads(body).items()}
        if endpoint == "/v1/chat/completions":
            kwargs["service_tier"] = "standard_only"
        group, name = method.split(".")
        call = getattr(getattr(self.client(), group), name)
        try:
            with upstream_observed(f"sync.{tier}", upstream=self.upstream.name):
                answer = call(**kwargs, timeout_ms=int(timeout * 1000))
        except TypeError as exc:  # a body field the SDK does not take
            message = f"Mistral's SDK cannot send this body: {exc}"
            raise UpstreamError(message, permanent=True, code="sync_unsupported_body") from exc
        except errors.MistralError as exc:
            if exc.status_code in (401, 403, 429) or exc.status_code >= 500:
                raise _translate(exc) from exc
            return SyncAnswer(exc.status_code, exc.body)  # the request's own error
        except FAILURES as exc:
            raise _translate(exc) from exc
        return SyncAnswer(200, answer.model_dump_json(by_alias=True))

    def input_line(self, custom_id, endpoint: str, body: str) -> str:
        """Mistral's line: `{"custom_id", "body"}`; the job names the endpoint."""
        return f'{{"custom_id":"{custom_id}","body":{body}}}\n'

    def upload_file(self, path: Path, filename: str) -> str:
        with path.open("rb") as fh:
            upload = self.client().files.upload
            created = self._call(
                upload, file={"file_name": filename, "content": fh}, purpose="batch"
            )
        return created.id

    def create_batch(
        self, *, input_file_id: str, endpoint: str, model: str, metadata: dict[str, str]
    ) -> dict:
        from . import upstream_window, window_seconds

        job = self._call(
            self.client().batch.jobs.create,
            input_files=[input_file_id],
            endpoint=endpoint,
            model=model,
            metadata=metadata,
            timeout_hours=max(1, window_seconds(upstream_window(self.upstream)) // 3600),
        )
        return _batch(job)

    def retrieve_batch(self, batch_id: str) -> dict:
        return _batch(self._call(self.client().batch.jobs.get, job_id=batch_id))

    def cancel_batch(self, batch_id: str) -> dict:
        return _batch(self._call(self.client().batch.jobs.cancel, job_id=batch_id))

    def find_batch(self, *, key: str, value: str, attempted_at: float, **_) -> dict | None:
        since = attempted_at - 3600  # room for the clocks' difference
        for page in range(10):
            listed = self._call(self.client().batch.jobs.list, page=page, page_size=100)
            for job in listed.data or []:
                found = _batch(job)
                if found["metadata"].get(key) == value:
                    return found
                if found["created_at"] < since:
                    return None
            if len(listed.data or []) < 100:
                return None
        return None

    def find_files(self, *, filename: str) -> Iterator[str]:
        for page in range(100):
            listed = self._call(
                self.client().files.list, page=page, page_size=100, purpose="batch", search=filename
            )
            for item in listed.data:
                if item.filename == filename:
                    yield item.id
            if len(listed.data) < 100:
                return

    def iter_file_lines(self, file_id: str) -> Iterator[str]:
        """The lines of an output or error file, streamed."""
        with upstream_observed("files.download", upstream=self.upstream.name):
            try:
                response = self.client().files.download(file_id=file_id)
                try:
                    for line in response.iter_lines():
                        if line.strip():
                            yield line
                finally:
                    response.close()
            except FAILURES as exc:
                raise _translate(exc) from exc

    def delete_file(self, file_id: str) -> None:
        with upstream_observed("files.delete", upstream=self.upstream.name):
            try:
                self.client().files.delete(file_id=file_id)
            except errors.MistralError as exc:
                if exc.status_code != 404:  # one already gone counts as deleted
                    raise _translate(exc) from exc
            except FAILURES as exc:
                raise _translate(exc) from exc
