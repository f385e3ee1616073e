"""What every kind of upstream offers the engine, and the one error type it raises.

An `Upstream` is a named connection from the environment (settings.UPSTREAMS): its kind, base
URL, the NAME of the variable holding its key (keys are never stored in the database) and the
models it serves. A `Transport` is one kind's way of talking to it; the engine in
batches_app/services.py sees only this interface, so claims, intents, leases and outcomes
never fork per provider (STYLE.md rule 6).
"""

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import orjson

from requests_app.models import jsonl_line

# The metadata key that names the proxy's batch on its upstream batch.
METADATA_KEY = "batchproxy_batch_id"


def unreadable_line(raw: bytes | str, *, id_field: str) -> str | None:
    """A result line that could not be read (truncated, not JSON), as an OpenAI error line for
    the request it names, if it still names one: the engine then fails (or requeues) that
    request alone and reads on. None when not even that is left."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    match = re.search(rf'"{re.escape(id_field)}"\s*:\s*"([^"]{{1,100}})"', text[:1000])
    if match is None:
        return None
    error = {"code": "invalid_result_line", "message": "The upstream's result line was unreadable."}
    return orjson.dumps({"custom_id": match[1], "response": None, "error": error}).decode()


class UpstreamError(Exception):
    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        code: str = "upstream_error",
        status: int = 0,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.permanent = permanent
        self.code = code
        self.status = status  # the upstream's HTTP status, when it answered with one
        # Seconds the upstream asked to wait (a 429's Retry-After), if it said.
        self.retry_after = retry_after


def retry_after_of(headers) -> float | None:
    """A Retry-After header's seconds (the numeric form; an HTTP date is not used upstream)."""
    value = (headers or {}).get("retry-after") if headers is not None else None
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class SyncAnswer:
    """A synchronous call's answer: the HTTP status and body a caller's SDK would get."""

    status: int
    body: str  # JSON text


@dataclass(frozen=True)
class Upstream:
    name: str
    kind: str
    base_url: str
    key_env: str
    models: tuple[str, ...]  # names or shell-style patterns (`claude-*`); `*` serves any
    api_version: str = ""
    # A batch's window and limits where a provider has its own (Groq, Together, Mistral): ""
    # and 0 mean the kind's defaults (upstreams.KIND_DEFAULTS).
    completion_window: str = ""
    max_requests: int = 0
    max_bytes: int = 0
    min_requests: int = 0  # the fewest a batch may hold (Bedrock's jobs); 0: the kind's

    def serves(self, model: str) -> bool:
        return any(fnmatchcase(model, pattern) for pattern in self.models)

    def api_key(self) -> str:
        """Read at call time, from the environment only."""
        return os.environ.get(self.key_env, "")


class Transport(ABC):
    """One upstream's Batch API. Every method raises `UpstreamError` on failure.

    Calls that create something upstream (upload, create) are never retried blindly: a lost
    response followed by a retry would make a second file or batch. The engine looks for it
    (`find_batch`, `find_files`) before it tries again on a later tick.
    """

    def __init__(self, upstream: Upstream):
        self.upstream = upstream

    def takes_inline(self, input_bytes: int) -> bool:
        """True when a batch of this size goes with its requests inline (`create_inline`),
        with no file to upload first."""
        return False

    def create_inline(
        self, *, requests: Iterable[tuple[str, str]], model: str, metadata: dict[str, str]
    ) -> dict:
        """Create a batch of (custom_id, canonical JSON body) requests; OpenAI's Batch shape."""
        raise NotImplementedError

    def input_line(self, custom_id, endpoint: str, body: str) -> str:
        """One line of an input file: OpenAI's `{"custom_id", "method", "url", "body"}`."""
        return jsonl_line(custom_id, endpoint, body)

    # Synchronous sends (batches_app.tiers): the same request body, answered now. A kind
    # without them (SYNC False) leaves every request to its batch, whatever its deadline.
    SYNC = False
    FLEX = "flex"
    STANDARD = "standard"

    @classmethod
    def offers_sync(cls, endpoint: str) -> bool:
        """Whether a request of this endpoint can be sent synchronously (a kind may take fewer
        than SYNC_ENDPOINTS)."""
        return cls.SYNC

    def offers_flex(self) -> bool:
        """Whether this kind has a flex tier at all (which models: the FlexModel table)."""
        return False

    def send(self, *, endpoint: str, body: str, tier: str, timeout: float) -> SyncAnswer:
        """Send one request synchronously at `tier` (flex or standard) and return its answer.

        A 2xx or an error that is the request's own (a 4xx other than 429) is its answer; a
        refused flex call (429 `resource_unavailable`), a 429, a 5xx, a timeout or a
        connection error raises a transient `UpstreamError` (with `retry_after` when said).
        Never retried here: the caller records its intent first and decides.
        """
        raise NotImplementedError

    @abstractmethod
    def upload_file(self, path: Path, filename: str) -> str:
        """Upload a JSONL input file; its id."""

    @abstractmethod
    def create_batch(
        self, *, input_file_id: str, endpoint: str, model: str, metadata: dict[str, str]
    ) -> dict:
        """Create the batch; the upstream batch in OpenAI's shape (`id`, `status`, ...)."""

    @abstractmethod
    def retrieve_batch(self, batch_id: str) -> dict:
        """The batch in OpenAI's shape: `status`, `output_file_id`, `error_file_id`, ..."""

    @abstractmethod
    def cancel_batch(self, batch_id: str) -> dict: ...

    @abstractmethod
    def find_batch(
        self, *, key: str, value: str, attempted_at: float, request_count: int, known: frozenset
    ) -> dict | None:
        """The batch an interrupted create made, attempted at `attempted_at` (Unix time):
        the one whose metadata has key=value, or (for kinds without metadata) one of
        `request_count` requests whose id is not among the `known` ones of other batches."""

    @abstractmethod
    def find_files(self, *, filename: str) -> Iterator[str]:
        """The ids of the input files with this name."""

    @abstractmethod
    def iter_file_lines(self, file_id: str) -> Iterator[str]:
        """A result file's lines, streamed, in OpenAI's output line shape."""

    @abstractmethod
    def delete_file(self, file_id: str) -> None:
        """Delete a file; one already gone counts as deleted."""
