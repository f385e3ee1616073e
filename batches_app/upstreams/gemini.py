"""The Gemini API's batch jobs, through the official `google-genai` SDK.

A batch is a batch job of one model. A small one takes its requests inline (the SDK's
`InlinedRequest`, each with `metadata.key` = our request id); one over GEMINI_INLINE_MAX_BYTES
goes as a JSONL file through the File API (`{"key", "request"}` lines, the body verbatim).
What the engine reads is normalised to OpenAI's shapes, so the engine stays one:
- a BatchJob becomes `{id, status, output_file_id, created_at}`, its state one of OpenAI's
  statuses (`JOB_STATE_SUCCEEDED` -> `completed`, `_EXPIRED` -> `expired`, ...);
- the job's results are its "output file": the job itself for inline results (read with
  `batches.get`), else its responses file (`files.download`, to disk, then read a line at a
  time). Each result becomes an OpenAI output line matched by key: a response -> 200 with the
  GenerateContentResponse, an error (a google.rpc.Status) -> its HTTP status with Google's
  error body. A request with no result is left for the engine to requeue;
- an ended job is one of its "files" (its error file, beside a responses file): deleting it
  deletes the job upstream, so no job is left behind, whatever its end.
A job's display name is `batchproxy-<our batch id>`: `find_batch` recognises an interrupted
create by it, as OpenAI's metadata does.
"""

import tempfile
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

import httpx2
import orjson
from django.conf import settings
from google import genai
from google.genai import batches, errors, types
from pydantic import BaseModel, ValidationError

from ops_app.metrics import observe_upstream, upstream_observed
from requests_app.models import Endpoint

from .base import (
    METADATA_KEY,
    SyncAnswer,
    Transport,
    Upstream,
    UpstreamError,
    unreadable_line,
)

API_VERSION = "v1beta"  # where Google documents the Batch API
DISPLAY_PREFIX = "batchproxy-"
STATES = {
    "JOB_STATE_PENDING": "in_progress",
    "JOB_STATE_QUEUED": "in_progress",
    "JOB_STATE_RUNNING": "in_progress",
    "JOB_STATE_CANCELLING": "cancelling",
    "JOB_STATE_SUCCEEDED": "completed",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "completed",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_EXPIRED": "expired",
}
# A google.rpc.Code -> (the HTTP status Google's APIs answer with it, its name).
RPC_CODES = {
    1: (499, "CANCELLED"),
    2: (500, "UNKNOWN"),
    3: (400, "INVALID_ARGUMENT"),
    4: (504, "DEADLINE_EXCEEDED"),
    5: (404, "NOT_FOUND"),
    6: (409, "ALREADY_EXISTS"),
    7: (403, "PERMISSION_DENIED"),
    8: (429, "RESOURCE_EXHAUSTED"),
    9: (400, "FAILED_PRECONDITION"),
    10: (409, "ABORTED"),
    11: (400, "OUT_OF_RANGE"),
    12: (501, "UNIMPLEMENTED"),
    13: (500, "INTERNAL"),
    14: (503, "UNAVAILABLE"),
    15: (500, "DATA_LOSS"),
    16: (401, "UNAUTHENTICATED"),
}
# The fields of a GenerateContentRequest that the SDK's GenerateContentConfig carries.
CONFIG_FIELDS = (
    "systemInstruction",
    "tools",
    "toolConfig",
    "safetySettings",
    "cachedContent",
    "labels",
    "serviceTier",
    "store",
)


@cache
def _client(
    base_url: str, api_key: str, api_version: str, attempts: int, timeout: float
) -> genai.Client:
    return genai.Client(
        api_key=api_key or "missing",
        http_options=types.HttpOptions(
            base_url=base_url,
            api_version=api_version,
            timeout=int(timeout * 1000),
            retry_options=types.HttpRetryOptions(attempts=attempts),
        ),
    )


def _translate(exc: Exception) -> UpstreamError:
    if isinstance(exc, errors.APIError):
        status = exc.code or 500
        transient = status in (401, 403, 408, 409, 429) or status >= 500
        code = (exc.status or f"http_{status}").lower()
        message = f"HTTP {status}: {exc.message}"
        return UpstreamError(message, permanent=not transient, code=code, status=status)
    if isinstance(exc, httpx2.TimeoutException):
        return UpstreamError("timed out", permanent=False, code="timeout")
    if isinstance(exc, httpx2.TransportError):
        return UpstreamError("connection error", permanent=False, code="connection_error")
    return UpstreamError(str(exc), permanent=False)


SDK_ERRORS = (errors.APIError, httpx2.HTTPError)


@observe_upstream
def _call(upstream: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except SDK_ERRORS as exc:
        raise _translate(exc) from exc


def inlined_request(body: dict, *, key: str = "") -> types.InlinedRequest:
    """A GenerateContentRequest as it came over the wire, as the SDK's InlinedRequest.

    Raises ValueError, saying where, when the SDK cannot read it (`request_check` is what the
    intake asks).
    """
    request = dict(body)
    model = request.pop("model", None)
    config = request.pop("generationConfig", None)
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise ValueError("generationConfig: an object is required")
    config = config | {name: request.pop(name) for name in CONFIG_FIELDS if name in request}
    contents = request.pop("contents", None)
    if request:
        raise ValueError(f"unknown fields: {', '.join(sorted(request))}")
    if not isinstance(contents, list):
        raise ValueError("contents: an array is required")
    fields = {"model": model, "contents": contents, "config": config or None}
    try:
        inlined = types.InlinedRequest.model_validate(
            fields | {"metadata": {"key": key} if key else None}
        )
    except ValidationError:
        # The union of content shapes makes pydantic's own message a riddle: say where.
        for number, item in enumerate(contents):
            _validated(types.Content, item, f"contents[{number}]")
        _validated(types.GenerateContentConfig, config, "")  # generationConfig's and the rest
        raise
    return inlined


def request_check(body: dict) -> None:
    """Raise ValueError, saying why, unless the SDK can read this request and send it inline.

    What the SDK refuses to send to the Gemini API (Vertex-only fields: routingConfig, ...)
    would fail the whole job's create on every retry: the intake refuses it at once, with the
    SDK's words, so a batch never holds one (and the flush need not check again). A model sent
    to Vertex AI (an upstream of kind vertex) takes them: there the SDK must only read it.
    """
    inlined = inlined_request(body)
    from . import upstream_route  # the package imports this module

    route = upstream_route(endpoint=Endpoint.GENERATE_CONTENT, model=str(body.get("model") or ""))
    if route is None or route.kind != "vertex":
        batches._InlinedRequest_to_mldev(_offline_client()._api_client, inlined)


@cache
def _offline_client() -> genai.Client:
    """A client that never sends: its API client is what the SDK's own conversion wants."""
    return genai.Client(api_key="offline-conversion-only")


def _validated(model: type[BaseModel], value, where: str):
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(part) for part in (where, *first["loc"]) if part != "")
        raise ValueError(f"{path}: {first['msg']}") from None


def _normalised(job: types.BatchJob) -> dict:
    """A BatchJob in the shape the engine reads (OpenAI's Batch)."""
    state = job.state.value if job.state else ""
    status = STATES.get(state, "in_progress")
    dest = job.dest
    # An ended job is itself read (for its inline results) and deleted, as a file is; with a
    # responses file it comes second, as the error file, so that it is deleted too.
    output = error = ""
    if status not in ("in_progress", "cancelling"):
        output = (dest.file_name if dest else None) or job.name
        error = job.name if output != job.name else ""
    counts = None
    if dest is not None and dest.inlined_responses:
        failed = sum(1 for r in dest.inlined_responses if r.error)
        counts = {
            "total": len(dest.inlined_responses),
            "completed": len(dest.inlined_responses) - failed,
            "failed": failed,
        }
    return {
        "id": job.name,
        "status": status,
        "output_file_id": output,
        "error_file_id": error,
        "request_counts": counts,
        "created_at": job.create_time.timestamp() if job.create_time else None,
    }


def _error_body(error: dict) -> tuple[int, dict]:
    """A google.rpc.Status as the HTTP status and error body the caller's SDK would get."""
    status, name = RPC_CODES.get(error.get("code"), (500, "UNKNOWN"))
    message = error.get("message") or ""
    return status, {"error": {"code": status, "message": message, "status": name}}


def _output_line(key: str | None, response: dict | None, error: dict | None) -> str | None:
    if not key:
        return None
    if response is not None:
        answer = {"status_code": 200, "body": response}
    elif error is not None:
        status, body = _error_body(error)
        answer = {"status_code": status, "body": body}
    else:
        return None
    return orjson.dumps({"custom_id": key, "response": answer}).decode()


def _response_json(response: types.GenerateContentResponse) -> dict:
    """The SDK's response back in its wire form (camelCase), as the caller's SDK reads it."""
    return response.model_dump(
        mode="json",
        by_alias=True,
        exclude_none=True,
        exclude={"sdk_http_response", "automatic_function_calling_history", "parsed"},
    )


def _file_result_line(raw: bytes) -> str | None:
    """A responses file's line as an OpenAI output line; an unreadable one fails its request
    alone (`unreadable_line`)."""
    try:
        item = orjson.loads(raw)
        return _output_line(item.get("key"), item.get("response"), item.get("error"))
    except (ValueError, AttributeError):
        return unreadable_line(raw, id_field="key")


def generate_now(
    transport: Transport,
    *,
    body: str,
    tier: str,
    timeout: float,
    service_tier: types.ServiceTier | None = None,
    headers: dict[str, str] | None = None,
) -> SyncAnswer:
    """One GenerateContentRequest sent now through the transport's google-genai client
    (`Transport.send`'s contract): the tier the proxy chose goes as `service_tier` (the Gemini
    API's) or `headers` (Vertex AI's Flex PayGo); the body's own `serviceTier` is replaced, as
    on OpenAI."""
    request = inlined_request(orjson.loads(body))
    config = request.config or types.GenerateContentConfig()
    config.service_tier = service_tier
    config.http_options = types.HttpOptions(timeout=int(timeout * 1000), headers=headers)
    generate = transport.client(retries=False).models.generate_content
    try:
        with upstream_observed(f"sync.{tier}", upstream=transport.upstream.name):
            answer = generate(model=request.model, contents=request.contents, config=config)
    except errors.APIError as exc:
        status = exc.code or 500
        if status in (401, 403, 429) or status >= 500:
            raise _translate(exc) from exc
        return SyncAnswer(status, orjson.dumps(exc.details).decode())
    except httpx2.HTTPError as exc:
        raise _translate(exc) from exc
    return SyncAnswer(200, orjson.dumps(_response_json(answer)).decode())


class GeminiTransport(Transport):
    def __init__(self, upstream: Upstream, api_key: str):
        super().__init__(upstream)
        self._api_key = api_key

    def client(self, *, retries: bool = True) -> genai.Client:
        return _client(
            self.upstream.base_url,
            self._api_key,
            self.upstream.api_version or API_VERSION,
            settings.OPENAI_MAX_RETRIES + 1 if retries else 1,
            settings.OPENAI_TIMEOUT,
        )

    def _call(self, fn, *args, **kwargs):
        return _call(self.upstream.name, fn, *args, **kwargs)

    def takes_inline(self, input_bytes: int) -> bool:
        return input_bytes <= settings.GEMINI_INLINE_MAX_BYTES

    def input_line(self, custom_id, endpoint: str, body: str) -> str:
        request = orjson.loads(body)
        request.pop("model", None)  # the job's, not the line's
        return orjson.dumps({"key": str(custom_id), "request": request}).decode() + "\n"

    SYNC = True

    def offers_flex(self) -> bool:
        return True

    def send(self, *, endpoint: str, body: str, tier: str, timeout: float) -> SyncAnswer:
        """generate_content through the SDK, with `service_tier` the tier the proxy chose."""
        flex = types.ServiceTier.FLEX if tier == self.FLEX else None
        return generate_now(self, body=body, tier=tier, timeout=timeout, service_tier=flex)

    def upload_file(self, path: Path, filename: str) -> str:
        config = {"display_name": filename, "mime_type": "application/jsonl"}
        created = self._call(self.client(retries=False).files.upload, file=path, config=config)
        return created.name

    def create_inline(
        self, *, requests: Iterable[tuple[str, str]], model: str, metadata: dict[str, str]
    ) -> dict:
        items = [inlined_request(orjson.loads(body), key=str(pk)) for pk, body in requests]
        return self._create(model=model, src=items, metadata=metadata)

    def create_batch(
        self, *, input_file_id: str, endpoint: str, model: str, metadata: dict[str, str]
    ) -> dict:
        return self._create(model=model, src=input_file_id, metadata=metadata)

    def _create(self, *, model: str, src, metadata: dict[str, str]) -> dict:
        """Never retried blindly: a lost answer is found again by the job's display name."""
        config = {"display_name": DISPLAY_PREFIX + metadata[METADATA_KEY]}
        batches = self.client(retries=False).batches
        return _normalised(self._call(batches.create, model=model, src=src, config=config))

    def retrieve_batch(self, batch_id: str) -> dict:
        return _normalised(self._call(self.client().batches.get, name=batch_id))

    def cancel_batch(self, batch_id: str) -> dict:
        self._call(self.client().batches.cancel, name=batch_id)
        return self.retrieve_batch(batch_id)

    def find_batch(self, *, value: str, max_jobs: int = 1000, **_) -> dict | None:
        """The job named after our batch; jobs are listed newest first, a page at a time."""
        display_name = DISPLAY_PREFIX + value
        pager = self._call(self.client().batches.list, config={"page_size": 100})
        try:
            for number, job in enumerate(pager):
                if job.display_name == display_name:
                    return _normalised(job)
                if number >= max_jobs:
                    break
        except SDK_ERRORS as exc:  # a later page
            raise _translate(exc) from exc
        return None

    def find_files(self, *, filename: str) -> Iterator[str]:
        try:
            for found in self.client().files.list(config={"page_size": 100}):
                if found.display_name == filename:
                    yield found.name
        except SDK_ERRORS as exc:
            raise _translate(exc) from exc

    def iter_file_lines(self, file_id: str) -> Iterator[str]:
        """The job's results as OpenAI output lines: inline ones, or its file's, streamed."""
        if file_id.startswith("batches/"):
            job = self._call(self.client().batches.get, name=file_id)
            for result in (job.dest.inlined_responses if job.dest else None) or ():
                response = _response_json(result.response) if result.response else None
                error = result.error.model_dump(exclude_none=True) if result.error else None
                if line := _output_line((result.metadata or {}).get("key"), response, error):
                    yield line
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "results.jsonl"
            with upstream_observed("files.download", upstream=self.upstream.name):
                try:
                    self.client().files.download(file=file_id, destination=str(path))
                except SDK_ERRORS as exc:
                    raise _translate(exc) from exc
            with path.open("rb") as fh:
                for raw in fh:
                    if raw.strip() and (line := _file_result_line(raw)):
                        yield line

    def delete_file(self, file_id: str) -> None:
        """Delete a file, or (for inline results) the job itself, once it has ended."""
        client = self.client()
        delete = client.batches.delete if file_id.startswith("batches/") else client.files.delete
        with upstream_observed("files.delete", upstream=self.upstream.name):
            try:
                delete(name=file_id)
            except errors.APIError as exc:
                if exc.code == 404:
                    return
                raise _translate(exc) from exc
            except httpx2.HTTPError as exc:
                raise _translate(exc) from exc
