"""Every call to OpenAI goes through this module.

Each function raises `UpstreamError` on failure, which says whether retrying later can help.
The SDK retries reads on its own; calls that create something upstream (upload, create batch)
are made with `max_retries=0`, because a lost response followed by a blind retry would create a
second file or batch: the services reconcile first and retry on a later tick.
"""

from collections.abc import Iterator
from contextlib import ExitStack
from functools import cache
from pathlib import Path

import httpx2
import openai
from django.conf import settings

from ops_app.metrics import observe_upstream, upstream_observed


class UpstreamError(Exception):
    def __init__(self, message: str, *, permanent: bool, code: str = "upstream_error"):
        super().__init__(message)
        self.permanent = permanent
        self.code = code


def upstream_refusal() -> str | None:
    """Why this process may not call upstream, or None.

    Without OPENAI_API_KEY only a data directory in try-out mode may (batchproxy/tryout.py):
    a process never falls back to sending prompts to OPENAI_BASE_URL with no key. Commands
    that call upstream refuse to start on it; `client` refuses every call on it.
    """
    if settings.TRY_OUT is None and not settings.OPENAI_API_KEY:
        return (
            "OPENAI_API_KEY is not set, and this data directory is not in try-out mode. Set "
            "OPENAI_API_KEY (and OPENAI_BASE_URL for another OpenAI-compatible API), or run "
            "`manage.py serve --fake-openai` to try the proxy against the built-in fake OpenAI."
        )
    return None


@cache
def _client(base_url: str, api_key: str, max_retries: int, timeout: float) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries
    )


def client(*, retries: bool = True) -> openai.OpenAI:
    refusal = upstream_refusal()
    if refusal is not None:
        raise UpstreamError(refusal, permanent=False, code="no_api_key")
    return _client(
        settings.OPENAI_BASE_URL,
        settings.OPENAI_API_KEY,
        settings.OPENAI_MAX_RETRIES if retries else 0,
        settings.OPENAI_TIMEOUT,
    )


def _translate(exc: openai.OpenAIError) -> UpstreamError:
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        # A refused key or a missing permission is the operator's to fix: keep retrying.
        transient = status in (401, 403, 408, 409, 429) or status >= 500
        code = getattr(exc, "code", None) or f"http_{status}"
        return UpstreamError(f"HTTP {status}: {exc.message}", permanent=not transient, code=code)
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamError("timed out", permanent=False, code="timeout")
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamError("connection error", permanent=False, code="connection_error")
    return UpstreamError(str(exc), permanent=False)


@observe_upstream  # latency and errors per operation, for /metrics
def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except openai.OpenAIError as exc:
        raise _translate(exc) from exc


def _expiry() -> dict:
    # A file the proxy fails to delete still goes away upstream.
    return {"anchor": "created_at", "seconds": settings.UPSTREAM_FILE_EXPIRY}


def upload_file(path: Path, filename: str) -> str:
    with path.open("rb") as fh:
        created = _call(
            client(retries=False).files.create,
            file=(filename, fh),
            purpose="batch",
            expires_after=_expiry(),
        )
    return created.id


def create_batch(*, input_file_id: str, endpoint: str, metadata: dict[str, str]) -> dict:
    batch = _call(
        client(retries=False).batches.create,
        input_file_id=input_file_id,
        endpoint=endpoint,
        completion_window="24h",
        metadata=metadata,
        output_expires_after=_expiry(),
    )
    return batch.to_dict()


def retrieve_batch(batch_id: str) -> dict:
    return _call(client().batches.retrieve, batch_id).to_dict()


def cancel_batch(batch_id: str) -> dict:
    return _call(client().batches.cancel, batch_id).to_dict()


def list_batches(*, limit: int = 100, max_pages: int = 10) -> Iterator[dict]:
    """The newest batches first, a page at a time."""
    after = None
    for _ in range(max_pages):
        kwargs = {"limit": limit} | ({"after": after} if after else {})
        page = _call(client().batches.list, **kwargs)
        for batch in page.data:
            yield batch.to_dict()
        if not page.has_more or not page.data:
            return
        after = page.data[-1].id


def list_files(*, purpose: str) -> Iterator[dict]:
    """Every file of this purpose, newest first, a page at a time."""
    after = None
    while True:
        kwargs = {"purpose": purpose, "limit": 10_000} | ({"after": after} if after else {})
        page = _call(client().files.list, **kwargs)
        for item in page.data:
            yield item.to_dict()
        if not page.has_more or not page.data:
            return
        after = page.data[-1].id


def iter_file_lines(file_id: str) -> Iterator[str]:
    """The lines of a file, streamed: an output file can be hundreds of megabytes.

    Its time in the metrics (`files.content`) runs until the last line is read.
    """
    with upstream_observed("files.content"):
        try:
            with client().files.with_streaming_response.content(file_id) as response:
                for line in response.iter_lines():
                    if line.strip():
                        yield line
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc
        except httpx2.HTTPError as exc:
            # Past the headers the SDK no longer wraps transport errors: a connection dropped
            # halfway through the body surfaces as httpx2's own.
            raise UpstreamError(f"download broken off: {exc!r}", permanent=False) from exc


def delete_file(file_id: str) -> None:
    with upstream_observed("files.delete"):
        try:
            client().files.delete(file_id)
        except openai.NotFoundError:
            return  # already gone: what we wanted
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc


def create_webhook_endpoint(*, url: str, name: str, event_types: list[str]) -> tuple[str, str]:
    """Register a webhook endpoint upstream; its id and signing secret (shown only now)."""
    created = _call(
        client(retries=False).webhooks.create, url=url, name=name, event_types=event_types
    )
    return created.id, created.signing_secret


def video_content(video_id: str, *, variant: str = "video") -> tuple[str, Iterator[bytes]]:
    """A video's media type and its bytes, streamed from upstream: a video is megabytes.

    The upstream response stays open until its bytes are read to the end or the iterator is
    closed (Django closes it when the client's answer ends).
    """
    stack = ExitStack()
    try:
        with upstream_observed("videos.content"):
            streamed = client().videos.with_streaming_response.download_content
            response = stack.enter_context(streamed(video_id, variant=variant))
    except openai.OpenAIError as exc:
        stack.close()
        raise _translate(exc) from exc

    def chunks() -> Iterator[bytes]:
        with stack:
            try:
                yield from response.iter_bytes(65536)
            except httpx2.HTTPError as exc:
                raise UpstreamError(f"download broken off: {exc!r}", permanent=False) from exc

    return response.headers.get("content-type") or "video/mp4", chunks()
