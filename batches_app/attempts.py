"""The attempt history of requests (RequestAttempt): one row per batch a request went in.

A row is opened for every request a batch takes (one insert per 2,000 requests, never a query
per request), and closed when the request goes on: into another batch, or requeued by an
operator. Closing copies what the request then says of its last batch (why it was requeued,
or how it ended), so no settling path of the engine needs to write here.
"""

from django.db.models import OuterRef, Subquery
from django.utils import timezone

from requests_app.models import BatchRequest

from .models import Batch, RequestAttempt


def attempts_close(*, request_ids, outcome: str = "", error: tuple[str, str] | None = None) -> int:
    """Close the open rows of these requests with `outcome` (default: each request's status)
    and `error` (default: each request's error code and message)."""
    request = BatchRequest.objects.filter(pk=OuterRef("request_id"))
    code, message = error or (
        Subquery(request.values("error_code")[:1]),
        Subquery(request.values("error_message")[:1]),
    )
    return RequestAttempt.objects.filter(request_id__in=request_ids, outcome="").update(
        outcome=outcome or Subquery(request.values("status")[:1]),
        error_code=code,
        error_message=message,
    )


def attempts_open(*, batch: Batch, request_ids, closing: str = "requeued") -> None:
    """Record that `batch` took these requests, closing the row of the batch each was in."""
    attempts_close(request_ids=request_ids, outcome=closing)
    now = timezone.now()
    RequestAttempt.objects.bulk_create(
        RequestAttempt(request_id=pk, batch=batch, started_at=now) for pk in request_ids
    )
