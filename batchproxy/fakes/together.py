"""A fake of Together's Batch API, served over real HTTP.

Built from Together's OpenAPI spec (togethercomputer/openapi: `/files/upload`, `/files`,
`/files/{id}/content`, `/batches`, `/batches/{id}`, `/batches/{id}/cancel`) and
docs.together.ai/docs/inference/batch: a JSONL file is uploaded with `purpose: batch-api` and a
`file_name`; a batch is created from it with `input_file_id` and `endpoint` and answers 201
`{"job": {...}, "warning"}`; a job's `status` goes `VALIDATING`, `IN_PROGRESS`, then
`COMPLETED` (one `step_seconds` each), with ISO 8601 times, `progress` and no counts; its output
and error files hold OpenAI's output lines (`custom_id`, `response`, `error`), in an order that
is not the input's. Limits: 50,000 requests and 100 MB per file. Errors: `{"error": "message"}`.

Synchronous calls (`POST /v1/chat/completions`, ...) are answered at once, as their batch
line would be; `sync_calls` lists their bodies.
Answers echo the request ("echo: <text>") and honour the fake OpenAI's markers
(`[[status:400]]`, `[[error:server_error]]`). With `expire_after` set, batches end `EXPIRED`
with only their first N requests answered. Faults: `inject(operation, 500 | 429 | "timeout" |
"disconnect" | "lost_response", times)` (fakes/http.py).

Run `python -m batchproxy.fakes.together --port 9491` to serve in the foreground.
"""

from __future__ import annotations

import copy
import json
import random
import re
import time
import uuid
from datetime import UTC, datetime

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

MAX_LINES = 50_000
MAX_BYTES = 100 * 1024 * 1024
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z") if ts else None


class FakeTogether(JobServer):
    execute = staticmethod(fake_openai._execute)
    routes = (
        ("POST", re.compile(r"/v1/files/upload"), "upload"),
        ("GET", re.compile(r"/v1/files"), "list_files"),
        ("GET", re.compile(r"/v1/files/([^/]+)/content"), "content"),
        ("DELETE", re.compile(r"/v1/files/([^/]+)"), "delete"),
        ("POST", re.compile(r"/v1/batches"), "create"),
        ("GET", re.compile(r"/v1/batches"), "list"),
        ("GET", re.compile(r"/v1/batches/([^/]+)"), "retrieve"),
        ("POST", re.compile(r"/v1/batches/([^/]+)/cancel"), "cancel"),
        ("POST", re.compile(r"/v1/(chat/completions|completions|embeddings)"), "sync"),
    )

    def reset(self) -> None:
        with self._lock:
            super().reset()
            self._files: dict[str, dict] = {}
            self._jobs: dict[str, dict] = {}
            self._lines: dict[str, list[dict]] = {}
            self.expire_after: int | None = None

    @property
    def url(self) -> str:
        return super().url + "/v1"

    # -- views for tests -----------------------------------------------------------------------

    @property
    def files(self) -> dict[str, dict]:
        with self._lock:
            return {file_id: dict(found["object"]) for file_id, found in self._files.items()}

    # -- the server's own ----------------------------------------------------------------------

    def error(self, status: int, message: str) -> Reply:
        return Reply(status, {"error": message})

    def respond(self, call: Call) -> Reply:
        with self._lock:
            try:
                status, body = getattr(self, f"_{call.operation}")(call, *call.args)
            except Refused as exc:
                return self.error(exc.status, str(exc))
        if isinstance(body, bytes):
            return Reply(status, body, content_type="application/octet-stream")
        return Reply(status, json.dumps(body).encode())  # a list is JSON here, not JSONL

    # -- files ---------------------------------------------------------------------------------

    def _store(self, content: bytes, filename: str, purpose: str) -> dict:
        obj = {
            "id": f"file-{uuid.uuid4()}",
            "object": "file",
            "created_at": int(time.time()),
            "filename": filename,
            "bytes": len(content),
            "purpose": purpose,
            "Processed": True,
            "FileType": "jsonl",
        }
        self._files[obj["id"]] = {"object": obj, "content": content}
        return obj

    def _file(self, file_id: str) -> dict:
        if file_id not in self._files:
            raise Refused(404, f"File {file_id} not found")
        return self._files[file_id]

    def _upload(self, call: Call):
        try:
            fields = fake_openai._parse_multipart(call.headers.get("content-type", ""), call.raw)
        except fake_openai.ApiError as exc:
            raise Refused(400, str(exc)) from exc
        text = {name: value.decode(errors="replace") for name, (_, value) in fields.items()}
        if "file" not in fields or not text.get("file_name"):
            raise Refused(400, "file and file_name are required")
        if text.get("purpose") != "batch-api":
            raise Refused(
                400, f"purpose must be batch-api for a batch file, not {text.get('purpose')!r}"
            )
        content = fields["file"][1]
        if len(content) > MAX_BYTES:
            raise Refused(400, "A batch input file holds at most 100 MB.")
        return 200, self._store(content, text["file_name"], "batch-api")

    def _list_files(self, call: Call):
        return 200, {"data": [found["object"] for found in reversed(self._files.values())]}

    def _content(self, call: Call, file_id: str):
        return 200, self._file(file_id)["content"]

    def _delete(self, call: Call, file_id: str):
        self._file(file_id)
        del self._files[file_id]
        return 200, {"id": file_id, "deleted": True}

    # -- batches -------------------------------------------------------------------------------

    def _create(self, call: Call):
        try:
            params = call.json() or {}
        except ValueError as exc:
            raise Refused(400, "The body is not JSON.") from exc
        if not params.get("input_file_id") or not params.get("endpoint"):
            raise Refused(400, "input_file_id and endpoint are required")
        if params["endpoint"] not in ENDPOINTS:
            raise Refused(400, f"Unsupported endpoint {params['endpoint']}")
        unknown = set(params) - {
            "input_file_id",
            "endpoint",
            "completion_window",
            "priority",
            "model_id",
        }
        if unknown:
            raise Refused(400, f"Unknown parameters: {', '.join(sorted(unknown))}")
        stored = self._file(params["input_file_id"])
        lines = self._lines_of(stored["content"])
        if any(REFUSE_MARKER in json.dumps(line) for line in lines):
            raise Refused(400, REFUSAL)
        now = time.time()
        job = {
            "id": str(uuid.uuid4()),
            "user_id": "user_fake",
            "input_file_id": params["input_file_id"],
            "file_size_bytes": len(stored["content"]),
            "status": "VALIDATING",
            "job_deadline": _iso(now + 86_400),
            "created_at": _iso(now),
            "endpoint": params["endpoint"],
            "progress": 0.0,
            "model_id": lines[0]["body"].get("model"),
            "output_file_id": None,
            "error_file_id": None,
            "error": None,
            "completed_at": None,
            "_created": now,
            "_step": self.step_seconds,
            "_expire_after": self.expire_after,
        }
        self._jobs[job["id"]] = job
        self._lines[job["id"]] = lines
        return 201, {"job": self._view(job), "warning": ""}

    @staticmethod
    def _lines_of(content: bytes) -> list[dict]:
        lines, seen = [], set()
        for number, raw in enumerate(content.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError as exc:
                raise Refused(400, f"Line {number} is not JSON.") from exc
            custom_id = line.get("custom_id") if isinstance(line, dict) else None
            if not isinstance(custom_id, str) or not 0 < len(custom_id) <= 64 or custom_id in seen:
                raise Refused(400, f"Line {number}: custom_id must be unique, 1 to 64 characters.")
            if not isinstance(line.get("body"), dict):
                raise Refused(400, f"Line {number}: body must be an object.")
            seen.add(custom_id)
            lines.append(line)
        if not lines or len(lines) > MAX_LINES:
            raise Refused(400, f"A batch holds 1 to {MAX_LINES} requests.")
        return lines

    def _job(self, job_id: str) -> dict:
        if job_id not in self._jobs:
            raise Refused(404, f"Batch job {job_id} not found")
        return self._jobs[job_id]

    def _view(self, job: dict) -> dict:
        """The job as observed now: it moves on one `step_seconds` at a time."""
        elapsed = time.time() - job["_created"]
        if job["status"] == "VALIDATING" and elapsed >= job["_step"]:
            job["status"] = "IN_PROGRESS"
        if job["status"] == "IN_PROGRESS" and elapsed >= 2 * job["_step"]:
            cap = job["_expire_after"]
            if cap is not None and cap < len(self._lines[job["id"]]):
                self._end(job, "EXPIRED", cap)
            else:
                self._end(job, "COMPLETED", None)
        return {k: v for k, v in copy.deepcopy(job).items() if not k.startswith("_")}

    def _end(self, job: dict, status: str, done: int | None) -> None:
        """Write the output and error files of the first `done` requests (all: None)."""
        lines = self._lines[job["id"]][:done]
        results = [fake_openai._execute(job["endpoint"], line) for line in lines]
        rng = random.Random(job["id"])
        for key, kind, ok in (
            ("output_file_id", "output", True),
            ("error_file_id", "error", False),
        ):
            chosen = [result.line for result in results if result.ok is ok]
            if chosen:
                rng.shuffle(chosen)  # never the input's order
                content = jsonl(chosen).encode()  # [[truncate]] lines cut in half
                job[key] = self._store(content, f"{job['id']}-{kind}.jsonl", "batch-generated")[
                    "id"
                ]
        job.update(status=status, progress=100.0, completed_at=_iso(time.time()))

    def _list(self, call: Call):
        return 200, [self._view(job) for job in reversed(self._jobs.values())]

    def _retrieve(self, call: Call, job_id: str):
        return 200, self._view(self._job(job_id))

    def _cancel(self, call: Call, job_id: str):
        job = self._job(job_id)
        if self._view(job)["status"] in ("VALIDATING", "IN_PROGRESS"):
            job.update(status="CANCELLED", completed_at=_iso(time.time()))
        return 200, self._view(job)


def main(argv=None) -> None:
    fake_main(FakeTogether, name="together", what="Together API", port=9491, argv=argv)


if __name__ == "__main__":
    main()
