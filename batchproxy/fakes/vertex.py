"""A fake of Vertex AI's batch prediction jobs and of Cloud Storage's JSON API, over real HTTP.

Built from the Vertex AI REST reference (`projects.locations.batchPredictionJobs`: create, get,
list, cancel, delete), its "Batch inference from Cloud Storage" page and google-genai's
conversions (batches.py, vertexai=True), under `/v1` and `/v1beta1`:
- `POST …/projects/{p}/locations/{l}/batchPredictionJobs` with `displayName`, `model`
  (`publishers/google/models/…`), `inputConfig: {instancesFormat: "jsonl", gcsSource: {uris}}`
  and `outputConfig: {predictionsFormat: "jsonl", gcsDestination: {outputUriPrefix}}`; the
  input object holds `{"request": GenerateContentRequest}` lines. A job's `state` goes
  JOB_STATE_PENDING, _RUNNING, then _SUCCEEDED (one `step_seconds` each), and it writes
  `<prefix>prediction-model-<time>/predictions.jsonl`, each line `{"request", "response"}` or
  `{"request", "status": "Bad Request: {\"error\": {…}}"}`, in an order that is not the
  input's; `outputInfo.gcsOutputDirectory` names the folder. A job deleted is gone from `get`.
- Cloud Storage (in memory, any bucket): upload `POST /upload/storage/v1/b/{bucket}/o?
  uploadType=media&name=…`, list `GET /storage/v1/b/{bucket}/o?prefix=…`, download `GET
  /storage/v1/b/{bucket}/o/{object}?alt=media`, delete `DELETE …/o/{object}`.
- Synchronous calls, `POST …/publishers/google/models/{model}:generateContent` under a
  project and location or not (express mode), answered at once as a job would answer the
  request; with `X-Vertex-AI-LLM-Shared-Request-Type: flex` (Flex PayGo) at the flex tier,
  refused with 429 RESOURCE_EXHAUSTED while `refuse_flex` is set (`sync_calls` lists
  {"model", "service_tier", "refused", "path"}).
- Errors: `{"error": {"code", "message", "status"}}`. Every call needs a bearer token (any) or,
  in express mode, an `x-goog-api-key`.

Answers echo the request's text ("echo: <text>"). Markers: `[[status:400]]` fails that request
with that status, `[[truncate]]` cuts its line in half, `[[refuse]]` refuses the create (400).
With `expire_after=N` a job ends JOB_STATE_EXPIRED with its first N lines answered; with
`drop_labels` its predictions carry their requests without `labels` (a case Google's docs do
not rule out: batches_app/upstreams/vertex.py).
Faults: `inject(operation, 500 | 429 | "timeout" | "disconnect" | "lost_response", times)`.

Run `python -m batchproxy.fakes.vertex --port 9496` to serve in the foreground.
"""

from __future__ import annotations

import copy
import json
import random
import re
import time
from urllib.parse import unquote

from .gemini import GRPC, STATUS_MARKER, _error_body, _iso, _result, generate
from .http import REFUSAL, REFUSE_MARKER, Call, JobServer, Refused, Reply, fake_main, jsonl

V = r"/(?:v1|v1beta1)"
PARENT = V + r"/projects/([^/]+)/locations/([^/]+)/batchPredictionJobs"
OBJECTS = r"/storage/v1/b/([^/]+)/o"
GENERATE = V + r"/(?:projects/[^/]+/locations/[^/]+/)?publishers/google/models/([^/:]+)"
GENERATE += ":generateContent"
ENDED = ("JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED", "JOB_STATE_FAILED")
ENDED += ("JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED")
# Vertex's labels: keys and values of lowercase letters, digits, `_` and `-`, up to 63 each.
LABEL = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests"}


class FakeVertex(JobServer):
    routes = (
        ("POST", re.compile(PARENT), "create"),
        ("GET", re.compile(PARENT), "list"),
        ("GET", re.compile(PARENT + r"/([0-9]+)"), "retrieve"),
        ("POST", re.compile(PARENT + r"/([0-9]+):cancel"), "cancel"),
        ("DELETE", re.compile(PARENT + r"/([0-9]+)"), "delete"),
        ("POST", re.compile(r"/upload" + OBJECTS), "gcs_put"),
        ("GET", re.compile(OBJECTS), "gcs_list"),
        ("GET", re.compile(OBJECTS + r"/([^/]+)"), "gcs_get"),
        ("DELETE", re.compile(OBJECTS + r"/([^/]+)"), "gcs_delete"),
        ("POST", re.compile(GENERATE), "generate"),
    )
    options = (*JobServer.options, "expire_after", "refuse_flex", "drop_labels")

    def reset(self) -> None:
        with self._lock:
            super().reset()
            self._jobs: dict[str, dict] = {}
            self._deleted: dict[str, dict] = {}
            self._lines: dict[str, list[dict]] = {}
            self._objects: dict[tuple[str, str], bytes] = {}
            self.expire_after: int | None = None
            self.refuse_flex = False
            self.drop_labels = False

    # -- for tests ---------------------------------------------------------------------------------

    @property
    def objects(self) -> list[str]:
        """`gs://bucket/name` of every object stored now."""
        with self._lock:
            return [f"gs://{bucket}/{name}" for bucket, name in self._objects]

    @property
    def history(self) -> list[dict]:
        """Every job created, deleted ones too, as a client would see it now."""
        with self._lock:
            return [self._view(job) for job in (*self._jobs.values(), *self._deleted.values())]

    def submitted(self) -> list[dict]:
        """Every input line of every job created (deleted ones too), in order, each with the
        job's name (`job`)."""
        with self._lock:
            return [
                copy.deepcopy(line) | {"job": job["name"]}
                for job in sorted(
                    (*self._jobs.values(), *self._deleted.values()), key=lambda j: j["_created"]
                )
                for line in self._lines[job["name"]]
            ]

    # -- the server's own --------------------------------------------------------------------------

    def error(self, status: int, message: str) -> Reply:
        return Reply(status, _error_body(status, message))

    def key_of(self, headers: dict[str, str], query: dict[str, str]) -> str:
        return super().key_of(headers, query) or headers.get("x-goog-api-key", "")

    def respond(self, call: Call) -> Reply:
        with self._lock:
            if call.operation == "generate":
                flex = call.headers.get("x-vertex-ai-llm-shared-request-type") == "flex"
                reply = generate(self, call, "flex" if flex else "standard")
                self.sync_calls[-1]["path"] = call.path
                return reply
            try:
                if call.operation == "gcs_get" and call.query.get("alt") == "media":
                    data = self._read(call.args[0], unquote(call.args[1]))
                    return Reply(200, data, content_type="application/octet-stream")
                status, body = getattr(self, f"_{call.operation}")(call, *call.args)
            except Refused as exc:
                return self.error(exc.status, str(exc))
        return Reply(status, body)

    # -- Cloud Storage ---------------------------------------------------------------------------

    def _read(self, bucket: str, name: str) -> bytes:
        if (bucket, name) not in self._objects:
            raise Refused(404, f"No such object: {bucket}/{name}")
        return self._objects[(bucket, name)]

    def _resource(self, bucket: str, name: str) -> dict:
        size = len(self._objects[(bucket, name)])
        return {"kind": "storage#object", "bucket": bucket, "name": name, "size": str(size)}

    def _gcs_put(self, call: Call, bucket: str):
        name = call.query.get("name")
        if call.query.get("uploadType") != "media" or not name:
            raise Refused(400, "uploadType=media and a name are required.")
        self._objects[(bucket, name)] = call.raw
        return 200, self._resource(bucket, name)

    def _gcs_list(self, call: Call, bucket: str):
        prefix = call.query.get("prefix", "")
        names = sorted(n for b, n in self._objects if b == bucket and n.startswith(prefix))
        return 200, {"kind": "storage#objects", "items": [self._resource(bucket, n) for n in names]}

    def _gcs_get(self, call: Call, bucket: str, name: str):
        self._read(bucket, unquote(name))
        return 200, self._resource(bucket, unquote(name))

    def _gcs_delete(self, call: Call, bucket: str, name: str):
        self._read(bucket, unquote(name))
        del self._objects[(bucket, unquote(name))]
        return 204, b""

    @staticmethod
    def _split(uri: str) -> tuple[str, str]:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        return bucket, name

    # -- jobs --------------------------------------------------------------------------------------

    def _create(self, call: Call, project: str, location: str):
        try:
            params = call.json() or {}
            sources = params["inputConfig"]["gcsSource"]["uris"]
            prefix = params["outputConfig"]["gcsDestination"]["outputUriPrefix"]
            model = params["model"]
        except (ValueError, KeyError, TypeError) as exc:
            raise Refused(400, f"A job needs model, gcsSource and gcsDestination: {exc!r}") from exc
        if len(sources) != 1 or not str(sources[0]).startswith("gs://"):
            raise Refused(400, "One gs:// input is taken.")
        lines = []
        for number, raw in enumerate(self._read(*self._split(sources[0])).splitlines(), 1):
            try:
                line = json.loads(raw)
                assert isinstance(line["request"]["contents"], list)
                labels = line["request"].get("labels") or {}
                assert all(
                    LABEL.fullmatch(key) and LABEL_VALUE.fullmatch(str(value))
                    for key, value in labels.items()
                )
            except (ValueError, KeyError, TypeError, AssertionError) as exc:
                raise Refused(
                    400, f"Line {number} is no {{request: {{contents}}}} with valid labels."
                ) from exc
            lines.append(line)
        if not lines:
            raise Refused(400, "The input holds no requests.")
        if any(REFUSE_MARKER in json.dumps(line) for line in lines):
            raise Refused(400, REFUSAL)
        now = time.time()
        job_id = str(random.randrange(10**18, 10**19))
        name = f"projects/{project}/locations/{location}/batchPredictionJobs/{job_id}"
        job = {
            "name": name,
            "displayName": params.get("displayName") or f"job-{job_id}",
            "model": model,
            "inputConfig": params["inputConfig"],
            "outputConfig": params["outputConfig"],
            "state": "JOB_STATE_PENDING",
            "createTime": _iso(now),
            "updateTime": _iso(now),
            "_created": now,
            "_step": self.step_seconds,
            "_expire_after": self.expire_after,
            "_prefix": prefix if prefix.endswith("/") else prefix + "/",
        }
        self._jobs[name] = job
        self._lines[name] = lines
        return 200, self._view(job)

    def _job(self, project: str, location: str, job_id: str) -> dict:
        name = f"projects/{project}/locations/{location}/batchPredictionJobs/{job_id}"
        if name not in self._jobs:
            raise Refused(404, f"The BatchPredictionJob {name} does not exist.")
        return self._jobs[name]

    def _view(self, job: dict) -> dict:
        """The job as observed now: it moves on one `step_seconds` at a time."""
        elapsed = time.time() - job["_created"]
        if job["state"] == "JOB_STATE_PENDING" and elapsed >= job["_step"]:
            job.update(state="JOB_STATE_RUNNING", startTime=_iso(time.time()))
        if job["state"] == "JOB_STATE_RUNNING" and elapsed >= 2 * job["_step"]:
            cap = job["_expire_after"]
            if cap is not None and cap < len(self._lines[job["name"]]):
                self._end(job, "JOB_STATE_EXPIRED", cap)
            else:
                self._end(job, "JOB_STATE_SUCCEEDED", None)
        return {k: v for k, v in copy.deepcopy(job).items() if not k.startswith("_")}

    def _end(self, job: dict, state: str, done: int | None) -> None:
        """Write the predictions of the first `done` lines (all: None)."""
        out, failed = [], 0
        model = job["model"].rsplit("/", 1)[-1]
        for line in self._lines[job["name"]][:done]:
            request = line["request"]
            if self.drop_labels:
                request = {k: v for k, v in request.items() if k != "labels"}
            if marker := STATUS_MARKER.search(json.dumps(request)):
                status = int(marker[1])
                error = {"code": status, "message": f"Injected {status}."}
                error["status"] = GRPC.get(status, (2, "UNKNOWN"))[1]
                reason = REASONS.get(status, "Internal Server Error")
                out.append(
                    {"request": request, "status": f"{reason}: {json.dumps({'error': error})}"}
                )
                failed += 1
            else:
                out.append({"request": request, "response": _result(request, model)["response"]})
        random.Random(job["name"]).shuffle(out)  # never the input's order
        folder = job["_prefix"] + f"prediction-model-{int(time.time() * 1000)}"
        if out:
            self._objects[self._split(folder + "/predictions.jsonl")] = jsonl(out).encode()
        job.update(
            state=state,
            endTime=_iso(time.time()),
            updateTime=_iso(time.time()),
            completionStats={
                "successfulCount": str(len(out) - failed),
                "failedCount": str(failed),
                "incompleteCount": str(len(self._lines[job["name"]]) - len(out)),
            },
            outputInfo={"gcsOutputDirectory": folder},
        )
        if state == "JOB_STATE_SUCCEEDED" and failed:
            job["state"] = "JOB_STATE_PARTIALLY_SUCCEEDED"

    def _list(self, call: Call, project: str, location: str):
        wanted = re.fullmatch(r'display_name="([^"]*)"', call.query.get("filter", ""))
        jobs = [
            self._view(job)
            for job in reversed(self._jobs.values())
            if wanted is None or job["displayName"] == wanted[1]
        ]
        return 200, {"batchPredictionJobs": jobs[: int(call.query.get("pageSize") or 100)]}

    def _retrieve(self, call: Call, project: str, location: str, job_id: str):
        return 200, self._view(self._job(project, location, job_id))

    def _cancel(self, call: Call, project: str, location: str, job_id: str):
        job = self._job(project, location, job_id)
        if self._view(job)["state"] not in ENDED:
            self._end(job, "JOB_STATE_CANCELLED", 0)
        return 200, {}

    def _delete(self, call: Call, project: str, location: str, job_id: str):
        job = self._job(project, location, job_id)
        if self._view(job)["state"] not in ENDED:
            raise Refused(400, "A running job cannot be deleted; cancel it first.")
        self._deleted[job["name"]] = self._jobs.pop(job["name"])
        operation = f"projects/{project}/locations/{location}/operations/{job_id}"
        return 200, {"name": operation, "done": True}


def main(argv=None) -> None:
    fake_main(FakeVertex, name="vertex", what="Vertex AI and Cloud Storage", port=9496, argv=argv)


if __name__ == "__main__":
    main()
