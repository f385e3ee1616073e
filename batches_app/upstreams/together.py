"""Together's Batch API, through the OpenAI SDK's client (auth, timeouts, retries, errors).

OpenAI-shaped, with differences read from Together's OpenAPI spec (togethercomputer/openapi,
`/files/upload`, `/batches`) and docs.together.ai/docs/inference/batch:
- a file is uploaded to `POST /files/upload` with `file_name` and `purpose: batch-api`;
- `POST /batches` takes `input_file_id` and `endpoint` (no metadata, no expiry) and answers
  201 `{"job": {...}, "warning"}`; retrieve and cancel answer the job itself;
- a job's `status` is upper case (`VALIDATING`, `IN_PROGRESS`, `COMPLETED`, `FAILED`,
  `EXPIRED`, `CANCELLED`), its times ISO 8601, its failure one `error` string, with no counts;
- `GET /batches` answers a plain list, not a page;
- errors are `{"error": "message"}`.
Content (`GET /files/{id}/content`) and deletion (`DELETE /files/{id}`) are OpenAI's calls.
Without metadata, an interrupted create is found again by its input file: each batch uploads
one file, named after the proxy's batch (`find_batch`).
"""

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import openai

from .base import UpstreamError
from .openai import OpenAITransport

STATUSES = {
    "VALIDATING": "validating",
    "IN_PROGRESS": "in_progress",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "EXPIRED": "expired",
    "CANCELLED": "cancelled",
    "CANCELLING": "cancelling",
}


def _unix(value) -> int | None:
    if not value:
        return None
    try:
        return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def _batch(job: dict) -> dict:
    """A Together job in OpenAI's Batch shape, as the engine reads it."""
    status = STATUSES.get(str(job.get("status") or "").upper(), "in_progress")
    failure = job.get("error") if status == "failed" else None
    return {
        "id": job["id"],
        "object": "batch",
        "status": status,
        "endpoint": job.get("endpoint"),
        "model": job.get("model_id"),
        "input_file_id": job.get("input_file_id"),
        "output_file_id": job.get("output_file_id") or None,
        "error_file_id": job.get("error_file_id") or None,
        "created_at": _unix(job.get("created_at")),
        "completed_at": _unix(job.get("completed_at")),
        "errors": {"data": [{"code": "batch_failed", "message": str(failure)}]}
        if failure
        else None,
        "request_counts": None,
        "usage": None,
    }


class TogetherTransport(OpenAITransport):
    def _call(self, fn, *args, **kwargs):
        try:
            return super()._call(fn, *args, **kwargs)
        except UpstreamError as exc:
            cause = exc.__cause__
            if isinstance(cause, openai.APIStatusError) and isinstance(cause.body, str):
                # Together's `{"error": "message"}`: the SDK keeps the message as the body.
                message = f"HTTP {cause.status_code}: {cause.body}"
                raise UpstreamError(message, permanent=exc.permanent, code=exc.code) from cause
            raise

    def upload_file(self, path: Path, filename: str) -> str:
        form = {"purpose": "batch-api", "file_name": filename, "file_type": "jsonl"}
        with path.open("rb") as fh:
            created = self._call(
                self.client(retries=False).post,
                "/files/upload",
                body=form,
                files=[("file", (filename, fh))],
                options={"headers": {"Content-Type": "multipart/form-data"}},
                cast_to=object,
            )
        return created["id"]

    def create_batch(
        self, *, input_file_id: str, endpoint: str, model: str, metadata: dict[str, str]
    ) -> dict:
        created = self._call(
            self.client(retries=False).post,
            "/batches",
            body={"input_file_id": input_file_id, "endpoint": endpoint},
            cast_to=object,
        )
        return _batch(created["job"])

    def retrieve_batch(self, batch_id: str) -> dict:
        return _batch(self._call(self.client().get, f"/batches/{batch_id}", cast_to=object))

    def cancel_batch(self, batch_id: str) -> dict:
        job = self._call(self.client().post, f"/batches/{batch_id}/cancel", cast_to=object)
        return _batch(job)

    def list_batches(self, **_) -> Iterator[dict]:
        """Every batch, newest first (Together answers them all at once)."""
        jobs = self._call(self.client().get, "/batches", cast_to=object) or []
        batches = [_batch(job) for job in jobs]
        return iter(sorted(batches, key=lambda batch: -(batch["created_at"] or 0)))

    def find_batch(self, *, value: str, attempted_at: float, **_) -> dict | None:
        """The batch made from the input file this proxy batch uploaded (`value` is its id;
        the file is named as `Batch.input_filename` names it)."""
        inputs = set(self.find_files(filename=f"batchproxy-{value}.jsonl"))
        since = attempted_at - 3600  # room for the clocks' difference
        for found in self.list_batches():
            if found["input_file_id"] in inputs:
                return found
            if (found["created_at"] or 0) < since:
                break
        return None
