"""The figures on the operator's dashboard, and the operator actions it offers.

Money (spent, saved, per model, key and day) is counted by `spend.py`; this module lays it out.
"""

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, F, Min, Q
from django.db.models.functions import TruncHour
from django.utils import timezone

from batchproxy.utils import batched
from requests_app.models import BatchRequest

from . import capacity, services
from .models import Batch
from .spend import PriceBook, Spend, batch_tokens, spend_by_key, spend_by_model, total
from .upstreams import upstream_key, upstream_route, upstreams_all

Status = BatchRequest.Status
CHUNK = 1000


# --- Health ---------------------------------------------------------------------------------


def queue_depth(*, now: datetime) -> list[dict]:
    """Waiting requests per endpoint and model (with the upstream the model routes to now):
    queued, submitted, and the oldest's age."""
    rows = (
        BatchRequest.objects.filter(status__in=BatchRequest.PENDING)
        .values("endpoint", "model")
        .annotate(
            queued=Count("pk", filter=Q(status=Status.QUEUED)),
            submitted=Count("pk", filter=Q(status=Status.SUBMITTED)),
            oldest=Min("created_at", filter=Q(status=Status.QUEUED)),
        )
        .order_by("endpoint", "model")
    )
    shown = []
    for row in rows:
        route = upstream_route(endpoint=row["endpoint"], model=row["model"])
        age = now - row["oldest"] if row["oldest"] else None
        shown.append(row | {"upstream": route.name if route else "none", "age": age})
    return shown


def finished_counts(*, since: datetime) -> dict:
    return BatchRequest.objects.filter(finished_at__gte=since).aggregate(
        completed=Count("pk", filter=Q(status=Status.COMPLETED)),
        failed=Count("pk", filter=Q(status=Status.FAILED)),
        cancelled=Count("pk", filter=Q(status=Status.CANCELLED)),
    )


def upstream_errors(*, since: datetime) -> dict:
    """Batches the proxy is retrying upstream, and request failures by upstream (their last
    batch's; none for a request failed before it reached one) and code."""
    retrying = list(
        Batch.objects.filter(state__in=Batch.ACTIVE, upstream_failures__gt=0)
        .order_by("-upstream_failures")
        .values("pk", "upstream", "model", "state", "upstream_failures", "last_error")[:10]
    )
    codes = list(
        BatchRequest.objects.filter(finished_at__gte=since)
        .exclude(error_code="")
        .values("error_code", upstream=F("batch__upstream"))
        .annotate(n=Count("pk"))
        .order_by("-n", "upstream", "error_code")[:10]
    )
    failed_batches = Batch.objects.filter(
        finished_at__gte=since, upstream_status__in=("failed", "expired")
    ).count()
    return {"retrying": retrying, "codes": codes, "failed_batches": failed_batches}


# --- Charts ---------------------------------------------------------------------------------


def _bars(points: list[tuple[str, dict]], keys: tuple[str, ...]) -> list[dict]:
    """Chart rows with each value's share of the tallest bar, for CSS widths/heights."""
    top = max((sum(v[k] for k in keys) for _, v in points), default=0) or 1
    rows = []
    for label, values in points:
        shares = {f"{k}_pct": float(values[k]) * 100 / float(top) for k in keys}
        rows.append({"label": label, **values, **shares})
    return rows


def hourly_requests(*, now: datetime) -> list[dict]:
    """Requests finished in each of the last 24 hours."""
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    rows = (
        BatchRequest.objects.filter(finished_at__gte=start)
        .annotate(hour=TruncHour("finished_at"))
        .values("hour")
        .annotate(
            completed=Count("pk", filter=Q(status=Status.COMPLETED)),
            failed=Count("pk", filter=Q(status=Status.FAILED)),
        )
    )
    by_hour = {row["hour"]: row for row in rows}
    points = []
    for i in range(24):
        hour = start + timedelta(hours=i)
        row = by_hour.get(hour, {})
        points.append(
            (
                hour.strftime("%m-%d %H:00"),
                {"completed": row.get("completed", 0), "failed": row.get("failed", 0)},
            )
        )
    return _bars(points, ("completed", "failed"))


def daily_money(*, now: datetime, book: PriceBook) -> list[dict]:
    """Money spent and saved on each of the last 30 days, from the batches that ended then."""
    first = (now - timedelta(days=29)).date()
    batches = list(
        Batch.objects.filter(
            state=Batch.State.DONE, finished_at__date__gte=first, finished_at__isnull=False
        ).values("pk", "model", "usage", "finished_at", "output_images")
    )
    tokens = batch_tokens(batches)
    days: dict = defaultdict(lambda: Spend(""))
    for b in batches:
        price = book.find(b["model"])
        days[b["finished_at"].date()].add(price, b["model"], *tokens[b["pk"]], b["output_images"])
    points = []
    for i in range(30):
        day = first + timedelta(days=i)
        spend = days.get(day) or Spend("")
        points.append((day.strftime("%m-%d"), {"spent": spend.spent, "saved": spend.saved}))
    return _bars(points, ("spent", "saved"))


# --- The page -------------------------------------------------------------------------------


def upstreams_shown() -> list[dict]:
    """The configured upstreams, in routing order: where each key is read from, never the key.

    In try-out mode every upstream is a built-in fake with a placeholder key, whatever the
    environment says; outside it, a key variable that is empty is named as not set.
    """
    shown = []
    for upstream in upstreams_all():
        if settings.TRY_OUT is not None:
            key = "a placeholder (try-out)"
        elif upstream_key(upstream):
            key = upstream.key_env
        else:
            key = f"{upstream.key_env} (not set: nothing is sent here)"
        shown.append(
            {
                "name": upstream.name,
                "kind": upstream.kind,
                "base_url": upstream.base_url,
                "key": key,
                "key_set": settings.TRY_OUT is not None or bool(upstream_key(upstream)),
                "models": ", ".join(upstream.models) or "(none)",
                "api_version": upstream.api_version,
            }
        )
    return shown


def dashboard_figures(*, now: datetime | None = None) -> dict:
    """Everything the dashboard shows, computed in a fixed number of queries."""
    now = now or timezone.now()
    book = PriceBook()
    day, month = now - timedelta(days=1), now - timedelta(days=30)
    oldest = BatchRequest.objects.filter(status=Status.QUEUED).aggregate(m=Min("created_at"))["m"]
    by_model_day = spend_by_model(since=day, book=book)
    by_model_month = spend_by_model(since=month, book=book)
    by_key_month = spend_by_key(since=month, book=book)
    queue = queue_depth(now=now)
    return {
        "now": now,
        "queue": queue,
        "capacity": capacity.capacity_rows(),
        "waiting_total": sum(row["queued"] + row["submitted"] for row in queue),
        "oldest_queued": oldest,
        "oldest_wait": now - oldest if oldest else None,
        "retention_days": round(settings.RESULT_RETENTION / 86400, 1),
        "batches_by_state": list(
            Batch.objects.values("upstream", "state")
            .annotate(n=Count("pk"))
            .order_by("upstream", "state")
        ),
        "upstreams": upstreams_shown(),
        "last_hour": finished_counts(since=now - timedelta(hours=1)),
        "last_day": finished_counts(since=day),
        "errors": upstream_errors(since=day),
        "by_model_day": by_model_day,
        "by_model_month": by_model_month,
        "by_key_month": by_key_month,
        "total_day": total(by_model_day),
        "total_month": total(by_model_month),
        "total_key_month": total(by_key_month),
        "hourly": (hourly := hourly_requests(now=now)),
        "daily": (daily := daily_money(now=now, book=book)),
        # The charts' scales: the tallest bar's value, and the labels under them.
        "hourly_top": max((p["completed"] + p["failed"] for p in hourly), default=0),
        "daily_top": max((p["spent"] + p["saved"] for p in daily), default=0),
        "hourly_ticks": [hourly[i]["label"] for i in (0, 8, 16, 23)],
        "daily_ticks": [daily[i]["label"] for i in (0, 10, 20, 29)],
        "total_requests_day": sum(p["completed"] for p in hourly),
        "failed_total": BatchRequest.objects.filter(status=Status.FAILED).count(),
        "try_out": settings.TRY_OUT is not None,
    }


# --- Operator actions -----------------------------------------------------------------------


@dataclass
class FlushReport:
    batches: int
    requests: int
    submitted: int
    failures: list[str]


def queue_flush_now(*, endpoint: str | None = None, model: str | None = None) -> FlushReport:
    """What `manage.py flush_batches` does: flush every waiting group now and submit it."""
    created = services.batch_flush(force=True, endpoint=endpoint or None, model=model or None)
    report = services.batches_advance(
        states=(Batch.State.BUILDING, Batch.State.UPLOADED), force=True
    )
    return FlushReport(
        batches=len(created),
        requests=sum(b.request_count for b in created),
        submitted=report.stepped - len(report.failures),
        failures=report.failures,
    )


def batches_poll_now(*, batch_ids=None) -> services.AdvanceReport:
    """What `manage.py poll_batches` does, for all running batches or the given ones."""
    states = (Batch.State.RUNNING, Batch.State.INGESTING)
    if batch_ids is None:
        return services.batches_advance(states=states, force=True)
    report = services.AdvanceReport()
    for pk in batch_ids:
        one = services.batches_advance(states=states, force=True, batch_id=pk)
        report.stepped += one.stepped
        report.failures += one.failures
    return report


def requests_retry_failed(*, request_ids=None) -> int:
    """Requeue failed requests (all of them, or those among `request_ids`) with fresh attempts."""
    failed = BatchRequest.objects.filter(status=Status.FAILED)
    if request_ids is not None:
        failed = failed.filter(pk__in=request_ids)
    ids = list(failed.values_list("pk", flat=True))
    return sum(services.requests_requeue(request_ids=chunk) for chunk in batched(ids, CHUNK))
