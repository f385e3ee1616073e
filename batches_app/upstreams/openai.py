"""OpenAI's Batch API, and any OpenAI-compatible one (a second organisation, Groq, Together...).

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
import orjson
from django.conf import settings

from ops_app.metrics import observe_upstream, upstream_observed

from .base import SyncAnswer, Transport, Upstream, UpstreamError, retry_after_of


@cache
def _client(base_url: str, api_key: str, max_retries: int, timeout: float) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries
    )


def _translate(exc: openai.OpenAIError) -> UpstreamError:
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        # A refused key or a missing permission is the operator's to fix: keep retrying.
        transient = status in (401, 403, 408, 409, 429) or status >= 500
        code = getattr(exc, "code", None) or f"http_{status}"
        message = f"HTTP {status}: {exc.message}"
        return UpstreamError(
            message,
            permanent=not transient,
            code=code,
            status=status,
            retry_after=retry_after_of(exc.response.headers) if status == 429 else None,
        )
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamError("timed out", permanent=False, code="timeout")
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamError("connection error", permanent=False, code="connection_error")
    return UpstreamError(str(exc), permanent=False)


def _flex_refused(exc: openai.APIStatusError) -> bool:
    """A 400 about the tier asked, not the request: a model (OpenAI) or a deployment (Azure)
    without flex answers `unsupported_value` on the `service_tier` parameter."""
    return exc.status_code == 400 and (
        getattr(exc, "param", None) == "service_tier" or "service_tier" in str(exc.message)
    )


@observe_upstream  # latency and errors per upstream and operation, for /metrics
def _call(upstream: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except openai.OpenAIError as exc:
        raise _translate(exc) from exc


def _expiry() -> dict:
    # A file the proxy fails to delete still goes away upstream.
    return {"anchor": "created_at", "seconds": settings.UPSTREAM_FILE_EXPIRY}


class OpenAITransport(Transport):
    def __init__(self, upstream: Upstream, api_key: str):
        super().__init__(upstream)
        self._api_key = api_key

    def client(self, *, retries: bool = True) -> openai.OpenAI:
        return _client(
            self.upstream.base_url,
            self._api_key,
            settings.OPENAI_MAX_RETRIES if retries else 0,
            settings.OPENAI_TIMEOUT,
        )

    def _call(self, fn, *args, **kwargs):
        return _call(self.upstream.name, fn, *args, **kwargs)

    SYNC = True

    def offers_flex(self) -> bool:
        return True

    def send(self, *, endpoint: str, body: str, tier: str, timeout: float) -> SyncAnswer:
        """POST the body to its endpoint; `service_tier` says the tier the proxy chose (the
        body's own is replaced: the receipt prices the tier sent). The Azure client turns the
        path into its deployment's, as it does for its own calls."""
        payload = orjson.loads(body)
        if tier == self.FLEX:
            payload["service_tier"] = "flex"
        elif self.upstream.kind in ("openai", "azure"):
            payload["service_tier"] = "default"  # OpenAI's word; other kinds' bodies go as they are
        path = "/" + endpoint.removeprefix("/v1/")
        post = self.client(retries=False).with_options(timeout=timeout).post
        try:
            with upstream_observed(f"sync.{tier}", upstream=self.upstream.name):
                answer = post(path, body=payload, cast_to=httpx2.Response)
        except openai.APIStatusError as exc:
            if exc.status_code == 429 or exc.status_code >= 500 or exc.status_code in (401, 403):
                raise _translate(exc) from exc
            if tier == self.FLEX and _flex_refused(exc):
                # Not the request's error but the tier's: the caller never sees it, and the
                # request goes on at the standard tier (batches_app.tiers).
                raise UpstreamError(
                    f"flex is not offered for {payload.get('model')} here: {exc.message}",
                    permanent=True,
                    code="flex_unsupported",
                    status=exc.status_code,
                ) from exc
            return SyncAnswer(exc.status_code, exc.response.text)  # the request's own error
        except openai.OpenAIError as exc:
            raise _translate(exc) from exc
        return SyncAnswer(answer.status_code, answer.text)

    def upload_file(self, path: Path, filename: str) -> str:
        with path.open("rb") as fh:
            files = self.client(retries=False).files
            created = self._call(
                files.create, file=(filename, fh), purpose="batch", expires_after=_expiry()
            )
        return created.id

    def create_batch(
        self, *, input_file_id: str, endpoint: str, model: str, metadata: dict[str, str]
    ) -> dict:
        batch = self._call(
            self.client(retries=False).batches.create,
            input_file_id=input_file_id,
            endpoint=endpoint,
            completion_window="24h",
            metadata=metadata,
            output_expires_after=_expiry(),
        )
        return batch.to_dict()

    def retrieve_batch(self, batch_id: str) -> dict:
        return self._call(self.client().batches.retrieve, batch_id).to_dict()

    def cancel_batch(self, batch_id: str) -> dict:
        return self._call(self.client().batches.cancel, batch_id).to_dict()

    def list_batches(self, *, limit: int = 100, max_pages: int = 10) -> Iterator[dict]:
        """The newest batches first, a page at a time."""
        after = None
        for _ in range(max_pages):
            kwargs = {"limit": limit} | ({"after": after} if after else {})
            page = self._call(self.client().batches.list, **kwargs)
            for batch in page.data:
                yield batch.to_dict()
            if not page.has_more or not page.data:
                return
            after = page.data[-1].id

    def find_batch(self, *, key: str, value: str, attempted_at: float, **_) -> dict | None:
        since = attempted_at - 3600  # room for the clocks' difference
        for found in self.list_batches():
            if (found.get("metadata") or {}).get(key) == value:
                return found
            if found.get("created_at", 0) < since:
                break
        return None

    def list_files(self, *, purpose: str) -> Iterator[dict]:
        """Every file of this purpose, newest first, a page at a time."""
        after = None
        while True:
            kwargs = {"purpose": purpose, "limit": 10_000} | ({"after": after} if after else {})
            page = self._call(self.client().files.list, **kwargs)
            for item in page.data:
                yield item.to_dict()
            if not page.has_more or not page.data:
                return
            after = page.data[-1].id

    def find_files(self, *, filename: str) -> Iterator[str]:
        for found in self.list_files(purpose="batch"):
            if found.get("filename") == filename:
                yield found["id"]

    def iter_file_lines(self, file_id: str) -> Iterator[str]:
        """The lines of a file, streamed: an output file can be hundreds of megabytes.

        Its time in the metrics (`files.content`) runs until the last line is read.
        """
        with upstream_observed("files.content", upstream=self.upstream.name):
            try:
                content = self.client().files.with_streaming_response.content
                with content(file_id) as response:
                    for line in response.iter_lines():
                        if line.strip():
                            yield line
            except openai.OpenAIError as exc:
                raise _translate(exc) from exc
            except httpx2.HTTPError as exc:
                # Past the headers the SDK no longer wraps transport errors: a connection
                # dropped halfway through the body surfaces as httpx2's own.
                raise UpstreamError(f"download broken off: {exc!r}", permanent=False) from exc

    def create_webhook_endpoint(
        self, *, url: str, name: str, event_types: list[str]
    ) -> tuple[str, str]:
        """Register a webhook endpoint upstream; its id and signing secret (shown only now)."""
        # POST /webhook_endpoints through the SDK's own request path: `webhooks.create` exists
        # only in the newest 3.x releases; the test tools' pins (instructor's jiter) hold older.
        created = self._call(
            self.client(retries=False).post,
            "/webhook_endpoints",
            body={"url": url, "name": name, "event_types": event_types},
            cast_to=object,
        )
        return created["id"], created["signing_secret"]

    def video_content(
        self, video_id: str, *, variant: str = "video"
    ) -> tuple[str, Iterator[bytes]]:
        """A video's media type and its bytes, streamed from upstream: a video is megabytes.

        The upstream response stays open until its bytes are read to the end or the iterator
        is closed (Django closes it when the client's answer ends).
        """
        stack = ExitStack()
        try:
            with upstream_observed("videos.content", upstream=self.upstream.name):
                streamed = self.client().videos.with_streaming_response.download_content
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

    def delete_file(self, file_id: str) -> None:
        with upstream_observed("files.delete", upstream=self.upstream.name):
            try:
                self.client().files.delete(file_id)
            except openai.NotFoundError:
                return  # already gone: what we wanted
            except openai.OpenAIError as exc:
                raise _translate(exc) from exc
