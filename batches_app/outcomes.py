"""What happens to each request when its batch ends (CONTRACT.md §2, "Outcomes").

Every write here only touches requests that are still `submitted` in the batch being ingested,
so ingesting the same file twice (after a crash, or two pollers at once) changes nothing.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import orjson
from django.conf import settings
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from batchproxy.utils import batched
from requests_app.models import BatchRequest

from .models import Batch

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
)


@dataclass(frozen=True, slots=True)
class LineOutcome:
    """One output or error line: an answer to deliver, or a retryable failure."""

    custom_id: str
    status_code: int | None
    body: str | None
    error_code: str = ""
    error_message: str = ""

    @property
    def delivers(self) -> bool:
        code = self.status_code
        return code is not None and code < 500 and code != 429

    @classmethod
    def parse(cls, line: str) -> "LineOutcome":
        data = orjson.loads(line)
        response = data.get("response")
        if response:
            body = response.get("body")
            code = response.get("status_code")
            if code == 200:
                return cls(data["custom_id"], code, orjson.dumps(body).decode())
            error = (body or {}).get("error") if isinstance(body, dict) else None
            return cls(
                data["custom_id"],
                code,
                orjson.dumps(body).decode(),
                (error or {}).get("code")
                or ("rate_limit_exceeded" if code == 429 else "server_error"),
                (error or {}).get("message") or f"The upstream answered HTTP {code}.",
            )
        error = data.get("error") or {}
        return cls(
            data["custom_id"],
            None,
            None,
            error.get("code") or "server_error",
            error.get("message") or "The upstream gave no answer for this request.",
        )


def lines_apply(*, batch: Batch, lines: Iterable[str], chunk_size: int = 1000) -> int:
    """Write back the outcome of each line; return how many requests it settled."""
    settled = 0
    for chunk in batched(lines, chunk_size):
        outcomes = {o.custom_id: o for o in map(LineOutcome.parse, chunk)}
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
        rows = []
        for pk, attempts in pending:
            outcome = outcomes[str(pk)]
            row = BatchRequest(
                pk=pk,
                finished_at=now,
                batch=batch,
                not_before=None,
                error_code=outcome.error_code,
                error_message=outcome.error_message,
            )
            if outcome.delivers:
                row.status = Status.COMPLETED
                row.response_status, row.response_body = outcome.status_code, outcome.body
            elif attempts >= settings.MAX_ATTEMPTS:
                row.status = Status.FAILED
                row.response_status = row.response_body = None
            else:
                row.status, row.batch, row.finished_at = Status.QUEUED, None, None
                row.response_status = row.response_body = None
            rows.append(row)
        BatchRequest.objects.bulk_update(rows, LINE_FIELDS, batch_size=500)
    return len(rows)


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
    """Decide the requests the batch's files did not answer, by how the batch ended."""
    rest = _unsettled(batch)
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
    if any(e.get("code") == "token_limit_exceeded" for e in errors):
        deferrals = rest.values_list("deferrals", flat=True).first() or 0
        delay = min(settings.TOKEN_LIMIT_BACKOFF * 2**deferrals, TOKEN_LIMIT_CAP)
        rest.update(deferrals=F("deferrals") + 1)
        requests_requeue_unspent(
            rest,
            code="token_limit_exceeded",
            message=first.get("message", ""),
            delay=timedelta(seconds=delay),
        )
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
