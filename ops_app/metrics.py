"""Prometheus figures, read from the database at scrape time.

Nothing is counted in process memory: any web process on any machine answers /metrics with
the same figures, including the upstream calls that scheduler processes made elsewhere.
"""

import contextlib
import functools
import logging
import time
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import Count, F, Min, Sum
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from requests_app.models import BatchRequest

from .models import LATENCY_BUCKETS, UpstreamCallStat, bucket_field

log = logging.getLogger(__name__)
# At most this many newly done batches are added to the totals per scrape.
TALLY_PER_SCRAPE = 10_000


# --- Recording upstream calls ---------------------------------------------------------------


def upstream_call_record(
    *, operation: str, outcome: str, seconds: float, upstream: str = "openai"
) -> None:
    """Add one call to the shared counters: an atomic increment, created on first use."""
    increments = {"count": F("count") + 1, "seconds_sum": F("seconds_sum") + seconds}
    for bound in LATENCY_BUCKETS:
        if seconds <= bound:
            increments[bucket_field(bound)] = F(bucket_field(bound)) + 1
    names = {"upstream": upstream, "operation": operation, "outcome": outcome}
    stats = UpstreamCallStat.objects.filter(**names)
    if stats.update(**increments):
        return
    try:
        with transaction.atomic():
            UpstreamCallStat.objects.create(**names)
    except IntegrityError:
        pass  # another process created it first
    stats.update(**increments)


@contextlib.contextmanager
def upstream_observed(operation: str, *, upstream: str = "openai"):
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
                upstream=upstream[:64],
                operation=operation[:64],
                outcome=outcome,
                seconds=time.monotonic() - started,
            )
        except Exception:
            log.warning("could not record an upstream call in the metrics", exc_info=True)


def observe_upstream(call):
    """Decorate a transport's `_call(upstream, fn, ...)`: observe each call, named after the
    SDK method, under the upstream's name."""

    @functools.wraps(call)
    def observed(upstream: str, fn, *args, **kwargs):
        with upstream_observed(
            getattr(fn, "__qualname__", getattr(fn, "__name__", "call")).lower(),
            upstream=upstream,
        ):
            return call(upstream, fn, *args, **kwargs)

    return observed


# --- The collector --------------------------------------------------------------------------


def _queue(now: datetime, labels) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    from batches_app.upstreams import upstream_route

    depth = GaugeMetricFamily(
        "batchproxy_queue_depth",
        "Requests waiting for an answer, per upstream (the one the model routes to now), "
        "endpoint, model and status (queued or submitted). Models no operator named (price "
        "table, queue limits) are summed under `other`.",
        labels=["upstream", "endpoint", "model", "status"],
    )
    oldest = GaugeMetricFamily(
        "batchproxy_queue_oldest_age_seconds",
        "Age of the oldest queued (not yet submitted) request, per upstream, endpoint and model.",
        labels=["upstream", "endpoint", "model"],
    )
    rows = (
        BatchRequest.objects.filter(status__in=BatchRequest.PENDING)
        .values("endpoint", "model", "status")
        .annotate(n=Count("pk"), first=Min("created_at"))
        .order_by()
    )
    depths: dict[tuple, int] = {}
    firsts: dict[tuple, datetime] = {}
    for row in rows:
        route = upstream_route(endpoint=row["endpoint"], model=row["model"])
        group = (route.name if route else "none", row["endpoint"], labels.label(row["model"]))
        place = (*group, row["status"])
        depths[place] = depths.get(place, 0) + row["n"]
        if row["status"] == BatchRequest.Status.QUEUED:
            firsts[group] = min(firsts.get(group, row["first"]), row["first"])
    for place, n in depths.items():
        depth.add_metric(list(place), n)
    for group, first in firsts.items():
        oldest.add_metric(list(group), max((now - first).total_seconds(), 0.0))
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
    """Unfinished batches are counted (a few, through the state index); done ones come from
    the totals (`SpendTotal`), never from reading every batch ever made."""
    from batches_app.models import Batch, SpendTotal

    gauge = GaugeMetricFamily(
        "batchproxy_batches",
        "Batches by upstream, the proxy's state and the upstream status (done ones: all the "
        "proxy ever finished, including those pruned since).",
        labels=["upstream", "state", "upstream_status"],
    )
    rows = (
        Batch.objects.filter(state__in=Batch.ACTIVE)
        .values_list("upstream", "state", "upstream_status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for upstream, state, upstream_status, n in rows:
        gauge.add_metric([upstream, state, upstream_status or "none"], n)
    done = (
        SpendTotal.objects.values_list("upstream", "upstream_status")
        .annotate(n=Sum("batches"))
        .order_by()
    )
    for upstream, upstream_status, n in done:
        gauge.add_metric([upstream, Batch.State.DONE, upstream_status or "none"], n)
    return gauge


def _upstream_calls() -> tuple[HistogramMetricFamily, CounterMetricFamily]:
    latency = HistogramMetricFamily(
        "batchproxy_upstream_call_seconds",
        "Latency of calls to the upstream Batch APIs, per upstream, operation and outcome.",
        labels=["upstream", "operation", "outcome"],
    )
    errors = CounterMetricFamily(
        "batchproxy_upstream_errors",
        "Failed calls to the upstream Batch APIs, per upstream, operation and error code.",
        labels=["upstream", "operation", "code"],
    )
    for stat in UpstreamCallStat.objects.order_by("upstream", "operation", "outcome"):
        buckets = [(f"{b:g}", getattr(stat, bucket_field(b))) for b in LATENCY_BUCKETS]
        buckets.append(("+Inf", stat.count))
        names = [stat.upstream, stat.operation]
        latency.add_metric([*names, stat.outcome], buckets, stat.seconds_sum)
        if stat.outcome != "ok":
            errors.add_metric([*names, stat.outcome], stat.count)
    return latency, errors


def _spend(model_labels) -> list:
    """Tokens and money per upstream and model, over every batch the proxy has finished."""
    from batches_app.spend import spend_totals

    labels = ["upstream", "model"]
    tokens = CounterMetricFamily(
        "batchproxy_tokens",
        "Tokens used by finished batches, per upstream, model and direction.",
        labels=[*labels, "direction"],
    )
    saved = CounterMetricFamily(
        "batchproxy_saved_usd",
        "Money saved against synchronous prices (ModelPrice table); models with no price are "
        "left out, never counted as free.",
        labels=labels,
    )
    spent = CounterMetricFamily(
        "batchproxy_spent_usd", "What the batches cost at Batch API prices.", labels=labels
    )
    for spend in spend_totals(labels=model_labels):
        names = [spend.upstream, spend.label]
        tokens.add_metric([*names, "input"], spend.tokens_in)
        tokens.add_metric([*names, "output"], spend.tokens_out)
        if spend.priced:
            saved.add_metric(names, float(spend.saved))
            spent.add_metric(names, float(spend.spent))
    return [tokens, saved, spent]


def _capacity(model_labels) -> list:
    """Each upstream and model's queue limit, its tokens upstream and waiting, and whether it
    waits (budgets are per upstream: each organisation has its own limit)."""
    from batches_app import capacity

    labels = ["upstream", "model"]
    families = {
        "limit": GaugeMetricFamily(
            "batchproxy_queue_limit_tokens",
            "The upstream's enqueued-token limit (configured, or stated by a refusal).",
            labels=labels,
        ),
        "budget": GaugeMetricFamily(
            "batchproxy_queue_budget_tokens",
            "Input tokens the proxy lets wait upstream (limit less margin, or learned).",
            labels=labels,
        ),
        "upstream_tokens": GaugeMetricFamily(
            "batchproxy_queue_upstream_tokens",
            "Counted input tokens in the model's batches not finished upstream.",
            labels=labels,
        ),
        "waiting_tokens": GaugeMetricFamily(
            "batchproxy_queue_waiting_tokens",
            "Counted input tokens of queued requests not yet in a batch.",
            labels=labels,
        ),
    }
    waiting = GaugeMetricFamily(
        "batchproxy_waiting_for_capacity",
        "1 while the model's queued requests wait for queue capacity upstream.",
        labels=labels,
    )
    folded: dict[tuple[str, str], dict] = {}
    for row in capacity.capacity_rows():
        names = (row["upstream"], model_labels.label(row["model"]))
        if names not in folded:
            folded[names] = dict(row)
            continue
        # Only `other` gathers several models: their tokens add up, no limit is theirs.
        into = folded[names]
        for name in ("upstream_tokens", "waiting_tokens"):
            into[name] = (into[name] or 0) + (row[name] or 0)
        into["waiting_since"] = into["waiting_since"] or row["waiting_since"]
    for names, row in folded.items():
        for name, family in families.items():
            if row[name] is not None:
                family.add_metric(list(names), row[name])
        waiting.add_metric(list(names), 1 if row["waiting_since"] else 0)
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
        from batches_app.spend import ModelLabels, spend_tally

        now = timezone.now()
        # Batches done since the last scrape join the totals (the hourly purge tallies the rest).
        spend_tally(limit=TALLY_PER_SCRAPE)
        labels = ModelLabels()
        yield from _queue(now, labels)
        yield _requests()
        yield _batches()
        yield _webhooks()
        yield from _upstream_calls()
        yield from _spend(labels)
        yield from _capacity(labels)
