"""`GET /v1/batch_requests`: the key's finished requests, oldest finish first, by cursor.

DRF's CursorPagination keys its cursor on one field and counts ties by offset (capped at
1,000), but a whole chunk of an ingest (up to 50,000 requests of an expired batch) finishes
at one instant. This cursor is the pair (finished_at, id), which is unique, so each request
comes exactly once across pages however many share a timestamp. A cursor is returned on
every page, the last one too: a caller keeps it and asks later for what finished since.
`after` also takes the id of the last request of the previous page, as OpenAI's list
endpoints do (`last_id`, and what the SDKs' auto-pagination sends): that request's own
(finished_at, id) is then the cursor.
"""

import base64
import binascii
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import BasePagination
from rest_framework.response import Response

from .models import BatchRequest

FINISHED = (
    BatchRequest.Status.COMPLETED,
    BatchRequest.Status.FAILED,
    BatchRequest.Status.CANCELLED,
)


def cursor_encode(finished_at: datetime, request_id: uuid.UUID) -> str:
    raw = f"{finished_at.isoformat()}|{request_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cursor_decode(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, request_id = raw.split("|")
        finished_at = datetime.fromisoformat(when)
        if finished_at.tzinfo is None:
            raise ValueError(when)
        return finished_at, uuid.UUID(request_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        message = "Invalid cursor in 'after': pass a next_cursor or a last_id as given."
        raise ValidationError(message) from None


def cursor_from_after(after: str, queryset: QuerySet) -> tuple[datetime, uuid.UUID]:
    """The position `after` names: a `next_cursor`, or the id of a listed request."""
    try:
        request_id = uuid.UUID(after)
    except ValueError:
        return cursor_decode(after)
    finished_at = queryset.filter(pk=request_id).values_list("finished_at", flat=True).first()
    if finished_at is None:
        raise ValidationError(
            f"No finished request {after!r} of this key for 'after': pass a listed id or a "
            "next_cursor."
        )
    return finished_at, request_id


def finished_requests(*, queryset: QuerySet, statuses: str | None) -> QuerySet:
    """The finished requests of `queryset` with one of `statuses` (comma-separated; default:
    every finished state), excluding the last LIST_SETTLE_SECONDS: a request's `finished_at`
    is taken before its transaction commits, so a later-committing one could otherwise land
    behind a cursor already handed out."""
    wanted = [s.strip() for s in statuses.split(",")] if statuses else list(FINISHED)
    if unknown := set(wanted) - set(FINISHED):
        raise ValidationError(
            f"Unknown status {sorted(unknown)[0]!r}: use completed, failed or cancelled."
        )
    settled = timezone.now() - timedelta(seconds=settings.LIST_SETTLE_SECONDS)
    return queryset.filter(status__in=wanted, finished_at__lte=settled)


def _page_within_bytes(ordered: QuerySet, limit: int) -> tuple[list, bool]:
    """Up to `limit` rows with their answers, but no more of them than LIST_MAX_BYTES of
    answers (one at least): a thousand answers of 256 KB each would be parsed and rendered
    whole. The sizes are read first, without the answers; the page ends where they add up."""
    sizes = ordered.values_list("pk", "response_bytes", "response_chunks")[: limit + 1]
    ids, total = [], 0
    for pk, size, chunks in sizes:
        size = 0 if chunks else (size or 0)  # a chunked answer is omitted from the list
        if len(ids) == limit or (ids and total + size > settings.LIST_MAX_BYTES):
            return list(ordered.filter(pk__in=ids)), True
        ids.append(pk)
        total += size
    return list(ordered.filter(pk__in=ids)), False


class FinishedCursorPagination(BasePagination):
    cursor_query_param = "after"
    page_size = 100
    max_page_size = 1000

    def paginate_queryset(self, queryset, request, view=None):
        self.after = request.query_params.get(self.cursor_query_param) or None
        limit = request.query_params.get("limit") or str(self.page_size)
        if not limit.isdigit() or not 1 <= int(limit) <= self.max_page_size:
            raise ValidationError(f"'limit' must be a whole number from 1 to {self.max_page_size}.")
        if self.after:
            finished_at, request_id = cursor_from_after(self.after, queryset)
            queryset = queryset.filter(
                Q(finished_at__gt=finished_at) | Q(finished_at=finished_at, pk__gt=request_id)
            )
        ordered = queryset.order_by("finished_at", "pk")
        if getattr(view, "include_body", lambda: False)():
            self.page, self.has_more = _page_within_bytes(ordered, int(limit))
            return self.page
        rows = list(ordered[: int(limit) + 1])
        self.has_more = len(rows) > int(limit)
        self.page = rows[: int(limit)]
        return self.page

    def get_paginated_response(self, data):
        last = self.page[-1] if self.page else None
        return Response(
            {
                "object": "list",
                "data": data,
                "first_id": str(self.page[0].pk) if self.page else None,
                "last_id": str(last.pk) if last else None,
                "has_more": self.has_more,
                # With nothing new, the caller's own cursor stays the place to ask from.
                "next_cursor": cursor_encode(last.finished_at, last.pk) if last else self.after,
            }
        )

    def get_schema_operation_parameters(self, view):
        return [
            {
                "name": self.cursor_query_param,
                "in": "query",
                "required": False,
                "description": (
                    "The `next_cursor` of the previous page, or its `last_id` (OpenAI's"
                    " `after`): only what finished since."
                ),
                "schema": {"type": "string"},
            },
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": f"Requests per page, 1 to {self.max_page_size}.",
                "schema": {"type": "integer", "minimum": 1, "maximum": self.max_page_size},
            },
        ]

    def get_paginated_response_schema(self, schema):
        return {
            "type": "object",
            "required": ["object", "data", "has_more", "next_cursor"],
            "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "data": schema,
                "first_id": {"type": "string", "nullable": True},
                "last_id": {"type": "string", "nullable": True},
                "has_more": {"type": "boolean"},
                "next_cursor": {"type": "string", "nullable": True},
            },
        }
