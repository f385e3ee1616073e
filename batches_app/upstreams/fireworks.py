"""Fireworks' batch inference jobs over datasets, through its documented HTTP API.

From docs.fireworks.ai (guides/batch-inference; api-reference: create-dataset,
upload-dataset-files, create/get/list batch inference job, get-dataset-download-endpoint):
- the input is a dataset of `{"custom_id", "body"}` lines: `POST /datasets` names it
  (`datasetId`, `{"userUploaded": {}}`), `POST /datasets/{id}:upload` sends the JSONL (one
  request takes up to 150 MB: the kind's default limit), and the dataset turns `READY`;
- `POST /batchInferenceJobs?batchInferenceJobId=…` runs a `model` over `inputDatasetId` into
  `outputDatasetId` (full names, `accounts/{account}/datasets/{id}`); its `state` goes
  `JOB_STATE_VALIDATING`, `…_PENDING`, `…_RUNNING`, then `…_COMPLETED`, `…_FAILED` or
  `…_EXPIRED` (after 24 h, the requests answered so far kept);
- the output dataset holds a results file and an error file, read through the signed URLs of
  `GET /datasets/{id}:getDownloadEndpoint` (`filenameToSignedUrls`);
- errors are Google's `{"error": {"code", "message", "status"}}`.
The upstream's base URL names the account: `https://api.fireworks.ai/v1/accounts/<account-id>`.

Synchronous sends (batches_app.tiers) are Fireworks' OpenAI-compatible chat completions,
`POST https://api.fireworks.ai/inference/v1/chat/completions` (the inference API beside the
account's: `/inference/v1` in place of `/v1/accounts/<id>`), at the standard tier: Fireworks
has no flex. Only chat completions, the one endpoint its batch jobs run.

No official SDK is used yet: the proxy needs a few plain REST calls from Fireworks' API
reference, made through `requests` with explicit timeouts; whether the `fireworks-ai` SDK
(1.2.x on PyPI) covers the dataset upload and signed-URL reads cleanly is not checked yet.

Fireworks names nothing by metadata, but it lets the caller choose the ids: the dataset is
named after the input file (`batchproxy-<batch uuid>`) and the job after the proxy's batch,
so an interrupted upload or create is found again by name (`find_files`, `find_batch`) and
never made twice.
"""

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import orjson
import requests
from django.conf import settings

from ops_app.metrics import upstream_observed

from .base import (
    METADATA_KEY,
    SyncAnswer,
    Transport,
    Upstream,
    UpstreamError,
    retry_after_of,
    unreadable_line,
)

STATES = {
    "JOB_STATE_CREATING": "validating",
    "JOB_STATE_CREATING_INPUT_DATASET": "validating",
    "JOB_STATE_VALIDATING": "validating",
    "JOB_STATE_PENDING": "validating",
    "JOB_STATE_RUNNING": "in_progress",
    "JOB_STATE_WRITING_RESULTS": "in_progress",
    "JOB_STATE_COMPLETED": "completed",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_FAILED_CLEANING_UP": "failed",
    "JOB_STATE_EXPIRED": "expired",
    "JOB_STATE_CANCELLING": "cancelling",
    "JOB_STATE_CANCELLED": "cancelled",
}
# The states whose output dataset holds results to read (and then delete).
WITH_OUTPUT = ("completed", "expired", "cancelled")
ENDPOINT = "/v1/chat/completions"  # the only one batch inference jobs run


def _unix(value) -> int | None:
    if not value:
        return None
    try:
        return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


def _short(name: str | None) -> str | None:
    """`accounts/a/datasets/x` -> `x`."""
    return name.rsplit("/", 1)[-1] if name else None


def _batch(job: dict) -> dict:
    """A Fireworks job in OpenAI's Batch shape, as the engine reads it."""
    status = STATES.get(str(job.get("state")), "in_progress")
    progress = job.get("jobProgress") or {}
    message = (job.get("status") or {}).get("message") or "the job failed"
    return {
        "id": _short(job["name"]),
        "object": "batch",
        "status": status,
        "endpoint": ENDPOINT,
        "model": job.get("model"),
        "input_file_id": _short(job.get("inputDatasetId")),
        # Results and errors are two files of one dataset, read (and deleted) as one.
        "output_file_id": _short(job.get("outputDatasetId")) if status in WITH_OUTPUT else None,
        "error_file_id": None,
        "created_at": _unix(job.get("createTime")),
        "completed_at": _unix(job.get("updateTime")) if status in WITH_OUTPUT else None,
        "request_counts": {
            "total": int(progress.get("totalInputRequests") or 0),
            "completed": int(progress.get("successfullyProcessedRequests") or 0),
            "failed": int(progress.get("failedRequests") or 0),
        },
        "errors": {"data": [{"code": "batch_failed", "message": message}]}
        if status == "failed"
        else None,
        "usage": None,
    }


def result_line(raw: str) -> str | None:
    """A line of the results or error file in OpenAI's output line shape. Fireworks documents
    both as OpenAI-compatible, keyed by `custom_id`; a line whose `response` is the completion
    itself (no `status_code`) is read as a 200 answer."""
    try:
        line = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return unreadable_line(raw, id_field="custom_id")
    if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
        return unreadable_line(raw, id_field="custom_id")
    response = line.get("response")
    if isinstance(response, dict) and "status_code" not in response:
        line["response"] = {"status_code": 200, "body": response}
    line.setdefault("response", None)
    line.setdefault("error", None)
    return orjson.dumps(line).decode()


class FireworksTransport(Transport):
    def __init__(self, upstream: Upstream, api_key: str):
        super().__init__(upstream)
        self._api_key = api_key

    @property
    def account(self) -> str:
        base = self.upstream.base_url.rstrip("/")
        head, _, account = base.rpartition("/accounts/")
        if not head or not account or "/" in account:
            # The operator's to fix: the batch waits and is sent once the URL names the account.
            message = (
                f"upstream {self.upstream.name}: the base URL must name the account, "
                "https://api.fireworks.ai/v1/accounts/<account-id>"
            )
            raise UpstreamError(message, permanent=False, code="no_account")
        return account

    def _request(self, operation: str, method: str, path: str, **kwargs) -> requests.Response:
        """One call to `<base URL><path>`; an HTTP error raises UpstreamError."""
        self.account  # noqa: B018 (a base URL without the account is refused before any call)
        url = self.upstream.base_url.rstrip("/") + path
        headers = {"Authorization": f"Bearer {self._api_key}"}
        with upstream_observed(operation, upstream=self.upstream.name):
            try:
                response = requests.request(
                    method, url, headers=headers, timeout=settings.OPENAI_TIMEOUT, **kwargs
                )
            except requests.Timeout as exc:
                raise UpstreamError("timed out", permanent=False, code="timeout") from exc
            except requests.RequestException as exc:
                message = f"connection error: {exc!r}"
                raise UpstreamError(message, permanent=False, code="connection_error") from exc
            if response.status_code >= 400:
                raise _error(response)
            return response

    SYNC = True

    @classmethod
    def offers_sync(cls, endpoint: str) -> bool:
        return endpoint == ENDPOINT

    def send(self, *, endpoint: str, body: str, tier: str, timeout: float) -> SyncAnswer:
        """The body to the inference API's chat completions, as it is; its answer."""
        if endpoint != ENDPOINT:
            raise UpstreamError(f"no synchronous {endpoint} on Fireworks", permanent=True)
        base = self.upstream.base_url.rstrip("/").rpartition(f"/v1/accounts/{self.account}")[0]
        headers = {"Authorization": f"Bearer {self._api_key}", "Content-Type": "application/json"}
        with upstream_observed(f"sync.{tier}", upstream=self.upstream.name):
            try:
                response = requests.post(
                    f"{base}/inference/v1/chat/completions",
                    data=body.encode(),
                    headers=headers,
                    timeout=timeout,
                )
            except requests.Timeout as exc:
                raise UpstreamError("timed out", permanent=False, code="timeout") from exc
            except requests.RequestException as exc:
                message = f"connection error: {exc!r}"
                raise UpstreamError(message, permanent=False, code="connection_error") from exc
        status = response.status_code
        if status in (401, 403, 429) or status >= 500:
            error = _error(response)
            error.retry_after = retry_after_of(response.headers) if status == 429 else None
            raise error
        return SyncAnswer(status, response.text)

    def _name(self, kind: str, short_id: str) -> str:
        return f"accounts/{self.account}/{kind}/{short_id}"

    def input_line(self, custom_id, endpoint: str, body: str) -> str:
        """Fireworks' line: `{"custom_id", "body"}`; the job names the model."""
        return f'{{"custom_id":"{custom_id}","body":{body}}}\n'

    def upload_file(self, path: Path, filename: str) -> str:
        dataset = filename.removesuffix(".jsonl")
        body = {"datasetId": dataset, "dataset": {"displayName": filename, "userUploaded": {}}}
        try:
            self._request("datasets.create", "POST", "/datasets", json=body)
        except UpstreamError as exc:
            if exc.code != "http_409":  # made by an interrupted upload: its file is sent now
                raise
        with path.open("rb") as fh:
            files = {"file": (filename, fh, "application/jsonl")}
            self._request("datasets.upload", "POST", f"/datasets/{dataset}:upload", files=files)
        return dataset

    def create_batch(
        self, *, input_file_id: str, endpoint: str, model: str, metadata: dict[str, str]
    ) -> dict:
        if endpoint != ENDPOINT:
            message = f"Fireworks batch inference runs {ENDPOINT} only, not {endpoint}"
            raise UpstreamError(message, permanent=True, code="unsupported_endpoint")
        job_id = f"batchproxy-{metadata[METADATA_KEY]}"
        body = {
            "displayName": job_id,
            "model": model,
            "inputDatasetId": self._name("datasets", input_file_id),
            "outputDatasetId": self._name("datasets", f"{input_file_id}-out"),
        }
        params = {"batchInferenceJobId": job_id}
        job = self._request(
            "batch_jobs.create", "POST", "/batchInferenceJobs", params=params, json=body
        )
        return _batch(job.json())

    def retrieve_batch(self, batch_id: str) -> dict:
        job = self._request("batch_jobs.get", "GET", f"/batchInferenceJobs/{batch_id}")
        return _batch(job.json())

    def cancel_batch(self, batch_id: str) -> dict:
        self._request("batch_jobs.cancel", "POST", f"/batchInferenceJobs/{batch_id}:cancel")
        return self.retrieve_batch(batch_id)

    def find_batch(self, *, key: str, value: str, attempted_at: float, **_) -> dict | None:
        """The job named after this proxy batch, if an interrupted create made it."""
        wanted = f"batchproxy-{value}"
        token = ""
        for _page in range(50):
            params = {"pageSize": 200} | ({"pageToken": token} if token else {})
            listed = self._request("batch_jobs.list", "GET", "/batchInferenceJobs", params=params)
            page = listed.json()
            for job in page.get("batchInferenceJobs") or []:
                if _short(job.get("name")) == wanted:
                    return _batch(job)
            token = page.get("nextPageToken") or ""
            if not token:
                return None
        return None

    def find_files(self, *, filename: str) -> Iterator[str]:
        """The dataset named after this input file, once its upload finished (`READY`)."""
        dataset = filename.removesuffix(".jsonl")
        try:
            found = self._request("datasets.get", "GET", f"/datasets/{dataset}").json()
        except UpstreamError as exc:
            if exc.code == "http_404":
                return
            raise
        if found.get("state") == "READY":
            yield dataset

    def iter_file_lines(self, file_id: str) -> Iterator[str]:
        """Every line of the output dataset's files (results, then errors), streamed from
        their signed URLs."""
        path = f"/datasets/{file_id}:getDownloadEndpoint"
        urls = self._request("datasets.download", "GET", path).json()
        signed = urls.get("filenameToSignedUrls") or {}
        for filename in sorted(signed, key=lambda name: "error" in name):
            with upstream_observed("datasets.read", upstream=self.upstream.name):
                try:
                    # A signed URL carries its own authorisation: no key is sent there.
                    with requests.get(
                        signed[filename], stream=True, timeout=settings.OPENAI_TIMEOUT
                    ) as response:
                        if response.status_code >= 400:
                            raise _error(response)
                        for raw in response.iter_lines():
                            if raw.strip() and (line := result_line(raw.decode())):
                                yield line
                except requests.RequestException as exc:
                    message = f"reading results: {exc!r}"
                    raise UpstreamError(message, permanent=False, code="connection_error") from exc

    def delete_file(self, file_id: str) -> None:
        try:
            self._request("datasets.delete", "DELETE", f"/datasets/{file_id}")
        except UpstreamError as exc:
            if exc.code != "http_404":  # one already gone counts as deleted
                raise


def _error(response: requests.Response) -> UpstreamError:
    status = response.status_code
    try:
        body = response.json()
        error = body.get("error", body) if isinstance(body, dict) else {}
        message = error.get("message") if isinstance(error, dict) else str(error)
    except ValueError:
        message = response.text
    transient = status in (401, 403, 408, 409, 429) or status >= 500
    return UpstreamError(
        f"HTTP {status}: {str(message)[:500]}",
        permanent=not transient,
        code=f"http_{status}",
        status=status,
    )
