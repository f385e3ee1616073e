"""A fake of Fireworks' datasets and batch inference jobs, served over real HTTP.

Built from docs.fireworks.ai (guides/batch-inference and the API reference: create-dataset,
upload-dataset-files, get-dataset-download-endpoint, create/get/list batch inference job):
under `/v1/accounts/{account}`, `POST /datasets` names a dataset (`datasetId`, state
`UPLOADING`), `POST /datasets/{id}:upload` takes its JSONL of `{"custom_id", "body"}` lines
(multipart `file`, up to 150 MB; the dataset turns `READY`), `POST /batchInferenceJobs?
batchInferenceJobId=…` runs a `model` over `inputDatasetId` into `outputDatasetId` (full
names); a job's `state` goes `JOB_STATE_VALIDATING`, `JOB_STATE_RUNNING`, then
`JOB_STATE_COMPLETED` (one `step_seconds` each), with RFC 3339 times and `jobProgress`. The
output dataset holds `results.jsonl` and `error.jsonl` (OpenAI's output lines, in an order that
is not the input's), read through the short-lived signed URLs of
`GET /datasets/{id}:getDownloadEndpoint` (`filenameToSignedUrls`). Errors are Google's
`{"error": {"code", "message", "status"}}`.

Synchronous chat completions (`POST /inference/v1/chat/completions`, the inference API) are
answered at once, as their batch line would be; `sync_calls` lists their bodies.
Answers echo the request ("echo: <text>") and honour the fake OpenAI's markers
(`[[status:400]]`, `[[error:server_error]]`, `[[truncate]]`). With `expire_after` set, jobs end
`JOB_STATE_EXPIRED` with only their first N requests answered. Faults: `inject(operation,
500 | 429 | "timeout" | "disconnect" | "lost_response", times)` (fakes/http.py).

Run `python -m batchproxy.fakes.fireworks --port 9493` to serve in the foreground.
"""

from __future__ import annotations

import copy
import json
import random
import re
import secrets
import time
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

ACCOUNT = "fake-account"
MAX_BYTES = 150 * 1024 * 1024  # the single-request upload's limit
ENDPOINT = "/v1/chat/completions"
ID = r"([a-z0-9][a-z0-9-]{0,62})"
STATUS_NAMES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}
# The key a signed URL's reads are recorded under (fakes/http.py counts a key per call).
SIGNED = "signed-url"


def _rfc3339(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z") if ts else None


class FakeFireworks(JobServer):
    execute = staticmethod(fake_openai._execute)
    routes = (
        ("POST", re.compile(rf"/v1/accounts/{ID}/datasets"), "create_dataset"),
        ("POST", re.compile(rf"/v1/accounts/{ID}/datasets/{ID}:upload"), "upload"),
        ("GET", re.compile(rf"/v1/accounts/{ID}/datasets/{ID}"), "get_dataset"),
        ("GET", re.compile(rf"/v1/accounts/{ID}/datasets/{ID}:getDownloadEndpoint"), "download"),
        ("DELETE", re.compile(rf"/v1/accounts/{ID}/datasets/{ID}"), "delete"),
        ("GET", re.compile(r"/signed/([^/]+)/([^/]+)"), "signed"),
        ("POST", re.compile(rf"/v1/accounts/{ID}/batchInferenceJobs"), "create"),
        ("GET", re.compile(rf"/v1/accounts/{ID}/batchInferenceJobs"), "list"),
        ("GET", re.compile(rf"/v1/accounts/{ID}/batchInferenceJobs/{ID}"), "retrieve"),
        ("POST", re.compile(rf"/v1/accounts/{ID}/batchInferenceJobs/{ID}:cancel"), "cancel"),
        ("POST", re.compile(r"/inference/v1/chat/completions"), "sync"),
    )

    def reset(self) -> None:
        with self._lock:
            super().reset()
            self._datasets: dict[str, dict] = {}
            self._jobs: dict[str, dict] = {}
            self._lines: dict[str, list[dict]] = {}
            self._signatures: dict[str, tuple[str, str]] = {}  # token -> (dataset, filename)
            self.expire_after: int | None = None

    @property
    def url(self) -> str:
        """The base URL an upstream is configured with: it names the account."""
        return f"{super().url}/v1/accounts/{ACCOUNT}"

    # -- views for tests -----------------------------------------------------------------------

    @property
    def datasets(self) -> dict[str, dict]:
        with self._lock:
            return {name: dict(found["object"]) for name, found in self._datasets.items()}

    # -- the server's own ----------------------------------------------------------------------

    def key_of(self, headers: dict[str, str], query: dict[str, str]) -> str:
        auth = headers.get("authorization", "")
        if auth.startswith("Bearer "):
            return auth.removeprefix("Bearer ")
        return SIGNED if query.get("signature") in self._signatures else ""

    def error(self, status: int, message: str) -> Reply:
        name = STATUS_NAMES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        return Reply(status, {"error": {"code": status, "message": message, "status": name}})

    def respond(self, call: Call) -> Reply:
        with self._lock:
            try:
                status, body = getattr(self, f"_{call.operation}")(call, *call.args)
            except Refused as exc:
                return self.error(exc.status, str(exc))
        if isinstance(body, bytes):
            return Reply(status, body, content_type="application/jsonl")
        return Reply(status, body)

    # -- datasets ------------------------------------------------------------------------------

    def _dataset(self, account: str, dataset: str) -> dict:
        if account != ACCOUNT or dataset not in self._datasets:
            raise Refused(404, f"Dataset accounts/{account}/datasets/{dataset} not found")
        return self._datasets[dataset]

    def _put_dataset(self, dataset: str, state: str, files: dict[str, bytes]) -> dict:
        obj = {
            "name": f"accounts/{ACCOUNT}/datasets/{dataset}",
            "createTime": _rfc3339(time.time()),
            "state": state,
            "userUploaded": {},
            "format": "CHAT",
        }
        self._datasets[dataset] = {"object": obj, "files": files}
        return obj

    def _create_dataset(self, call: Call, account: str):
        try:
            params = call.json() or {}
        except ValueError as exc:
            raise Refused(400, "The body is not JSON.") from exc
        dataset = str(params.get("datasetId") or "")
        if not re.fullmatch(ID, dataset) or not isinstance(params.get("dataset"), dict):
            raise Refused(400, "datasetId (lower case, digits, hyphens) and dataset are required")
        if account != ACCOUNT:
            raise Refused(404, f"Account {account} not found")
        if dataset in self._datasets:
            raise Refused(409, f"Dataset {dataset} already exists")
        return 200, self._put_dataset(dataset, "UPLOADING", {})

    def _upload(self, call: Call, account: str, dataset: str):
        stored = self._dataset(account, dataset)
        try:
            fields = fake_openai._parse_multipart(call.headers.get("content-type", ""), call.raw)
        except fake_openai.ApiError as exc:
            raise Refused(400, str(exc)) from exc
        if "file" not in fields:
            raise Refused(400, "file is required")
        filename, content = fields["file"]
        if len(content) > MAX_BYTES:
            raise Refused(400, "One upload holds at most 150 MB.")
        self._lines_of(content)  # refused here when malformed
        stored["files"] = {filename or "input.jsonl": content}
        stored["object"]["state"] = "READY"
        answer = {"id": dataset, "object": "file", "bytes": len(content), "filename": filename}
        return 200, answer | {"created_at": int(time.time()), "purpose": "batch"}

    def _get_dataset(self, call: Call, account: str, dataset: str):
        return 200, self._dataset(account, dataset)["object"]

    def _download(self, call: Call, account: str, dataset: str):
        stored = self._dataset(account, dataset)
        urls = {}
        for filename in stored["files"]:
            token = secrets.token_urlsafe(16)
            self._signatures[token] = (dataset, filename)
            base = super().url
            urls[filename] = f"{base}/signed/{dataset}/{filename}?signature={token}"
        return 200, {"filenameToSignedUrls": urls}

    def _signed(self, call: Call, dataset: str, filename: str):
        if self._signatures.get(call.query.get("signature", "")) != (dataset, filename):
            raise Refused(403, "The signature does not match.")
        if dataset not in self._datasets:
            raise Refused(404, "No such object.")
        return 200, self._datasets[dataset]["files"][filename]

    def _delete(self, call: Call, account: str, dataset: str):
        self._dataset(account, dataset)
        del self._datasets[dataset]
        return 200, {}

    # -- jobs ----------------------------------------------------------------------------------

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
            if not isinstance(line.get("body"), dict) or set(line) - {"custom_id", "body"}:
                raise Refused(400, f"Line {number}: a line is {{custom_id, body}}.")
            seen.add(custom_id)
            lines.append(line)
        if not lines:
            raise Refused(400, "The dataset holds no requests.")
        return lines

    def _create(self, call: Call, account: str):
        try:
            params = call.json() or {}
        except ValueError as exc:
            raise Refused(400, "The body is not JSON.") from exc
        job_id = call.query.get("batchInferenceJobId") or f"job-{secrets.token_hex(6)}"
        prefix = f"accounts/{ACCOUNT}/datasets/"
        source, target = params.get("inputDatasetId", ""), params.get("outputDatasetId", "")
        if not params.get("model") or not source.startswith(prefix):
            raise Refused(400, "model and inputDatasetId (accounts/…/datasets/…) are required")
        if target and not target.startswith(prefix):
            raise Refused(400, "outputDatasetId is a full dataset name")
        if not re.fullmatch(ID, job_id):
            raise Refused(400, "batchInferenceJobId: lower case, digits, hyphens")
        if job_id in self._jobs:
            raise Refused(409, f"Batch inference job {job_id} already exists")
        stored = self._dataset(account, source.removeprefix(prefix))
        if stored["object"]["state"] != "READY":
            raise Refused(400, "The input dataset is not READY.")
        lines = self._lines_of(b"".join(stored["files"].values()))
        if any(REFUSE_MARKER in json.dumps(line) for line in lines):
            raise Refused(400, REFUSAL)
        now = time.time()
        job = {
            "name": f"accounts/{ACCOUNT}/batchInferenceJobs/{job_id}",
            "displayName": params.get("displayName", ""),
            "createTime": _rfc3339(now),
            "updateTime": _rfc3339(now),
            "createdBy": "fake@example.com",
            "state": "JOB_STATE_VALIDATING",
            "status": {"code": "OK", "message": ""},
            "model": params["model"],
            "inputDatasetId": source,
            "outputDatasetId": target or f"{prefix}{job_id}-output",
            "jobProgress": {"percent": 0, "totalInputRequests": len(lines)},
            "_created": now,
            "_step": self.step_seconds,
            "_expire_after": self.expire_after,
        }
        self._jobs[job_id] = job
        self._lines[job_id] = lines
        return 200, self._view(job)

    def _job(self, account: str, job_id: str) -> dict:
        if account != ACCOUNT or job_id not in self._jobs:
            raise Refused(404, f"Batch inference job {job_id} not found")
        return self._jobs[job_id]

    def _view(self, job: dict) -> dict:
        """The job as observed now: it moves on one `step_seconds` at a time."""
        elapsed = time.time() - job["_created"]
        if job["state"] == "JOB_STATE_VALIDATING" and elapsed >= job["_step"]:
            job["state"] = "JOB_STATE_RUNNING"
        if job["state"] == "JOB_STATE_RUNNING" and elapsed >= 2 * job["_step"]:
            cap = job["_expire_after"]
            job_id = job["name"].rsplit("/", 1)[-1]
            if cap is not None and cap < len(self._lines[job_id]):
                self._end(job, "JOB_STATE_EXPIRED", cap)
            else:
                self._end(job, "JOB_STATE_COMPLETED", None)
        return {k: v for k, v in copy.deepcopy(job).items() if not k.startswith("_")}

    def _end(self, job: dict, state: str, done: int | None) -> None:
        """Write the output dataset of the first `done` requests (all: None)."""
        job_id = job["name"].rsplit("/", 1)[-1]
        results = [fake_openai._execute(ENDPOINT, line) for line in self._lines[job_id][:done]]
        rng = random.Random(job_id)
        files = {}
        for filename, ok in (("results.jsonl", True), ("error.jsonl", False)):
            chosen = [result.line for result in results if result.ok is ok]
            rng.shuffle(chosen)  # never the input's order
            files[filename] = jsonl(chosen).encode()
        self._put_dataset(job["outputDatasetId"].rsplit("/", 1)[-1], "READY", files)
        ok = sum(result.ok for result in results)
        job["jobProgress"] |= {
            "percent": 100,
            "totalProcessedRequests": len(results),
            "successfullyProcessedRequests": ok,
            "failedRequests": len(results) - ok,
        }
        job.update(state=state, updateTime=_rfc3339(time.time()))

    def _list(self, call: Call, account: str):
        jobs = [self._view(job) for job in reversed(self._jobs.values())]
        size = int(call.query.get("pageSize") or 50)
        start = int(call.query.get("pageToken") or 0)
        page = {"batchInferenceJobs": jobs[start : start + size], "totalSize": len(jobs)}
        if start + size < len(jobs):
            page["nextPageToken"] = str(start + size)
        return 200, page

    def _retrieve(self, call: Call, account: str, job_id: str):
        return 200, self._view(self._job(account, job_id))

    def _cancel(self, call: Call, account: str, job_id: str):
        job = self._job(account, job_id)
        if self._view(job)["state"] in ("JOB_STATE_VALIDATING", "JOB_STATE_RUNNING"):
            job.update(state="JOB_STATE_CANCELLED", updateTime=_rfc3339(time.time()))
        return 200, {}


def main(argv=None) -> None:
    fake_main(FakeFireworks, name="fireworks", what="Fireworks API", port=9493, argv=argv)


if __name__ == "__main__":
    main()
