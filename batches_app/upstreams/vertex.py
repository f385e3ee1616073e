"""Vertex AI's batch prediction jobs over Cloud Storage, through `google-genai` (vertexai=True).

From the Vertex AI docs ("Batch inference from Cloud Storage", the REST reference of
`projects.locations.batchPredictionJobs`) and google-genai's own conversions (batches.py):
- the input is a JSONL object in Cloud Storage of `{"request": GenerateContentRequest}` lines;
  a job (`batches.create(model=…, src="gs://…", config={"dest": "gs://…"})`) runs one model
  over it and writes `predictions.jsonl` files under a folder of the destination prefix, each
  line `{"request": …, "response": GenerateContentResponse}` or `{"request": …, "status":
  "<the error>"}`, in an order that is not the input's;
- a job's state: JOB_STATE_PENDING, _QUEUED, _RUNNING, then _SUCCEEDED, _PARTIALLY_SUCCEEDED,
  _FAILED (its `error`), _CANCELLING, _CANCELLED or _EXPIRED (what was answered is written).
A result line names its request by the request itself, which it carries back: each request goes
with a label of ours (`labels.batchproxy_request` = our request id; `labels` is a field of
Vertex's GenerateContentRequest), so no line is matched by its place in the file. Unverified:
the docs show the output line's `request` but do not say that its `labels` are kept. A line
without our label names no request and is skipped; its request, left without a result, is
retried as `missing_result` and fails for good after MAX_ATTEMPTS jobs (never matched by place;
tests/test_vertex.py drives this with the fake's `drop_labels`).
A job's display name is `batchproxy-<our batch id>`: `find_batch` finds an interrupted create.
Cloud Storage is reached with plain authenticated HTTP (its JSON API: upload `uploadType=media`,
list, `alt=media` download, delete). Input objects and a job's whole output folder are deleted
once read, and the ended job itself (its "error file", as in gemini.py) with them.

Synchronous sends (a deadline the batch cannot meet, batches_app/tiers.py) are google-genai's
generate_content on the same project and location (gemini.generate_now). The flex tier is Vertex
AI's Flex PayGo (docs.cloud.google.com/vertex-ai/generative-ai/docs/flex-paygo: half the
standard price, some preview models, the `global` location only), asked for with the header
`X-Vertex-AI-LLM-Shared-Request-Type: flex` (google-genai's HttpOptions.headers, as that page's
example does); only models an operator lists in the FlexModel table (kind `vertex`) go flex.

An upstream names its place in UPSTREAM_<NAME>_PROJECT, _LOCATION (default us-central1) and
_GCS_URI (`gs://bucket/prefix`); BASE_URL is Vertex's endpoint (default: the location's) and
_STORAGE_URL Cloud Storage's (default https://storage.googleapis.com). Credentials are Google's
Application Default Credentials, or a fixed OAuth access token in _ACCESS_TOKEN; in a try-out,
a placeholder for the fake.
"""

import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from urllib.parse import quote

import httpx2
import orjson
import requests
from django.conf import settings
from google import genai
from google.genai import errors, types

from ops_app.metrics import upstream_observed

from .base import METADATA_KEY, SyncAnswer, Transport, Upstream, UpstreamError, unreadable_line
from .gemini import DISPLAY_PREFIX, STATES, _translate, generate_now

API_VERSION = "v1"
LABEL = "batchproxy_request"  # the label that carries our request id through the job
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
STORAGE_URL = "https://storage.googleapis.com"
WITH_OUTPUT = ("completed", "cancelled", "expired")
# A try-out's fake Vertex (batchproxy/fakes/vertex.py): its project, bucket and storage.
TRY_OUT_PLACE = {
    "PROJECT": "batchproxy-try-out",
    "LOCATION": "us-central1",
    "GCS_URI": "gs://batchproxy-fake/batches",
    "STORAGE_URL": "{url}",
    "ACCESS_TOKEN": "fake-vertex",
}
SDK_ERRORS = (errors.APIError, httpx2.HTTPError)
# Flex PayGo's request header (Vertex AI, "Flex PayGo"): flex capacity, at half the price.
FLEX_HEADERS = {"X-Vertex-AI-LLM-Shared-Request-Type": "flex"}


def _status_error(status: str) -> tuple[int, dict]:
    """A result line's `status` as the HTTP status and Google error body its caller gets: the
    error object it holds (`… {"error": {"code", "message", "status"}}`), else a 500."""
    start = status.find("{")
    try:
        error = orjson.loads(status[start:])["error"] if start >= 0 else None
        code = int(error["code"])
    except (ValueError, KeyError, TypeError):
        error, code = None, 500
    body = {
        "error": {
            "code": code,
            "message": str((error or {}).get("message") or status)[:2000],
            "status": str((error or {}).get("status") or "INTERNAL"),
        }
    }
    return code, body


def result_line(raw: bytes) -> str | None:
    """A predictions line in OpenAI's output line shape; a 429 or 5xx of a request is
    `server_error` (retried), another error its caller's answer."""
    try:
        item = orjson.loads(raw)
        custom_id = item["request"]["labels"][LABEL]
    except (ValueError, KeyError, TypeError):
        return unreadable_line(raw, id_field=LABEL)
    response, status = item.get("response"), item.get("status")
    if isinstance(response, dict) and not status:
        line = {"custom_id": custom_id, "response": {"status_code": 200, "body": response}}
    else:
        code, body = _status_error(str(status or "no response"))
        if code == 429 or code >= 500:
            failure = {"code": "server_error", "message": body["error"]["message"]}
            line = {"custom_id": custom_id, "response": None, "error": failure}
        else:
            line = {"custom_id": custom_id, "response": {"status_code": code, "body": body}}
    line.setdefault("error", None)
    return orjson.dumps(line).decode()


@cache
def _credentials(token: str):
    """A fixed access token's credentials, else Application Default Credentials (refreshed by
    google-auth as they expire)."""
    if token:
        from google.oauth2.credentials import Credentials

        return Credentials(token=token)
    import google.auth

    credentials, _ = google.auth.default(scopes=SCOPES)
    return credentials


@cache
def _client(
    base_url: str,
    project: str,
    location: str,
    token: str,
    api_version: str,
    attempts: int,
    timeout: float,
) -> genai.Client:
    return genai.Client(
        vertexai=True,
        project=project,
        location=location,
        credentials=_credentials(token),
        http_options=types.HttpOptions(
            base_url=base_url or None,
            api_version=api_version,
            timeout=int(timeout * 1000),
            retry_options=types.HttpRetryOptions(attempts=attempts),
        ),
    )


@cache
def _storage(token: str):
    """Cloud Storage's session: requests, with the credentials' bearer token."""
    from google.auth.transport.requests import AuthorizedSession

    return AuthorizedSession(_credentials(token))


class VertexTransport(Transport):
    def __init__(self, upstream: Upstream, api_key: str):
        super().__init__(upstream)
        self._api_key = api_key  # only the start-up check's: credentials are Google's own

    # -- configuration ---------------------------------------------------------------------------

    def _setting(self, name: str, default: str = "") -> str:
        variable = f"UPSTREAM_{self.upstream.name.upper().replace('-', '_')}_{name}"
        value = os.environ.get(variable, "") or default
        if settings.TRY_OUT is not None:  # the fake's project, bucket and storage
            value = TRY_OUT_PLACE[name].format(url=self.upstream.base_url.rstrip("/"))
        if not value and name in ("PROJECT", "GCS_URI"):
            # The operator's to fix: the batch waits and is sent once it is set.
            message = f"upstream {self.upstream.name}: {variable} is not set"
            raise UpstreamError(message, permanent=False, code="not_configured")
        return value

    @property
    def _place(self) -> tuple[str, str]:
        """The bucket and object prefix of UPSTREAM_<NAME>_GCS_URI."""
        uri = self._setting("GCS_URI")
        if not uri.startswith("gs://"):
            message = f"upstream {self.upstream.name}: GCS_URI must be gs://bucket/prefix"
            raise UpstreamError(message, permanent=False, code="not_configured")
        bucket, _, prefix = uri.removeprefix("gs://").partition("/")
        return bucket, prefix.strip("/")

    def _object(self, name: str) -> str:
        prefix = self._place[1]
        return f"{prefix}/{name}" if prefix else name

    def _uri(self, name: str) -> str:
        return f"gs://{self._place[0]}/{self._object(name)}"

    def _relative(self, uri: str) -> str:
        """A gs:// URI of ours as the name the engine keeps (`input/…`, `output/…`)."""
        prefix = f"gs://{self._place[0]}/{self._object('')}"
        return uri.removeprefix(prefix)

    @property
    def _credentials(self):
        return _credentials(self._setting("ACCESS_TOKEN"))

    def client(self, *, retries: bool = True) -> genai.Client:
        return _client(
            self.upstream.base_url,
            self._setting("PROJECT"),
            self._setting("LOCATION", "us-central1"),
            self._setting("ACCESS_TOKEN"),
            self.upstream.api_version or API_VERSION,
            settings.OPENAI_MAX_RETRIES + 1 if retries else 1,
            settings.OPENAI_TIMEOUT,
        )

    def _call(self, operation: str, fn, **kwargs):
        with upstream_observed(operation, upstream=self.upstream.name):
            try:
                return fn(**kwargs)
            except SDK_ERRORS as exc:
                raise _translate(exc) from exc

    # -- synchronous sends -------------------------------------------------------------------------

    SYNC = True

    def offers_flex(self) -> bool:
        return True

    def send(self, *, endpoint: str, body: str, tier: str, timeout: float) -> SyncAnswer:
        """generate_content on the upstream's project and location, as gemini.py sends it; the
        flex tier is Flex PayGo's header. Flex PayGo takes only some models, at the global
        endpoint only: a 4xx there says nothing yet about the request, so it is a permanent
        flex failure, which the standard tier then answers (tiers._send_failed)."""
        flex = tier == self.FLEX
        headers = FLEX_HEADERS if flex else None
        answer = generate_now(self, body=body, tier=tier, timeout=timeout, headers=headers)
        if flex and 400 <= answer.status < 500:
            message = f"flex refused: HTTP {answer.status}: {answer.body[:300]}"
            raise UpstreamError(message, permanent=True, code="flex_refused", status=answer.status)
        return answer

    # -- Cloud Storage's JSON API -----------------------------------------------------------------

    @property
    def _storage(self):
        return _storage(self._setting("ACCESS_TOKEN"))

    def _gcs(self, operation: str, method: str, path: str, *, missing_ok=False, **kwargs):
        """One Cloud Storage call; its response (None for a 404 that `missing_ok` allows)."""
        from google.auth.exceptions import GoogleAuthError

        url = self._setting("STORAGE_URL", STORAGE_URL).rstrip("/") + path
        with upstream_observed(operation, upstream=self.upstream.name):
            try:
                response = self._storage.request(
                    method, url, timeout=settings.OPENAI_TIMEOUT, **kwargs
                )
            except requests.Timeout as exc:
                raise UpstreamError("timed out", permanent=False, code="timeout") from exc
            except (requests.RequestException, GoogleAuthError) as exc:
                message = f"{type(exc).__name__}: {exc}"[:600]
                raise UpstreamError(message, permanent=False, code="connection_error") from exc
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code >= 300:
            status = response.status_code
            transient = status in (401, 403, 408, 409, 429) or status >= 500
            message = f"HTTP {status}: {response.text[:500]}"
            raise UpstreamError(
                message, permanent=not transient, code=f"http_{status}", status=status
            )
        return response

    def _bucket_path(self) -> str:
        return f"/storage/v1/b/{quote(self._place[0], safe='')}/o"

    def _list(self, prefix: str) -> list[str]:
        """The names of the objects under a prefix (of ours), every page."""
        names, token = [], None
        while True:
            params = {"prefix": self._object(prefix)} | ({"pageToken": token} if token else {})
            listed = self._gcs("gcs.list", "GET", self._bucket_path(), params=params).json()
            names += [item["name"] for item in listed.get("items") or []]
            if not (token := listed.get("nextPageToken")):
                return names

    def _object_path(self, name: str) -> str:
        return f"{self._bucket_path()}/{quote(name, safe='')}"

    # -- the interface -----------------------------------------------------------------------------

    def input_line(self, custom_id, endpoint: str, body: str) -> str:
        """`{"request": GenerateContentRequest}`, labelled with our request id; the job names
        the model."""
        request = orjson.loads(body)
        request.pop("model", None)
        labels = request.get("labels") if isinstance(request.get("labels"), dict) else {}
        request["labels"] = labels | {LABEL: str(custom_id)}
        return orjson.dumps({"request": request}).decode() + "\n"

    def upload_file(self, path: Path, filename: str) -> str:
        """One `uploadType=media` upload (objects up to 5 TB): never resumed, never retried."""
        name = f"input/{filename}"
        params = {"uploadType": "media", "name": self._object(name)}
        headers = {"Content-Type": "application/jsonl"}
        path_url = f"/upload{self._bucket_path()}"
        with path.open("rb") as fh:
            self._gcs("gcs.upload", "POST", path_url, params=params, data=fh, headers=headers)
        return name

    def create_batch(
        self, *, input_file_id: str, endpoint: str, model: str, metadata: dict[str, str]
    ) -> dict:
        """Never retried blindly: a lost answer is found again by the job's display name."""
        token = metadata[METADATA_KEY]
        config = {
            "display_name": DISPLAY_PREFIX + token,
            "dest": self._uri(f"output/{token}/"),
        }
        batches = self.client(retries=False).batches
        src = self._uri(input_file_id)
        job = self._call("jobs.create", batches.create, model=model, src=src, config=config)
        return self._normalised(job)

    def _normalised(self, job: types.BatchJob) -> dict:
        """A BatchJob in the shape the engine reads (OpenAI's Batch)."""
        state = job.state.value if job.state else ""
        status = STATES.get(state, "in_progress")
        ended = status not in ("in_progress", "cancelling")
        dest = job.dest.gcs_uri if job.dest and job.dest.gcs_uri else ""
        sources = (job.src.gcs_uri if job.src else None) or [""]
        stats = job.completion_stats
        counts = None
        if stats is not None:
            done, failed = stats.successful_count or 0, stats.failed_count or 0
            counts = {"total": done + failed, "completed": done, "failed": failed}
        message = job.error.message if job.error and job.error.message else "the job failed"
        return {
            "id": job.name,
            "object": "batch",
            "status": status,
            "model": job.model,
            "input_file_id": self._relative(sources[0]),
            # The output folder, read and deleted as one file; the ended job is deleted too.
            "output_file_id": self._relative(dest) if ended and status in WITH_OUTPUT else None,
            "error_file_id": job.name if ended else None,
            "request_counts": counts,
            "created_at": job.create_time.timestamp() if job.create_time else None,
            "errors": {"data": [{"code": "batch_failed", "message": message}]}
            if status == "failed"
            else None,
        }

    def retrieve_batch(self, batch_id: str) -> dict:
        return self._normalised(self._call("jobs.get", self.client().batches.get, name=batch_id))

    def cancel_batch(self, batch_id: str) -> dict:
        self._call("jobs.cancel", self.client().batches.cancel, name=batch_id)
        return self.retrieve_batch(batch_id)

    def find_batch(self, *, value: str, max_jobs: int = 1000, **_) -> dict | None:
        """The job named after our batch, from the list filtered by that name."""
        display_name = DISPLAY_PREFIX + value
        config = {"page_size": 100, "filter": f'display_name="{display_name}"'}
        pager = self._call("jobs.list", self.client().batches.list, config=config)
        try:
            for number, job in enumerate(pager):
                if job.display_name == display_name:
                    return self._normalised(job)
                if number >= max_jobs:
                    break
        except SDK_ERRORS as exc:  # a later page
            raise _translate(exc) from exc
        return None

    def find_files(self, *, filename: str) -> Iterator[str]:
        name = f"input/{filename}"
        if self._object(name) in self._list(name):
            yield name

    def iter_file_lines(self, file_id: str) -> Iterator[str]:
        """The predictions files of a job's output folder, streamed a line at a time; the job
        itself (its "error file") holds no lines."""
        if not file_id.startswith("output/"):
            return
        for name in self._list(file_id):
            if not name.rsplit("/", 1)[-1].startswith("predictions"):
                continue
            response = self._gcs(
                "gcs.get", "GET", self._object_path(name), params={"alt": "media"}, stream=True
            )
            with response, upstream_observed("gcs.read", upstream=self.upstream.name):
                try:
                    for raw in response.iter_lines():
                        if raw.strip() and (line := result_line(raw)):
                            yield line
                except requests.RequestException as exc:
                    message = f"reading results: {exc!r}"[:600]
                    raise UpstreamError(message, permanent=False, code="connection_error") from exc

    def delete_file(self, file_id: str) -> None:
        """Delete an input object, a job's output folder, or an ended job; what is gone counts
        as deleted."""
        if file_id.startswith("projects/"):
            with upstream_observed("jobs.delete", upstream=self.upstream.name):
                try:
                    self.client().batches.delete(name=file_id)
                except errors.APIError as exc:
                    if exc.code != 404:
                        raise _translate(exc) from exc
                except httpx2.HTTPError as exc:
                    raise _translate(exc) from exc
            return
        names = self._list(file_id) if file_id.endswith("/") else [self._object(file_id)]
        for name in names:
            self._gcs("gcs.delete", "DELETE", self._object_path(name), missing_ok=True)
