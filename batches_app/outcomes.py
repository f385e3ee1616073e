"""What happens to each request when its batch ends (CONTRACT.md §2, "Outcomes").

Every write here only touches requests that are still `submitted` in the batch being ingested,
so ingesting the same file twice (after a crash, or two pollers at once) changes nothing.
"""

import json
import logging
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from requests_app.models import BatchRequest, ResponseChunk
from requests_app.webhooks import webhook_events_record

from . import capacity
from .models import Batch
from .usage import answer_usage, usage_tokens

log = logging.getLogger(__name__)
Status = BatchRequest.Status
TOKEN_LIMIT_CAP = 6 * 3600
LINE_FIELDS = (
    "status",
    "response_status",
    "response_body",
    "error_code",
    "error_message",
    "finished_at",
    "batch",
    "not_before",
    "input_tokens",
    "output_tokens",
    "output_images",
    "response_chunks",
    "response_bytes",
)
# Characters per ResponseChunk row: a large answer is read back one such piece at a time.
RESPONSE_CHUNK_CHARS = 65_536


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """One output or error line: an answer to deliver, or a failure (retryable or not)."""

    custom_id: str
    status_code: int | None
    body: str | None
    error_code: str = ""
    error_message: str = ""
    tokens: tuple[int | None, int | None] = (None, None)
    images: int | None = None
    body_bytes: int = 0
    permanent: bool = False  # retrying would only bring the same failure back

    @property
    def delivers(self) -> bool:
        code = self.status_code
        return code is not None and code < 500 and code != 429 and not self.permanent

    @classmethod
    def parse(cls, line: str) -> "LineOutcome":
        loads, dumps = _codec(line)
        data = loads(line)
        response = data.get("response")
        if response:
            body = response.get("body")
            code = response.get("status_code")
            raw = dumps(body)
            if len(raw) > settings.MAX_RESPONSE_BYTES:
                return cls(
                    data["custom_id"],
                    code,
                    None,
                    "response_too_large",
                    f"The answer has {len(raw)} bytes; the proxy keeps at most "
                    f"{settings.MAX_RESPONSE_BYTES} (MAX_RESPONSE_BYTES).",
                    permanent=True,
                )
            if code == 200:
                return cls(
                    data["custom_id"],
                    code,
                    raw.decode(),
                    tokens=usage_tokens(answer_usage(body)),
                    images=_image_count(body),
                    body_bytes=len(raw),
                )
            error = (body or {}).get("error") if isinstance(body, dict) else None
            return cls(
                data["custom_id"],
                code,
                raw.decode(),
                _error_code(error or {}, code),
                (error or {}).get("message") or f"The upstream answered HTTP {code}.",
                body_bytes=len(raw),
            )
        error = data.get("error") or {}
        return cls(
            data["custom_id"],
            None,
            None,
            error.get("code") or "server_error",
            error.get("message") or "The upstream gave no answer for this request.",
        )


def _compact_json(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _codec(line: str) -> tuple:
    """orjson for ordinary lines; the standard library for large ones (images), where orjson
    takes about ten times the line's size in working memory and the standard library one."""
    if len(line) <= settings.RESPONSE_INLINE_BYTES:
        return orjson.loads, orjson.dumps
    return json.loads, _compact_json


def _error_code(error: dict, status: int) -> str:
    """The code of an error body: OpenAI's `code`, Gemini's `status`, Anthropic's `type`."""
    for code in (error.get("code"), error.get("status")):
        if isinstance(code, str) and code:
            return code
    if status == 429:
        return "rate_limit_exceeded"
    return error.get("type") or "server_error"


def _image_count(body) -> int | None:
    """What per-unit prices count in an answer: the images of an ImagesResponse (`created` and
    `data` of url/b64_json items), the seconds of a video; None for anything else."""
    if isinstance(body, dict) and body.get("object") == "video":
        seconds = str(body.get("seconds") or "")
        return int(seconds) if seconds.isdigit() else None
    if not (isinstance(body, dict) and "created" in body and isinstance(body.get("data"), list)):
        return None
    return sum(1 for item in body["data"] if isinstance(item, dict) and "embedding" not in item)


# Where a line too broken to parse names its request: its `custom_id`, if that much is left.
CUSTOM_ID = re.compile(r'"custom_id"\s*:\s*"([0-9a-fA-F-]{32,36})"')
UNREADABLE = "invalid_result_line"


def _outcome_of(line: str) -> LineOutcome | None:
    """A line's outcome; a line that cannot be read (truncated, not JSON, not the shape) fails
    its request like an upstream error, retried by the usual rules, instead of stopping the
    ingest. None when not even the request it answers can be told (the request is settled
    with the batch's rest) or when it names no request of ours."""
    try:
        outcome = LineOutcome.parse(line)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        match = CUSTOM_ID.search(line[:1000])
        log.warning("unreadable result line (%s) for %s", type(exc).__name__, match and match[1])
        if match is None:
            return None
        message = "The upstream's result line for this request could not be read."
        outcome = LineOutcome(match[1], None, None, UNREADABLE, message)
    try:
        custom_id = str(uuid.UUID(str(outcome.custom_id)))
    except ValueError:
        log.warning("result line for an unknown custom_id %r", str(outcome.custom_id)[:100])
        return None
    return outcome if custom_id == outcome.custom_id else replace(outcome, custom_id=custom_id)


def _outcome_chunks(
    lines: Iterable[str], max_lines: int, max_bytes: int
) -> Iterator[dict[str, LineOutcome]]:
    """Parsed lines, a chunk at a time: at most `max_lines` lines and about `max_bytes` of
    answers (a chunk is closed once it reaches that), so that large answers (images) are
    never held a thousand at a time."""
    chunk: dict[str, LineOutcome] = {}
    size = 0
    for line in lines:
        outcome = _outcome_of(line)
        if outcome is None:
            continue
        chunk[outcome.custom_id] = outcome
        size += outcome.body_bytes
        if len(chunk) >= max_lines or size >= max_bytes:
            yield chunk
            chunk, size = {}, 0
    if chunk:
        yield chunk


def lines_apply(
    *,
    batch: Batch,
    lines: Iterable[str],
    chunk_size: int = 1000,
    chunk_bytes: int | None = None,
) -> int:
    """Write back the outcome of each line; return how many requests it settled."""
    settled = 0
    max_bytes = chunk_bytes or settings.INGEST_CHUNK_BYTES
    for outcomes in _outcome_chunks(lines, chunk_size, max_bytes):
        settled += _apply_chunk(batch, outcomes)
    return settled


def _apply_chunk(batch: Batch, outcomes: dict[str, LineOutcome]) -> int:
    now = timezone.now()
    with transaction.atomic():
        pending = (
            BatchRequest.objects.select_for_update()
            .filter(batch=batch, status=Status.SUBMITTED, pk__in=list(outcomes))
            .values_list("pk", "attempts")
        )
        rows, large = [], []
        for pk, attempts in pending:
            outcome = outcomes[str(pk)]
            tokens, images, stored = (None, None), None, (0, None)
            if outcome.delivers:
                status, code, body = Status.COMPLETED, outcome.status_code, outcome.body
                finished_at, batch_id, tokens = now, batch.pk, outcome.tokens
                images, stored = outcome.images, (0, outcome.body_bytes)
                if outcome.body_bytes > settings.RESPONSE_INLINE_BYTES:
                    large.append((pk, body))
                    body, stored = None, (_chunk_count(outcome.body), outcome.body_bytes)
            elif outcome.permanent or attempts >= settings.MAX_ATTEMPTS:
                status, code, body, finished_at, batch_id = Status.FAILED, None, None, now, batch.pk
            else:
                status, code, body, finished_at, batch_id = Status.QUEUED, None, None, None, None
            # In the order of LINE_FIELDS, then the key.
            error_code, error_message = outcome.error_code, outcome.error_message
            values = (status, code, body, error_code, error_message, finished_at, batch_id)
            rows.append((*values, None, *tokens, images, *stored, pk))
        rows_update(rows, now)
        _store_chunks(large)
        # Counted with the lines it settles, so ingesting a file twice counts nothing twice.
        images = sum(row[LINE_FIELDS.index("output_images")] or 0 for row in rows)
        if images:
            Batch.objects.filter(pk=batch.pk).update(output_images=F("output_images") + images)
        webhook_events_record(requests=BatchRequest.objects.filter(batch=batch, finished_at=now))
    return len(rows)


def _chunk_count(body: str) -> int:
    return -(-len(body) // RESPONSE_CHUNK_CHARS)


def _store_chunks(large: list[tuple]) -> None:
    """Keep each large answer as ResponseChunk rows, in order (see requests_app.models)."""
    if not large:
        return
    ResponseChunk.objects.filter(request_id__in=[pk for pk, _ in large]).delete()
    for pk, body in large:
        ResponseChunk.objects.bulk_create(
            ResponseChunk(request_id=pk, seq=seq, data=body[start : start + RESPONSE_CHUNK_CHARS])
            for seq, start in enumerate(range(0, len(body), RESPONSE_CHUNK_CHARS))
        )


def rows_update(rows: list[tuple], now: datetime, names: tuple[str, ...] = LINE_FIELDS) -> None:
    """Set the fields `names` of each request (rows: their values, then the key) in one
    statement, and its `updated_at` to `now`.

    Every line has its own answer, and Django's bulk_update builds a CASE expression per field
    and row whose construction costs about a millisecond of Python per row (50,000 results took
    minutes). An UPDATE joined to a VALUES list of the rows does the same in one statement, on
    PostgreSQL and SQLite alike.
    """
    if not rows:
        return
    meta = BatchRequest._meta
    fields = [meta.get_field(name) for name in names] + [meta.pk]
    quote = connection.ops.quote_name
    names = [quote(field.column) for field in fields]
    if connection.vendor == "postgresql":
        # A VALUES column of NULLs alone would be text: say each column's type.
        values = [
            f"CAST(v.{n} AS {f.cast_db_type(connection)})"
            for n, f in zip(names, fields, strict=True)
        ]
    else:
        values = [f"v.{name}" for name in names]
    table, key = quote(meta.db_table), names[-1]
    row_sql = "(" + ", ".join(["%s"] * len(fields)) + ")"
    sql = (
        f"WITH v ({', '.join(names)}) AS (VALUES {', '.join([row_sql] * len(rows))}) "  # noqa: S608 (names from the model)
        f"UPDATE {table} SET "
        + ", ".join(
            f"{name} = {value}" for name, value in zip(names[:-1], values[:-1], strict=True)
        )
        + f", {quote(meta.get_field('updated_at').column)} = %s"
        + f" FROM v WHERE {table}.{key} = {values[-1]}"
    )
    params = [
        field.get_db_prep_save(value, connection)
        for row in rows
        for field, value in zip(fields, row, strict=True)
    ]
    params.append(meta.get_field("updated_at").get_db_prep_save(now, connection))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _unsettled(batch: Batch) -> QuerySet:
    return BatchRequest.objects.filter(batch=batch, status=Status.SUBMITTED)


def requests_retry(requests: QuerySet, *, code: str, message: str) -> int:
    """Requeue what has attempts left; fail for good what has none."""
    now = timezone.now()
    failed = requests.filter(attempts__gte=settings.MAX_ATTEMPTS).update(
        status=Status.FAILED,
        error_code=code,
        error_message=message,
        finished_at=now,
        updated_at=now,
    )
    requeued = requests.filter(attempts__lt=settings.MAX_ATTEMPTS).update(
        status=Status.QUEUED,
        batch=None,
        error_code=code,
        error_message=message,
        updated_at=now,
    )
    return failed + requeued


def requests_requeue_unspent(
    requests: QuerySet, *, code: str, message: str, delay: timedelta | None = None
) -> int:
    """Requeue without spending an attempt: the batch failed through no fault of these requests."""
    now = timezone.now()
    return requests.update(
        status=Status.QUEUED,
        batch=None,
        attempts=F("attempts") - 1,
        error_code=code,
        error_message=message,
        not_before=(now + delay) if delay else None,
        updated_at=now,
    )


def batch_settle_rest(*, batch: Batch) -> None:
    """Decide the requests the batch's files did not answer, by how the batch ended.

    One transaction: a crash halfway must not leave a token-limit deferral counted twice.
    """
    with transaction.atomic():
        started = timezone.now()
        _settle_rest(batch, _unsettled(batch))
        webhooks_for_settled(batch=batch, since=started)


def webhooks_for_settled(*, batch: Batch, since: datetime) -> None:
    """Outbox events for the requests of `batch` that ended since `since` (every path that
    ends a request sets its `finished_at`); in the caller's transaction."""
    webhook_events_record(requests=BatchRequest.objects.filter(batch=batch, finished_at__gte=since))


def _settle_rest(batch: Batch, rest: QuerySet) -> None:
    status = batch.upstream_status
    if batch.cancel_mode == Batch.CancelMode.CANCEL:
        rest.update(
            status=Status.CANCELLED,
            error_code="batch_cancelled",
            error_message="Cancelled by an operator.",
            finished_at=timezone.now(),
        )
    elif batch.cancel_mode == Batch.CancelMode.REQUEUE:
        requests_requeue_unspent(
            rest,
            code="batch_cancelled",
            message="Its batch was cancelled by an operator; requeued.",
        )
    elif status == "failed":
        _settle_failed(batch, rest)
    elif status in ("expired", "cancelled"):
        requests_retry(
            rest, code=f"batch_{status}", message=f"The batch was {status} before this request ran."
        )
    else:
        requests_retry(
            rest,
            code="missing_result",
            message="The batch ended without a result for this request.",
        )


def _settle_failed(batch: Batch, rest: QuerySet) -> None:
    errors = (batch.errors or {}).get("data") or [{"code": "batch_failed", "message": ""}]
    first = errors[0]
    refusal = next((e for e in errors if e.get("code") == "token_limit_exceeded"), None)
    if refusal is not None:
        _settle_token_limit(batch, rest, refusal.get("message") or "")
        return
    bad_lines = {e["line"]: e for e in errors if isinstance(e.get("line"), int)}
    if not bad_lines:
        requests_retry(
            rest,
            code=first.get("code") or "batch_failed",
            message=first.get("message") or "The batch failed upstream.",
        )
        return
    # Lines are numbered from 1 in the order the input file was written: by request id.
    ids = list(BatchRequest.objects.filter(batch=batch).order_by("pk").values_list("pk", flat=True))
    for line, error in bad_lines.items():
        if 1 <= line <= len(ids):
            rest.filter(pk=ids[line - 1]).update(
                status=Status.FAILED,
                error_code=error.get("code") or "invalid_request",
                error_message=error.get("message") or "",
                finished_at=timezone.now(),
            )
    requests_requeue_unspent(
        rest,
        code="batch_failed",
        message="Another request made the batch fail validation; requeued.",
    )


def _settle_token_limit(batch: Batch, rest: QuerySet, message: str) -> None:
    """The batch went over the model's enqueued-token limit: learn a lower budget from it.

    Several requests: requeued at once, without spending attempts; the next flush splits them
    into batches that fit the lowered budget. One request alone over the limit the refusal
    states never fits: it fails for good. One request within it (the queue is shared with
    someone else): requeued after a back-off that doubles with each refusal.
    """
    stated = capacity.budget_learn(batch=batch, message=message)
    if batch.request_count > 1:
        requests_requeue_unspent(rest, code="token_limit_exceeded", message=message)
        return
    if stated is not None and batch.counted_tokens > stated:
        rest.update(
            status=Status.FAILED,
            error_code="token_limit_exceeded",
            error_message=capacity.too_large_message(
                tokens=batch.counted_tokens, limit=stated, model=batch.model
            ),
            finished_at=timezone.now(),
        )
        return
    deferrals = rest.values_list("deferrals", flat=True).first() or 0
    delay = min(settings.TOKEN_LIMIT_BACKOFF * 2**deferrals, TOKEN_LIMIT_CAP)
    rest.update(deferrals=F("deferrals") + 1)
    requests_requeue_unspent(
        rest, code="token_limit_exceeded", message=message, delay=timedelta(seconds=delay)
    )
