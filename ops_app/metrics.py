"""Prometheus figures, read from the database at scrape time.

Nothing is counted in process memory: any web process on any machine answers /metrics with
the same figures, including the upstream calls that scheduler processes made elsewhere.
"""

import contextlib
import functools
import logging
import time
from datetime import UTC, datetime

from django.db import IntegrityError, transaction
from django.db.models import Count, F, Min
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from requests_app.models import BatchRequest

from .models import LATENCY_BUCKETS, UpstreamCallStat, bucket_field

log = logging.getLogger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- Recording upstream calls ---------------------------------------------------------------


def upstream_call_record(*, operation: str, outcome: str, seconds: float) -> None:
    """Add one call to the shared counters: an atomic increment, created on first use."""
    increments = {"count": F("count") + 1, "seconds_sum": F("seconds_sum") + seconds}
    for bound in LATENCY_BUCKETS:
        if seconds <= bound:
            increments[bucket_field(bound)] = F(bucket_field(bound)) + 1
    stats = UpstreamCallStat.objects.filter(operation=operation, outcome=outcome)
    if stats.update(**increments):
        return
    try:
        with transaction.atomic():
            UpstreamCallStat.objects.create(operation=operation, outcome=outcome)
    except IntegrityError:
        pass  # another process created it first
    stats.update(**increments)


@contextlib.contextmanager
def upstream_observed(operation: str):
    """Time the upstream call made inside, and count its outcome (an error's code, or "ok").

    A failure to record is logged and swallowed: metrics never break the batch engine.
    """
    started = time.monotonic()
    outcome = "ok"
    try:
        yield
    except Exception as exc:
        outcome = str(getattr(exc, "code", None) or type(exc).__name__)[:100]
        raise
    finally:
        try:
            upstream_call_record(
                operation=operation[:64], outcome=outcome, seconds=time.monotonic() - started
            )
        except Exception:
            log.warning("could not record an upstream call in the metrics", exc_info=True)


def observe_upstream(call):
    """Decorate batches_app.upstream._call: observe each call, named after the SDK method."""

    @functools.wraps(call)
    def observed(fn, *args, **kwargs):
        with upstream_observed(
            getattr(fn, "__qualname__", getattr(fn, "__name__", "call")).lower()
        ):
            return call(fn, *args, **kwargs)

    return observed


# --- The collector --------------------------------------------------------------------------


def _queue(now: datetime) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    depth = GaugeMetricFamily(
        "batchproxy_queue_depth",
        "Requests waiting for an answer, per endpoint, model and status (queued or submitted).",
        labels=["endpoint", "model", "status"],
    )
    oldest = GaugeMetricFamily(
        "batchproxy_queue_oldest_age_seconds",
        "Age of the oldest queued (not yet submitted) request, per endpoint and model.",
        labels=["endpoint", "model"],
    )
    rows = (
        BatchRequest.objects.filter(status__in=BatchRequest.PENDING)
        .values("endpoint", "model", "status")
        .annotate(n=Count("pk"), first=Min("created_at"))
        .order_by()
    )
    for row in rows:
        depth.add_metric([row["endpoint"], row["model"], row["status"]], row["n"])
        if row["status"] == BatchRequest.Status.QUEUED:
            age = (now - row["first"]).total_seconds()
            oldest.add_metric([row["endpoint"], row["model"]], max(age, 0.0))
    return depth, oldest


def _requests() -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(
        "batchproxy_requests",
        "Requests held, by status: completed ones are answered (until RESULT_RETENTION), "
        "failed and cancelled ones are answered with an error.",
        labels=["status"],
    )
    counts = dict(BatchRequest.objects.values_list("status").annotate(n=Count("pk")).order_by())
    for status in BatchRequest.Status.values:
        gauge.add_metric([status], counts.get(status, 0))
    return gauge


def _batches() -> GaugeMetricFamily:
    from batches_app.models import Batch

    gauge = GaugeMetricFamily(
        "batchproxy_batches",
        "Batches by the proxy's state and the upstream status.",
        labels=["state", "upstream_status"],
    )
    rows = Batch.objects.values_list("state", "upstream_status").annotate(n=Count("pk")).order_by()
    for state, upstream_status, n in rows:
        gauge.add_metric([state, upstream_status or "none"], n)
    return gauge


def _upstream_calls() -> tuple[HistogramMetricFamily, CounterMetricFamily]:
    latency = HistogramMetricFamily(
        "batchproxy_upstream_call_seconds",
        "Latency of calls to the upstream Batch API, per operation and outcome.",
        labels=["operation", "outcome"],
    )
    errors = CounterMetricFamily(
        "batchproxy_upstream_errors",
        "Failed calls to the upstream Batch API, per operation and error code.",
        labels=["operation", "code"],
    )
    for stat in UpstreamCallStat.objects.order_by("operation", "outcome"):
        buckets = [(f"{b:g}", getattr(stat, bucket_field(b))) for b in LATENCY_BUCKETS]
        buckets.append(("+Inf", stat.count))
        latency.add_metric([stat.operation, stat.outcome], buckets, stat.seconds_sum)
        if stat.outcome != "ok":
            errors.add_metric([stat.operation, stat.outcome], stat.count)
    return latency, errors


def _spend() -> list:
    """Tokens and money per model, over every batch the proxy has finished."""
    from batches_app.spend import PriceBook, spend_by_model

    tokens = CounterMetricFamily(
        "batchproxy_tokens", "Tokens used by finished batches.", labels=["model", "direction"]
    )
    saved = CounterMetricFamily(
        "batchproxy_saved_usd",
        "Money saved against synchronous prices (ModelPrice table); models with no price are "
        "left out, never counted as free.",
        labels=["model"],
    )
    spent = CounterMetricFamily(
        "batchproxy_spent_usd", "What the batches cost at Batch API prices.", labels=["model"]
    )
    for spend in spend_by_model(since=EPOCH, book=PriceBook()):
        tokens.add_metric([spend.label, "input"], spend.tokens_in)
        tokens.add_metric([spend.label, "output"], spend.tokens_out)
        if spend.priced:
            saved.add_metric([spend.label], float(spend.saved))
            spent.add_metric([spend.label], float(spend.spent))
    return [tokens, saved, spent]


def _capacity() -> list:
    """Each model's queue limit, its tokens upstream and waiting, and whether it waits."""
    from batches_app import capacity

    families = {
        "limit": GaugeMetricFamily(
            "batchproxy_queue_limit_tokens",
            "The upstream's enqueued-token limit (configured, or stated by a refusal).",
            labels=["model"],
        ),
        "budget": GaugeMetricFamily(
            "batchproxy_queue_budget_tokens",
            "Input tokens the proxy lets wait upstream (limit less margin, or learned).",
            labels=["model"],
        ),
        "upstream_tokens": GaugeMetricFamily(
            "batchproxy_queue_upstream_tokens",
            "Counted input tokens in the model's batches not finished upstream.",
            labels=["model"],
        ),
        "waiting_tokens": GaugeMetricFamily(
            "batchproxy_queue_waiting_tokens",
            "Counted input tokens of queued requests not yet in a batch.",
            labels=["model"],
        ),
    }
    waiting = GaugeMetricFamily(
        "batchproxy_waiting_for_capacity",
        "1 while the model's queued requests wait for queue capacity upstream.",
        labels=["model"],
    )
    for row in capacity.capacity_rows():
        for name, family in families.items():
            if row[name] is not None:
                family.add_metric([row["model"]], row[name])
        waiting.add_metric([row["model"]], 1 if row["waiting_since"] else 0)
    return [*families.values(), waiting]


def _webhooks() -> GaugeMetricFamily:
    from requests_app.models import WebhookDelivery, WebhookEvent

    gauge = GaugeMetricFamily(
        "batchproxy_webhook_deliveries",
        "Completion-webhook POSTs by status; `new` counts events not yet put into one.",
        labels=["status"],
    )
    counts = dict(WebhookDelivery.objects.values_list("status").annotate(n=Count("pk")).order_by())
    for status in WebhookDelivery.Status.values:
        gauge.add_metric([status], counts.get(status, 0))
    gauge.add_metric(["new"], WebhookEvent.objects.filter(delivery=None).count())
    return gauge


class DatabaseCollector(Collector):
    """Everything in /metrics, computed from the database when Prometheus scrapes."""

    def collect(self):
        now = timezone.now()
        yield from _queue(now)
        yield _requests()
        yield _batches()
        yield _webhooks()
        yield from _upstream_calls()
        yield from _spend()
        yield from _capacity()
