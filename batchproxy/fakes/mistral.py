"""A fake of Mistral's Files and batch jobs API, served over real HTTP.

Built from Mistral's docs (docs.mistral.ai, "Batch inference"; the API reference's files and
batch sections) and the `mistralai` SDK's models (BatchJob, FileSchema, ListBatchJobsResponse):
- `POST /v1/files` (multipart `file`, `purpose: batch`) stores a JSONL file of
  `{"custom_id", "body"}` lines; `GET /v1/files` lists them a page at a time (`page`,
  `page_size`, `purpose`, `search`); `GET /v1/files/{id}/content` downloads one; `DELETE`
  removes it;
- `POST /v1/batch/jobs` (`input_files`, `endpoint`, `model`, `metadata`, `timeout_hours`)
  creates a job; its `status` goes `QUEUED`, `RUNNING`, then `SUCCESS` (one `step_seconds`
  each); `GET /v1/batch/jobs` lists jobs newest first, a page at a time; a cancel asks
  `CANCELLATION_REQUESTED`, and the job is `CANCELLED` when next seen;
- an ended job's `output_file` holds the answered requests and its `error_file` the failed
  ones, as `{"id", "custom_id", "response": {"status_code", "body"}, "error"}` lines, in an
  order that is not the input's;
- errors: `{"object": "error", "message", "type", "param", "code"}`.
With `expire_after` set, a job ends `TIMEOUT_EXCEEDED` with only its first N requests done.
Synchronous calls (`POST /v1/chat/completions`, `/v1/embeddings`) are answered at once, as their
batch line would be; `sync_calls` lists their bodies.
Answers echo the request ("echo: <text>") and honour the fake OpenAI's markers
(`[[status:400]]`, `[[error:server_error]]`). Faults: fakes/http.py's `inject`.

Run `python -m batchproxy.fakes.mistral --port 9492` to serve in the foreground.
"""

from __future__ import annotations

import copy
import json
import random
import re
import time
import uuid

from . import openai as fake_openai
from .http import (
    REFUSAL,
    REFUSE_MARKER,
    Call,
    JobServer,
    Refused,
    Reply,
    fake_main,
    jsonl,
)

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found"}


def _page(items: list, query: dict) -> dict:
    page, size = int(query.get("page", 0)), int(query.get("page_size", 100))
    return {"object": "list", "data": items[page * size : (page + 1) * size], "total": len(items)}


class FakeMistral(JobServer):
    execute = staticmethod(fake_openai._execute)
    routes = (
        ("POST", re.compile(r"/v1/files"), "upload"),
        ("GET", re.compile(r"/v1/files"), "list_files"),
        ("GET", re.compile(r"/v1/files/([^/]+)/content"), "download"),
        ("DELETE", re.compile(r"/v1/files/([^/]+)"), "delete"),
        ("POST", re.compile(r"/v1/batch/jobs"), "create"),
        ("GET", re.compile(r"/v1/batch/jobs"), "list"),
        ("GET", re.compile(r"/v1/batch/jobs/([^/]+)"), "retrieve"),
        ("POST", re.compile(r"/v1/batch/jobs/([^/]+)/cancel"), "cancel"),
        ("POST", re.compile(r"/v1/(chat/completions|embeddings)"), "sync"),
    )

    def reset(self) -> None:
        with self._lock:
            super().reset()
            self._files: dict[str, dict] = {}
            self._jobs: dict[str, dict] = {}
            self._lines: dict[str, list[dict]] = {}
            self.expire_after: int | None = None

    # -- views for tests -----------------------------------------------------------------------

    @property
    def files(self) -> dict[str, dict]:
        with self._lock:
            return {file_id: dict(found["object"]) for file_id, found in self._files.items()}

    # -- the server's own ----------------------------------------------------------------------

    def error(self, status: int, message: str) -> Reply:
        kind = ERROR_TYPES.get(status, "api_error")
        body = {"object": "error", "message": message, "type": kind, "param": None, "code": None}
        return Reply(status, body)

    def respond(self, call: Call) -> Reply:
        with self._lock:
            try:
                status, body = getattr(self, f"_{call.operation}")(call, *call.args)
            except Refused as exc:
                return self.error(exc.status, str(exc))
        if isinstance(body, bytes):
            return Reply(status, body, content_type="application/octet-stream")
        return Reply(status, body)

    # -- files ---------------------------------------------------------------------------------

    def _store(self, content: bytes, filename: str, sample_type: str, source: str) -> dict:
        obj = {
            "id": str(uuid.uuid4()),
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": "batch",
            "sample_type": sample_type,
            "source": source,
            "num_lines": content.count(b"\n"),
            "mimetype": "application/jsonl",
        }
        self._files[obj["id"]] = {"object": obj, "content": content}
        return obj

    def _file(self, file_id: str) -> dict:
        if file_id not in self._files:
            raise Refused(404, f"File {file_id} not found.")
        return self._files[file_id]

    def _upload(self, call: Call):
        try:
            fields = fake_openai._parse_multipart(call.headers.get("content-type", ""), call.raw)
        except fake_openai.ApiError as exc:
            raise Refused(400, str(exc)) from exc
        if "file" not in fields:
            raise Refused(400, "A file is required.")
        purpose = fields.get("purpose", (None, b""))[1].decode(errors="replace")
        if purpose != "batch":
            raise Refused(400, f"purpose must be batch for a batch input file, not {purpose!r}.")
        filename, content = fields["file"]
        return 200, self._store(content, filename or "upload.jsonl", "batch_request", "upload")

    def _list_files(self, call: Call):
        items = [found["object"] for found in reversed(self._files.values())]
        if purpose := call.query.get("purpose"):
            items = [item for item in items if item["purpose"] == purpose]
        if search := call.query.get("search"):
            items = [item for item in items if search in item["filename"]]
        return 200, _page(items, call.query)

    def _download(self, call: Call, file_id: str):
        return 200, self._file(file_id)["content"]

    def _delete(self, call: Call, file_id: str):
        self._file(file_id)
        del self._files[file_id]
        return 200, {"id": file_id, "object": "file", "deleted": True}

    # -- jobs ----------------------------------------------------------------------------------

    def _create(self, call: Call):
        try:
            params = call.json() or {}
        except ValueError as exc:
            raise Refused(400, "The body is not JSON.") from exc
        inputs, endpoint, model = (
            params.get("input_files"),
            params.get("endpoint"),
            params.get("model"),
        )
        if not isinstance(inputs, list) or not inputs or endpoint not in ENDPOINTS or not model:
            raise Refused(400, "input_files, a supported endpoint and model are required.")
        metadata = params.get("metadata") or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise Refused(400, "metadata holds string values.")
        lines = [line for file_id in inputs for line in self._lines_of(self._file(file_id))]
        if any(REFUSE_MARKER in json.dumps(line) for line in lines):
            raise Refused(400, REFUSAL)
        now = time.time()
        job = {
            "id": str(uuid.uuid4()),
            "object": "batch",
            "input_files": inputs,
            "metadata": metadata,
            "endpoint": endpoint,
            "model": model,
            "agent_id": None,
            "output_file": None,
            "error_file": None,
            "errors": [],
            "status": "QUEUED",
            "created_at": int(now),
            "total_requests": len(lines),
            "completed_requests": 0,
            "succeeded_requests": 0,
            "failed_requests": 0,
            "started_at": None,
            "completed_at": None,
            "_created": now,
            "_step": self.step_seconds,
            "_expire_after": self.expire_after,
            "_timeout": int(params.get("timeout_hours") or 24) * 3600,
        }
        self._jobs[job["id"]] = job
        self._lines[job["id"]] = lines
        return 200, self._view(job)

    @staticmethod
    def _lines_of(stored: dict) -> list[dict]:
        lines, seen = [], set()
        for number, raw in enumerate(stored["content"].splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError as exc:
                raise Refused(400, f"Line {number} is not JSON.") from exc
            custom_id = line.get("custom_id") if isinstance(line, dict) else None
            if not isinstance(custom_id, str) or custom_id in seen:
                raise Refused(400, f"Line {number}: custom_id must be a unique string.")
            if not isinstance(line.get("body"), dict):
                raise Refused(400, f"Line {number}: body must be an object.")
            seen.add(custom_id)
            lines.append(line)
        return lines

    def _job(self, job_id: str) -> dict:
        if job_id not in self._jobs:
            raise Refused(404, f"Batch job {job_id} not found.")
        return self._jobs[job_id]

    def _view(self, job: dict) -> dict:
        """The job as observed now: it moves on one `step_seconds` at a time."""
        elapsed = time.time() - job["_created"]
        if job["status"] == "CANCELLATION_REQUESTED":
            self._end(job, "CANCELLED", 0)
        if job["status"] == "QUEUED" and elapsed >= job["_step"]:
            job.update(status="RUNNING", started_at=int(time.time()))
        if job["status"] == "RUNNING" and elapsed >= 2 * job["_step"]:
            cap = job["_expire_after"]
            if cap is not None and cap < job["total_requests"]:
                self._end(job, "TIMEOUT_EXCEEDED", cap)
            else:
                self._end(job, "SUCCESS", None)
        return {k: v for k, v in copy.deepcopy(job).items() if not k.startswith("_")}

    def _end(self, job: dict, status: str, done: int | None) -> None:
        """Write the output and error files of the first `done` requests (all: None)."""
        results = []
        for line in self._lines[job["id"]][:done]:
            body = {"model": job["model"]} | line["body"]
            results.append(fake_openai._execute(job["endpoint"], line | {"body": body}))
        rng = random.Random(job["id"])
        for key, kind, ok in (
            ("output_file", "batch_result", True),
            ("error_file", "batch_error", False),
        ):
            chosen = [result.line for result in results if result.ok is ok]
            if chosen:
                rng.shuffle(chosen)  # never the input's order
                content = jsonl(chosen).encode()  # [[truncate]] lines cut in half
                name = f"{job['id']}_{kind}.jsonl"
                job[key] = self._store(content, name, kind, "mistral")["id"]
        succeeded = sum(result.ok for result in results)
        job.update(
            status=status,
            completed_requests=len(results),
            succeeded_requests=succeeded,
            failed_requests=len(results) - succeeded,
            completed_at=int(time.time()),
        )

    def _list(self, call: Call):
        jobs = [self._view(job) for job in reversed(self._jobs.values())]
        return 200, _page(jobs, call.query)

    def _retrieve(self, call: Call, job_id: str):
        return 200, self._view(self._job(job_id))

    def _cancel(self, call: Call, job_id: str):
        job = self._job(job_id)
        if self._view(job)["status"] in ("QUEUED", "RUNNING"):
            job["status"] = "CANCELLATION_REQUESTED"  # CANCELLED when next seen
        return 200, {k: v for k, v in copy.deepcopy(job).items() if not k.startswith("_")}


def main(argv=None) -> None:
    fake_main(FakeMistral, name="mistral", what="Mistral API", port=9492, argv=argv)


if __name__ == "__main__":
    main()
