"""A fake of xAI's Files and Batch API, served over real HTTP.

Built from docs.x.ai (REST API reference: files, batches; the Batch API guide) and the official
`xai-sdk` (its `batch_pb2` messages, whose JSON form the REST API speaks): under `/v1`, a JSONL
file of OpenAI's batch lines (`custom_id`, `method`, `url`, `body`) is uploaded to
`POST /files` (multipart `file`, no purpose needed); `POST /batches` with `name` and
`input_file_id` makes a batch that loads the file's requests and is sealed; a batch has no
status word, only `state` counters (`num_requests`, `num_pending`, `num_success`,
`num_error`, `num_cancelled`) and times (`create_time`, `expire_time`, `cancel_time`);
`GET /batches` pages with `limit` and `pagination_token`; `POST /batches/{id}:cancel`
cancels what is pending; results are paged from `GET /batches/{id}/results` as
`{"batch_request_id", "batch_result": {"response": {"chat_get_completion": ...}}}` or, for a
failed request, `{"batch_request_id", "batch_result": {"error": {"code", "message"}}}` (gRPC
status codes). Batches cannot be deleted. Errors: `{"code", "error"}`.

A batch takes one `step_seconds` to load its requests (`num_requests` 0) and one more to
answer them. Answers echo the request ("echo: <text>") and honour the fake OpenAI's markers
(`[[status:400]]` answers gRPC INVALID_ARGUMENT, `[[error:server_error]]` INTERNAL,
`[[refuse]]` refuses the create, `[[truncate]]` leaves the result empty, as a broken one). With
`expire_after` set, batches pass their `expire_time` with only their first N requests answered
and the rest cancelled. Faults: `inject(operation, 500 | 429 | "timeout" | "disconnect" |
"lost_response", times)` (fakes/http.py).

Run `python -m batchproxy.fakes.xai --port 9494` to serve in the foreground.
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
    TRUNCATE_MARKER,
    Call,
    JobServer,
    Refused,
    Reply,
    fake_main,
)

ENDPOINT = "/v1/chat/completions"
MAX_BYTES = 25 * 1024 * 1024  # one add-requests payload; taken as the upload's limit too
# gRPC status codes (google.rpc.Code) for the failures the fake answers.
INVALID_ARGUMENT, INTERNAL = 3, 13
STATUS_WORDS = {400: "Client specified an invalid argument", 404: "Not found"}


def _rfc3339(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z") if ts else None


class FakeXai(JobServer):
    routes = (
        ("POST", re.compile(r"/v1/files"), "upload"),
        ("GET", re.compile(r"/v1/files"), "list_files"),
        ("DELETE", re.compile(r"/v1/files/([^/]+)"), "delete"),
        ("POST", re.compile(r"/v1/batches"), "create"),
        ("GET", re.compile(r"/v1/batches"), "list"),
        ("GET", re.compile(r"/v1/batches/([^/:]+)"), "retrieve"),
        ("POST", re.compile(r"/v1/batches/([^/:]+):cancel"), "cancel"),
        ("GET", re.compile(r"/v1/batches/([^/:]+)/results"), "results"),
    )

    def reset(self) -> None:
        with self._lock:
            super().reset()
            self._files: dict[str, dict] = {}
            self._jobs: dict[str, dict] = {}
            self._lines: dict[str, list[dict]] = {}
            self._answers: dict[str, list[dict]] = {}
            self.expire_after: int | None = None

    @property
    def url(self) -> str:
        return super().url + "/v1"

    # -- views for tests -----------------------------------------------------------------------

    @property
    def files(self) -> dict[str, dict]:
        with self._lock:
            return {file_id: dict(found["object"]) for file_id, found in self._files.items()}

    @staticmethod
    def status(batch: dict) -> str:
        """A batch's end in OpenAI's words, from its counters (xAI has no status word)."""
        state = batch["state"]
        if batch["cancel_time"]:
            return "cancelled" if not state["num_pending"] else "cancelling"
        if not state["num_requests"] or state["num_pending"]:
            return "in_progress"
        return "expired" if state["num_cancelled"] else "completed"

    # -- the server's own ----------------------------------------------------------------------

    def error(self, status: int, message: str) -> Reply:
        return Reply(status, {"code": STATUS_WORDS.get(status, f"HTTP {status}"), "error": message})

    def respond(self, call: Call) -> Reply:
        with self._lock:
            try:
                status, body = getattr(self, f"_{call.operation}")(call, *call.args)
            except Refused as exc:
                return self.error(exc.status, str(exc))
        return Reply(status, json.dumps(body).encode())

    # -- files ---------------------------------------------------------------------------------

    def _upload(self, call: Call):
        try:
            fields = fake_openai._parse_multipart(call.headers.get("content-type", ""), call.raw)
        except fake_openai.ApiError as exc:
            raise Refused(400, str(exc)) from exc
        if "file" not in fields:
            raise Refused(400, "file is required")
        filename, content = fields["file"]
        if len(content) > MAX_BYTES:
            raise Refused(400, "The file is too large.")
        obj = {
            "id": f"file_{uuid.uuid4()}",
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename or "upload.jsonl",
            "purpose": "",
        }
        self._files[obj["id"]] = {"object": obj, "content": content}
        return 200, obj

    def _list_files(self, call: Call):
        found = [stored["object"] for stored in reversed(self._files.values())]
        size = int(call.query.get("limit") or 100)
        start = int(call.query.get("pagination_token") or 0)
        page = {"data": found[start : start + size]}
        if start + size < len(found):
            page["pagination_token"] = str(start + size)
        return 200, page

    def _delete(self, call: Call, file_id: str):
        if file_id not in self._files:
            raise Refused(404, f"File {file_id} not found")
        del self._files[file_id]
        return 200, {"id": file_id, "object": "file", "deleted": True}

    # -- batches -------------------------------------------------------------------------------

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
            if not isinstance(custom_id, str) or not custom_id or custom_id in seen:
                raise Refused(400, f"Line {number}: custom_id must be unique.")
            if line.get("url") != ENDPOINT or not isinstance(line.get("body"), dict):
                raise Refused(400, f"Line {number}: a chat completion request is expected.")
            seen.add(custom_id)
            lines.append(line)
        if not lines:
            raise Refused(400, "The file holds no requests.")
        return lines

    def _create(self, call: Call):
        try:
            params = call.json() or {}
        except ValueError as exc:
            raise Refused(400, "The body is not JSON.") from exc
        if not isinstance(params.get("name"), str) or not params["name"]:
            raise Refused(400, "name is required")
        if set(params) - {"name", "input_file_id"}:
            raise Refused(400, f"Unknown fields: {sorted(set(params) - {'name', 'input_file_id'})}")
        lines = []
        if params.get("input_file_id"):
            if params["input_file_id"] not in self._files:
                raise Refused(404, f"File {params['input_file_id']} not found")
            lines = self._lines_of(self._files[params["input_file_id"]]["content"])
        if any(REFUSE_MARKER in json.dumps(line) for line in lines):
            raise Refused(400, REFUSAL)
        now = time.time()
        batch_id = f"batch_{uuid.uuid4()}"
        job = {
            "batch_id": batch_id,
            "name": params["name"],
            "create_time": _rfc3339(now),
            "expire_time": _rfc3339(now + 86_400),
            "create_api_key_id": "fake-key-id",
            "cancel_time": None,
            "cancel_by_xai_message": "",
            "input_file_id": params.get("input_file_id", ""),
            "state": {
                "num_requests": 0,
                "num_pending": 0,
                "num_success": 0,
                "num_error": 0,
                "num_cancelled": 0,
            },
            "_created": now,
            "_step": self.step_seconds,
            "_expire_after": self.expire_after,
        }
        self._jobs[batch_id] = job
        self._lines[batch_id] = lines
        self._answers[batch_id] = []
        return 200, self._view(job)

    def _job(self, batch_id: str) -> dict:
        if batch_id not in self._jobs:
            raise Refused(404, f"Batch {batch_id} not found")
        return self._jobs[batch_id]

    def _view(self, job: dict) -> dict:
        """The batch as observed now: it loads its file after one `step_seconds` and answers
        its requests after another."""
        elapsed = time.time() - job["_created"]
        state, lines = job["state"], self._lines[job["batch_id"]]
        if not state["num_requests"] and not job["cancel_time"] and elapsed >= job["_step"]:
            state.update(num_requests=len(lines), num_pending=len(lines))
        if state["num_pending"] and not job["cancel_time"] and elapsed >= 2 * job["_step"]:
            cap = job["_expire_after"]
            self._answer(job, lines[:cap] if cap is not None else lines)
            if state["num_pending"]:  # past its expiry: the rest are not answered
                job["expire_time"] = _rfc3339(time.time())
                state.update(num_cancelled=state["num_pending"], num_pending=0)
        return {k: v for k, v in copy.deepcopy(job).items() if not k.startswith("_")}

    def _answer(self, job: dict, lines: list[dict]) -> None:
        results = []
        for line in lines:
            outcome = fake_openai._execute(ENDPOINT, line).line
            result = {"batch_request_id": line["custom_id"]}
            response = outcome.get("response") or {}
            if TRUNCATE_MARKER in json.dumps(line):
                result["batch_result"] = {}  # a result broken upstream: nothing to read
            elif outcome.get("error"):
                error = {"code": INTERNAL, "message": outcome["error"]["message"]}
                result["batch_result"] = {"error": error}
            elif response.get("status_code") != 200:
                message = response["body"]["error"]["message"]
                result["batch_result"] = {"error": {"code": INVALID_ARGUMENT, "message": message}}
            else:
                chat = response["body"]
                result["batch_result"] = {"response": {"chat_get_completion": chat}}
            results.append(result)
        random.Random(job["batch_id"]).shuffle(results)  # never the input's order
        self._answers[job["batch_id"]] = results
        ok = sum("response" in result["batch_result"] for result in results)
        job["state"].update(
            num_pending=job["state"]["num_pending"] - len(results),
            num_success=ok,
            num_error=len(results) - ok,
        )

    def _list(self, call: Call):
        batches = [self._view(job) for job in reversed(self._jobs.values())]
        size = int(call.query.get("limit") or 100)
        start = int(call.query.get("pagination_token") or 0)
        page = {"batches": batches[start : start + size]}
        if start + size < len(batches):
            page["pagination_token"] = str(start + size)
        return 200, page

    def _retrieve(self, call: Call, batch_id: str):
        return 200, self._view(self._job(batch_id))

    def _cancel(self, call: Call, batch_id: str):
        job = self._job(batch_id)
        view = self._view(job)
        if not job["cancel_time"] and (view["state"]["num_pending"] or not self._answers[batch_id]):
            pending = job["state"]["num_pending"] or len(self._lines[batch_id])
            job["state"].update(num_requests=len(self._lines[batch_id]), num_pending=0)
            job["state"]["num_cancelled"] = pending
            job["cancel_time"] = _rfc3339(time.time())
        return 200, self._view(job)

    def _results(self, call: Call, batch_id: str):
        self._view(self._job(batch_id))
        results = self._answers[batch_id]
        size = int(call.query.get("limit") or 100)
        start = int(call.query.get("pagination_token") or 0)
        page = {"results": results[start : start + size]}
        if start + size < len(results):
            page["pagination_token"] = str(start + size)
        return 200, page


def main(argv=None) -> None:
    fake_main(FakeXai, name="xai", what="xAI API", port=9494, argv=argv)


if __name__ == "__main__":
    main()
