"""A fake of the Gemini API's batch jobs and File API, served over real HTTP.

The shapes are the wire's, as `google-genai` sends and reads them (batches.py, files.py,
_api_client.py), under both `/v1` and `/v1beta`:
- `POST /{v}/models/{model}:batchGenerateContent` with `{"batch": {"displayName", "inputConfig":
  {"requests": {"requests": [{"request", "metadata": {"key"}}]}} or {"fileName": "files/…"}}}`;
  the job is an operation `{name: "batches/…", metadata: {state, displayName, model, output, …},
  done}`. Its state goes `BATCH_STATE_PENDING`, `_RUNNING`, then `_SUCCEEDED`, one
  `step_seconds` each. An inline job's results come back inline (`output.inlinedResponses`, in
  input order, each with its request's `metadata`); a file job's as a JSONL file
  (`output.responsesFile`) of `{"key", "response"}` or `{"key", "error"}` lines.
- Files: the resumable upload (`POST /upload/{v}/files`, then `upload, finalize` at the URL
  given in `x-goog-upload-url`), `GET`, list, `DELETE` and `GET …:download?alt=media`.
- Errors: `{"error": {"code", "message", "status"}}`; a request's own error is a
  google.rpc.Status (`{"code": <gRPC code>, "message"}`).

Answers echo the request's text ("echo: <text>"). A marker in the text asks for an outcome:
    [[status:400]]   that request fails with that HTTP status's gRPC code
    [[truncate]]     a file job's result line for it is cut in half
    [[refuse]]       the create of a job holding it is refused (HTTP 400)
With `expire_after=N` a job ends `BATCH_STATE_EXPIRED` with only its first N results;
`fail_batches=K` makes the next K jobs end `BATCH_STATE_FAILED` with no results.
Synchronous calls (`POST /{v}/models/{model}:generateContent`) are answered at once with the
response a job would give; `serviceTier: "flex"` is honoured, and refused with 429
RESOURCE_EXHAUSTED while `refuse_flex` is set (`sync_calls` lists {"model", "service_tier",
"refused"}); a large `step_seconds` holds jobs unfinished meanwhile. `configure(...)` or
`POST /_fake/configure` sets `step_seconds`, `expire_after`, `fail_batches`, `refuse_flex`,
`timeout_sleep` (fakes/http.py).
Faults: `inject(operation, 500 | 429 | "timeout" | "disconnect" | "lost_response", times)`
(fakes/http.py). An upload is two operations: `upload_start` opens the session, `upload` sends
the bytes and makes the file.

Run `python -m batchproxy.fakes.gemini --port 9490 --step-seconds 1` to serve in the foreground.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import time
import uuid
from datetime import UTC, datetime

from .http import REFUSAL, REFUSE_MARKER, Call, FakeServer, Reply, jsonl, serve_until_signalled

# HTTP status -> (gRPC code, its name), as Google's APIs map them.
GRPC = {
    400: (3, "INVALID_ARGUMENT"),
    401: (16, "UNAUTHENTICATED"),
    403: (7, "PERMISSION_DENIED"),
    404: (5, "NOT_FOUND"),
    409: (10, "ABORTED"),
    429: (8, "RESOURCE_EXHAUSTED"),
    500: (13, "INTERNAL"),
    503: (14, "UNAVAILABLE"),
    504: (4, "DEADLINE_EXCEEDED"),
}
STATUS_MARKER = re.compile(r"\[\[status:(\d{3})\]\]")
V = r"/(?:v1|v1beta)"
ENDED = ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED")
ENDED += ("BATCH_STATE_EXPIRED",)


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z") if ts else None


def _error_body(status: int, message: str) -> dict:
    return {
        "error": {"code": status, "message": message, "status": GRPC.get(status, (2, "UNKNOWN"))[1]}
    }


def _text(request: dict) -> str:
    parts = []
    for content in request.get("contents") or []:
        for part in content.get("parts") or [] if isinstance(content, dict) else []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
    return " ".join(parts)


def _result(request: dict, model: str) -> dict:
    """{"response": GenerateContentResponse} or {"error": google.rpc.Status}."""
    text = _text(request)
    if marker := STATUS_MARKER.search(text):
        status = int(marker.group(1))
        return {"error": {"code": GRPC.get(status, (2,))[0], "message": f"Injected {status}."}}
    answer = f"echo: {text}"
    prompt, written = -(-len(text) // 4), -(-len(answer) // 4)
    return {
        "response": {
            "candidates": [
                {
                    "content": {"parts": [{"text": answer}], "role": "model"},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": prompt,
                "candidatesTokenCount": written,
                "totalTokenCount": prompt + written,
            },
            "modelVersion": model.removeprefix("models/"),
            "responseId": uuid.uuid4().hex[:20],
        }
    }


def generate(fake: FakeServer, call: Call, tier: str) -> Reply:
    """A synchronous generateContent at `tier`, answered as a job would answer the request
    (the model its route's last argument); flex refused (429) while `fake.refuse_flex`."""
    request, model = call.json() or {}, call.args[-1]
    refused = tier == "flex" and fake.refuse_flex
    fake.sync_calls.append({"model": model, "service_tier": tier, "refused": refused})
    if refused:
        return fake.error(429, "Flex capacity is exhausted; retry later or use standard.")
    result = _result(request, model)
    if "error" in result:
        code = result["error"]["code"]
        status = next((s for s, (c, _) in GRPC.items() if c == code), 500)
        return fake.error(status, result["error"]["message"])
    return Reply(200, result["response"])


class FakeGemini(FakeServer):
    routes = (
        ("POST", re.compile(V + r"/models/([^/:]+):batchGenerateContent"), "create"),
        ("GET", re.compile(V + r"/batches"), "list"),
        ("GET", re.compile(V + r"/batches/([^/:]+)"), "retrieve"),
        ("POST", re.compile(V + r"/batches/([^/:]+):cancel"), "cancel"),
        ("DELETE", re.compile(V + r"/batches/([^/:]+)"), "delete"),
        ("POST", re.compile(r"/upload" + V + r"/files"), "upload"),
        ("GET", re.compile(V + r"/files"), "files_list"),
        ("GET", re.compile(V + r"/files/([^/:]+)"), "file"),
        ("GET", re.compile(V + r"/files/([^/:]+):download"), "download"),
        ("DELETE", re.compile(V + r"/files/([^/:]+)"), "file_delete"),
        ("POST", re.compile(V + r"/models/([^/:]+):generateContent"), "generate"),
    )

    options = (*FakeServer.options, "expire_after", "fail_batches", "refuse_flex")

    def reset(self) -> None:
        with self._lock:
            super().reset()
            self._jobs: dict[str, dict] = {}
            self._deleted: dict[str, dict] = {}
            self._files: dict[str, dict] = {}
            self._uploads: dict[str, dict] = {}
            self._submitted: list[dict] = []
            self.expire_after: int | None = None
            self.fail_batches = 0
            self.refuse_flex = False
            self.sync_calls: list[dict] = []

    @property
    def jobs(self) -> list[dict]:
        """Every job as a client would see it now."""
        with self._lock:
            return [self._view(job) for job in self._jobs.values()]

    @property
    def history(self) -> list[dict]:
        """Every job created, deleted ones too, as a client would see it now."""
        with self._lock:
            return [self._view(job) for job in (*self._jobs.values(), *self._deleted.values())]

    @property
    def operations(self) -> tuple[str, ...]:
        return (*super().operations, "upload_start")

    def route(self, method: str, path: str, query: dict[str, str]) -> tuple[str, tuple[str, ...]]:
        operation, args = super().route(method, path, query)
        if operation == "upload" and "upload_id" not in query:
            return "upload_start", args  # the resumable upload's first call: no file yet
        return operation, args

    @property
    def files(self) -> list[dict]:
        with self._lock:
            return [self._file_view(f) for f in self._files.values()]

    def submitted(self) -> list[dict]:
        """Every request of every job created (deleted ones too), in order:
        {"key", "request", "metadata", "inline", "job"}."""
        with self._lock:
            return copy.deepcopy(self._submitted)

    def key_of(self, headers: dict[str, str], query: dict[str, str]) -> str:
        # An upload URL is its own credential, as Google's are: the SDK sends no key to it.
        return headers.get("x-goog-api-key") or ("upload-url" if "upload_id" in query else "")

    def error(self, status: int, message: str) -> Reply:
        return Reply(status, _error_body(status, message))

    def respond(self, call: Call) -> Reply:
        with self._lock:
            if call.operation in ("upload_start", "upload"):
                return self._upload(call)
            if call.operation == "generate":
                return self._generate(call)
            if call.operation == "download":
                found = self._files.get(call.args[0])
                if found is None:
                    return self.error(404, f"No file files/{call.args[0]}.")
                return Reply(200, found["_data"], content_type="application/octet-stream")
            return Reply(*self._answer(call))

    def _generate(self, call: Call) -> Reply:
        tier = str((call.json() or {}).get("serviceTier") or "standard").lower()
        return generate(self, call, tier)

    # -- jobs ----------------------------------------------------------------------------------

    def _view(self, job: dict) -> dict:
        """The job as observed now: running after one step, ended after two."""
        now = time.time()
        if job["_state"] not in ENDED:
            age = now - job["_created"]
            if age >= 2 * job["_step"]:
                self._end(job, now)
            elif age >= job["_step"]:
                job["_state"] = "BATCH_STATE_RUNNING"
        metadata = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch",
            "model": job["_model"],
            "displayName": job["_display_name"],
            "state": job["_state"],
            "createTime": _iso(job["_created"]),
            "updateTime": _iso(job.get("_ended") or job["_created"]),
            "batchStats": {"requestCount": str(len(job["_requests"]))},
        }
        if job.get("_ended"):
            metadata["endTime"] = _iso(job["_ended"])
        if "_output" in job:
            metadata["output"] = copy.deepcopy(job["_output"])
        view = {"name": job["name"], "metadata": metadata, "done": job["_state"] in ENDED}
        if job["_state"] == "BATCH_STATE_FAILED":
            view["error"] = {"code": 13, "message": "The batch job failed."}
        return view

    def _end(self, job: dict, now: float, *, cancelled: bool = False) -> None:
        requests = job["_requests"]
        done = len(requests)
        if cancelled:
            job["_state"], done = "BATCH_STATE_CANCELLED", 0
        elif job["_fail"]:
            job["_state"], done = "BATCH_STATE_FAILED", 0
        elif job["_expire_after"] is not None:
            job["_state"], done = "BATCH_STATE_EXPIRED", min(done, job["_expire_after"])
        else:
            job["_state"] = "BATCH_STATE_SUCCEEDED"
        job["_ended"] = now
        results = [
            {**_result(r["request"], job["_model"]), "key": r["key"]} for r in requests[:done]
        ]
        if job["_inline"]:
            inlined = [
                {k: v for k, v in r.items() if k != "key"}
                | ({"metadata": requests[n]["metadata"]} if requests[n]["metadata"] else {})
                for n, r in enumerate(results)
            ]
            job["_output"] = {"inlinedResponses": {"inlinedResponses": inlined}}
        elif done or job["_state"] == "BATCH_STATE_SUCCEEDED":
            data = jsonl(results).encode()
            name = self._file_add(f"{job['name']}-results", data, "application/jsonl")
            self._files[name]["_generated"] = True
            job["_output"] = {"responsesFile": f"files/{name}"}

    def _create(self, call: Call) -> tuple[int, dict]:
        batch = (call.json() or {}).get("batch") or {}
        source = batch.get("inputConfig") or {}
        model = f"models/{call.args[0]}"
        if "fileName" in source:
            requests = self._file_requests(source["fileName"])
            if isinstance(requests, str):
                return 400, _error_body(400, requests)
            inline = False
        else:
            items = (source.get("requests") or {}).get("requests")
            if not isinstance(items, list) or not items:
                return 400, _error_body(400, "inputConfig: requests or fileName is required.")
            if not all(isinstance(i, dict) and isinstance(i.get("request"), dict) for i in items):
                return 400, _error_body(400, "Each inlined request needs a 'request' object.")
            requests = [
                {
                    "key": (i.get("metadata") or {}).get("key"),
                    "request": i["request"],
                    "metadata": i.get("metadata"),
                }
                for i in items
            ]
            inline = True
        if any(REFUSE_MARKER in _text(r["request"]) for r in requests):
            return 400, _error_body(400, REFUSAL)
        now = time.time()
        name = f"batches/{uuid.uuid4().hex[:16]}"
        fail = self.fail_batches > 0
        self.fail_batches -= int(fail)
        self._jobs[name.split("/")[1]] = {
            "name": name,
            "_model": model,
            "_display_name": batch.get("displayName") or "",
            "_state": "BATCH_STATE_PENDING",
            "_created": now,
            "_step": self.step_seconds,
            "_expire_after": self.expire_after,
            "_fail": fail,
            "_inline": inline,
            "_requests": requests,
        }
        self._submitted += [r | {"inline": inline, "job": name} for r in requests]
        return 200, self._view(self._jobs[name.split("/")[1]])

    def _file_requests(self, file_name: str) -> list[dict] | str:
        found = self._files.get(file_name.removeprefix("files/"))
        if found is None:
            return f"inputConfig.fileName: no file {file_name}."
        requests = []
        for number, line in enumerate(found["_data"].decode().splitlines(), 1):
            try:
                item = json.loads(line)
            except ValueError:
                return f"Line {number} of {file_name} is not JSON."
            if not isinstance(item, dict) or not isinstance(item.get("request"), dict):
                return f"Line {number} of {file_name} needs a 'key' and a 'request' object."
            requests.append({"key": item.get("key"), "request": item["request"], "metadata": None})
        return requests or f"{file_name} is empty."

    def _answer(self, call: Call) -> tuple[int, dict]:
        operation = call.operation
        if operation == "create":
            return self._create(call)
        if operation == "list":
            jobs = sorted(self._jobs.values(), key=lambda j: -j["_created"])
            return self._page(call, [self._view(j) for j in jobs], "operations")
        if operation == "files_list":
            files = sorted(self._files.values(), key=lambda f: -f["_created"])
            return self._page(call, [self._file_view(f) for f in files], "files")
        if operation in ("file", "file_delete"):
            found = self._files.get(call.args[0])
            if found is None:
                return 404, _error_body(404, f"No file files/{call.args[0]}.")
            if operation == "file_delete":
                del self._files[call.args[0]]
                return 200, {}
            return 200, self._file_view(found)
        job = self._jobs.get(call.args[0])
        if job is None:
            return 404, _error_body(404, f"No batch batches/{call.args[0]}.")
        view = self._view(job)
        if operation == "retrieve":
            return 200, view
        if operation == "cancel":
            if not view["done"]:
                self._end(job, time.time(), cancelled=True)
            return 200, {}
        if not view["done"]:  # delete
            return 400, _error_body(400, "The batch is still running: cancel it first.")
        self._deleted[call.args[0]] = self._jobs.pop(call.args[0])
        return 200, {}

    def _page(self, call: Call, items: list[dict], field: str) -> tuple[int, dict]:
        start = int(call.query.get("pageToken") or 0)
        size = int(call.query.get("pageSize") or 50)
        body = {field: items[start : start + size]}
        if start + size < len(items):
            body["nextPageToken"] = str(start + size)
        return 200, body

    # -- files ---------------------------------------------------------------------------------

    def _file_add(self, display_name: str, data: bytes, mime_type: str) -> str:
        name = uuid.uuid4().hex[:12]
        self._files[name] = {
            "_name": name,
            "_display_name": display_name,
            "_mime_type": mime_type,
            "_data": data,
            "_created": time.time(),
        }
        return name

    def _file_view(self, found: dict) -> dict:
        view = {
            "name": f"files/{found['_name']}",
            "displayName": found["_display_name"],
            "mimeType": found["_mime_type"],
            "sizeBytes": str(len(found["_data"])),
            "createTime": _iso(found["_created"]),
            "state": "ACTIVE",
            "uri": f"{self.url}/v1beta/files/{found['_name']}",
        }
        if found.get("_generated"):
            view["source"] = "GENERATED"
            view["downloadUri"] = f"{self.url}/v1beta/files/{found['_name']}:download?alt=media"
        return view

    def _upload(self, call: Call) -> Reply:
        """The resumable protocol: `start` gives an upload URL; chunks follow; `finalize` ends."""
        command = call.headers.get("x-goog-upload-command", "")
        if "start" in command:
            upload_id = uuid.uuid4().hex
            meta = (call.json() or {}).get("file") or {}
            self._uploads[upload_id] = {"meta": meta, "data": b""}
            url = f"{self.url}{call.path}?upload_id={upload_id}"
            return Reply(200, {}, {"x-goog-upload-url": url, "x-goog-upload-status": "active"})
        upload = self._uploads.get(call.query.get("upload_id", ""))
        if upload is None:
            return self.error(404, "No such upload.")
        upload["data"] += call.raw
        if "finalize" not in command:
            return Reply(200, {}, {"x-goog-upload-status": "active"})
        del self._uploads[call.query["upload_id"]]
        meta = upload["meta"]
        # Proto JSON takes either spelling; the SDK sends the file's fields in snake_case.
        name = self._file_add(
            meta.get("displayName") or meta.get("display_name") or "",
            upload["data"],
            meta.get("mimeType") or meta.get("mime_type") or "",
        )
        view = self._file_view(self._files[name])
        return Reply(200, {"file": view}, {"x-goog-upload-status": "final"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9490)
    parser.add_argument("--step-seconds", type=float, default=1.0)
    args = parser.parse_args()
    fake = FakeGemini(args.host, args.port, step_seconds=args.step_seconds)
    serve_until_signalled(fake, f"Fake Gemini API (step_seconds={args.step_seconds})")


if __name__ == "__main__":
    main()
