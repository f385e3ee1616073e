"""Deadlines: answer each request by its deadline at the cheapest tier that can (CONTRACT §1).

Three ways to answer a request: its batch (half price, minutes to hours), flex (half price,
synchronous, best effort; where the upstream kind and model offer it: `flex.py`, whose table
says which kinds have none: Anthropic, Mistral, Fireworks, Together) and standard (full price,
synchronous; every kind, for the endpoints its transport's `offers_sync` names).
On every tick (`deadlines_tick`):
1. Default deadlines are given to the pending requests that named none: their key's
   `default_deadline`, else DEFAULT_DEADLINE, counted from the first call.
2. A queued request whose deadline comes before the batch forecast's p90 plus DEADLINE_MARGIN
   is taken out of the queue for a synchronous send: flex where offered, else standard.
3. A request already in a batch whose deadline comes within reach of the synchronous forecast
   (p90 plus margin) is escalated the same way; its batch line, if it answers later, is
   recorded on the receipt (paid twice) and never served in place of the first answer.
4. Due sends are claimed, at most SYNC_CONCURRENCY in flight per upstream, and run in
   django-q2 workers (`request_send`), never in the flush, the poll or a web process (but for
   `X-Batch-Mode: now`, which the caller asked to wait for).
A group too small for a batch of its upstream (Bedrock's jobs take 100 records at least) is
sent the same way once it has waited BATCH_MIN_WAIT (`group_send_now`, called by the flush).

Crash safety. A send's intent is recorded before the call: `sync_started_at` (a lease of
SYNC_TIMEOUT plus a minute) and `sync_attempts` (the claim's token). Its answer is recorded by
compare-and-set on that token, so an answer is recorded once, and a late or second sender's
answer is not served. A worker that dies between the call and the record leaves the lease to
expire, and the request is sent again: synchronous sends are at-least-once (upstream APIs take
no idempotency key), and the receipt then counts only the send it recorded.

Flex refused (429 `resource_unavailable`, another 429, a 5xx, a timeout) is tried again after a
back-off (SYNC_BACKOFF, doubling; a 429's Retry-After when given) while the deadline still
leaves room for the standard tier's p90 and the margin; then it goes to the standard tier.
A request is sent synchronously SYNC_MAX_ATTEMPTS times at most (failures and lost workers
alike); then it is left to its batch (the one it is in, or the queue when the batch forecast
still meets its deadline), else failed for good with `sync_attempts_exhausted`.
"""

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson
from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Min, Q, QuerySet
from django.utils import timezone

from requests_app.models import ApiKey, BatchRequest, Endpoint
from requests_app.webhooks import webhook_events_record

from . import upstreams
from .flex import flex_offered
from .forecast import Forecast, forecast_get, timing_record
from .leases import batch_lease
from .receipts import receipt_costs
from .upstreams import Upstream, UpstreamError
from .upstreams.base import SyncAnswer
from .usage import answer_usage, usage_tokens

log = logging.getLogger(__name__)
Status = BatchRequest.Status
Tier = BatchRequest.Tier
PENDING = BatchRequest.PENDING
LEASE_SLACK = 60.0
# The endpoints whose synchronous answer is the answer itself. A video call answers with a job
# still running, and image answers are megabytes kept in pieces: those wait for their batch.
SYNC_ENDPOINTS = (
    Endpoint.RESPONSES,
    Endpoint.CHAT_COMPLETIONS,
    Endpoint.COMPLETIONS,
    Endpoint.EMBEDDINGS,
    Endpoint.MODERATIONS,
    Endpoint.MESSAGES,
    Endpoint.GENERATE_CONTENT,
    Endpoint.BEDROCK_CONVERSE,
    Endpoint.BEDROCK_INVOKE,
)
BACKOFF_CAP = 300.0


def crash_point(name: str) -> None:
    """Test-only: die here, as a `kill -9` would (services.crash_point's twin: no import
    circle)."""
    if name == settings.CRASH_AT:
        os._exit(137)


def _lease() -> timedelta:
    return timedelta(seconds=settings.SYNC_TIMEOUT + LEASE_SLACK)


def _margin() -> timedelta:
    return timedelta(seconds=settings.DEADLINE_MARGIN)


def sync_offered(upstream: Upstream | None, endpoint: str) -> bool:
    """Whether a request of this endpoint can be answered synchronously on this upstream."""
    if upstream is None or endpoint not in SYNC_ENDPOINTS:
        return False
    return upstreams.transport_class(upstream.kind).offers_sync(endpoint)


def tier_for(upstream: Upstream, model: str) -> str:
    """The cheapest synchronous tier of this model on this upstream."""
    if flex_offered(kind=upstream.kind, model=model):
        return Tier.FLEX
    return Tier.STANDARD


def forecast_for(*, upstream: Upstream, endpoint: str, model: str, tier: str) -> Forecast:
    return forecast_get(
        upstream=upstream.name, kind=upstream.kind, endpoint=endpoint, model=model, tier=tier
    )


@dataclass
class TickReport:
    defaulted: int = 0
    routed: int = 0
    escalated: int = 0
    sent: list = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{self.routed} routed to a synchronous tier, {self.escalated} escalated, "
            f"{len(self.sent)} sends started"
        )


def deadlines_tick(*, now: datetime | None = None, send: Callable | None = None) -> TickReport:
    """The four steps of the module's docstring; `send(request_id, token)` runs a claimed send
    (default: queued as a django-q2 task)."""
    now = now or timezone.now()
    report = TickReport()
    report.defaulted = deadlines_default(now=now)
    report.routed = requests_route(now=now)
    report.escalated = requests_escalate(now=now)
    report.sent = sends_dispatch(now=now, send=send)
    return report


def deadlines_default(*, now: datetime) -> int:
    """Give the pending requests without a deadline their key's default, else the proxy's."""
    changed = 0
    pending = BatchRequest.objects.filter(status__in=PENDING, deadline=None)
    keys = ApiKey.objects.filter(default_deadline__isnull=False).values_list(
        "pk", "default_deadline"
    )
    for key_id, seconds in keys:
        changed += pending.filter(api_key_id=key_id).update(
            deadline=F("created_at") + timedelta(seconds=seconds)
        )
    if settings.DEFAULT_DEADLINE is not None:
        changed += pending.filter(api_key__default_deadline__isnull=True).update(
            deadline=F("created_at") + timedelta(seconds=settings.DEFAULT_DEADLINE)
        )
    return changed


def _groups(rows: QuerySet, *fields: str) -> QuerySet:
    return rows.values(*fields).annotate(first=Min("deadline")).order_by()


def requests_route(*, now: datetime) -> int:
    """Queued requests that their batch cannot answer in time go to a synchronous tier."""
    waiting = BatchRequest.objects.filter(
        status=Status.QUEUED,
        deadline__isnull=False,
        sync_tier="",
        endpoint__in=SYNC_ENDPOINTS,
        sync_attempts__lt=settings.SYNC_MAX_ATTEMPTS,  # given back to their batch for good
    )
    routed = 0
    for group in _groups(waiting, "endpoint", "model"):
        endpoint, model = group["endpoint"], group["model"]
        upstream = upstreams.upstream_route(endpoint=endpoint, model=model)
        if not sync_offered(upstream, endpoint):
            continue
        batch = forecast_for(upstream=upstream, endpoint=endpoint, model=model, tier=Tier.BATCH)
        cutoff = now + timedelta(seconds=batch.p90) + _margin()
        if group["first"] > cutoff:
            continue
        routed += waiting.filter(endpoint=endpoint, model=model, deadline__lte=cutoff).update(
            status=Status.SUBMITTED,
            sync_tier=tier_for(upstream, model),
            sync_not_before=None,
            updated_at=now,
        )
    return routed


def group_send_now(*, endpoint: str, model: str, now: datetime) -> int:
    """Send a group too small for a batch of its upstream synchronously, at its cheapest
    synchronous tier (the flush's call, once the group has waited BATCH_MIN_WAIT); the sends
    are claimed and made as any other (`sends_dispatch`)."""
    upstream = upstreams.upstream_route(endpoint=endpoint, model=model)
    if not sync_offered(upstream, endpoint):
        return 0
    sent = BatchRequest.objects.filter(
        status=Status.QUEUED,
        sync_tier="",
        endpoint=endpoint,
        model=model,
        sync_attempts__lt=settings.SYNC_MAX_ATTEMPTS,
    ).filter(Q(not_before__isnull=True) | Q(not_before__lte=now))
    moved = sent.update(
        status=Status.SUBMITTED,
        sync_tier=tier_for(upstream, model),
        sync_not_before=None,
        updated_at=now,
    )
    if moved:
        log.info("flush: %d %s requests, too few for a batch, sent synchronously", moved, model)
    return moved


def group_due(*, group: dict, upstream: Upstream, now: datetime) -> bool:
    """Whether a group of queued requests must be flushed now for its earliest deadline to be
    met by the batch: waiting out BATCH_MAX_WAIT could leave too little time."""
    first = group.get("first_deadline")
    if first is None:
        return False
    batch = forecast_for(
        upstream=upstream, endpoint=group["endpoint"], model=group["model"], tier=Tier.BATCH
    )
    latest_start = first - timedelta(seconds=batch.p90) - _margin()
    return latest_start <= now + timedelta(seconds=settings.BATCH_MAX_WAIT)


def requests_escalate(*, now: datetime) -> int:
    """Requests in a batch whose deadline the synchronous forecast only just meets are sent
    synchronously too."""
    running = BatchRequest.objects.filter(
        status=Status.SUBMITTED,
        deadline__isnull=False,
        sync_tier="",
        batch__isnull=False,
        endpoint__in=SYNC_ENDPOINTS,
        sync_attempts__lt=settings.SYNC_MAX_ATTEMPTS,
    )
    escalated = 0
    for group in _groups(running, "batch__upstream", "endpoint", "model"):
        endpoint, model = group["endpoint"], group["model"]
        try:
            upstream = upstreams.upstream_get(group["batch__upstream"])
        except UpstreamError:
            continue
        if not sync_offered(upstream, endpoint):
            continue
        tier = tier_for(upstream, model)
        sync = forecast_for(upstream=upstream, endpoint=endpoint, model=model, tier=tier)
        cutoff = now + timedelta(seconds=sync.p90) + _margin()
        if group["first"] > cutoff:
            continue
        escalated += running.filter(
            batch__upstream=upstream.name, endpoint=endpoint, model=model, deadline__lte=cutoff
        ).update(sync_tier=tier, escalated_at=now, updated_at=now)
    if escalated:
        log.info("deadlines: %d requests escalated out of their batches", escalated)
    return escalated


# --- Sends ------------------------------------------------------------------------------------


# A request escalated out of its batch stays due for its send even when the batch then fails it
# for good (attempts used up): its caller asked for an answer by a deadline, and may yet get it.
SYNCABLE = (*PENDING, Status.FAILED)


def _syncing() -> QuerySet:
    return BatchRequest.objects.filter(status__in=SYNCABLE).exclude(sync_tier="")


def _upstream_of(endpoint: str, model: str, batch_upstream: str | None) -> Upstream | None:
    if batch_upstream:
        try:
            return upstreams.upstream_get(batch_upstream)
        except UpstreamError:
            return None
    return upstreams.upstream_route(endpoint=endpoint, model=model)


def sends_dispatch(
    *, now: datetime | None = None, send: Callable | None = None, only: str | None = None
) -> list[tuple]:
    """Claim the due sends, at most SYNC_CONCURRENCY in flight per upstream, earliest deadline
    first, and start each (`send`, default a django-q2 task); the claimed (id, token) pairs."""
    now = now or timezone.now()
    lease_cut = now - _lease()
    free = Q(sync_started_at=None) | Q(sync_started_at__lt=lease_cut)
    due = _syncing().filter(free).filter(Q(sync_not_before=None) | Q(sync_not_before__lte=now))
    by_upstream: dict[str, list] = defaultdict(list)
    for group in (
        due.values("endpoint", "model", "batch__upstream").annotate(n=Count("pk")).order_by()
    ):
        upstream = _upstream_of(group["endpoint"], group["model"], group["batch__upstream"])
        if upstream is not None and (only is None or upstream.name == only):
            by_upstream[upstream.name].append(group)
    if not by_upstream:
        return []
    claimed = []
    for name, groups in by_upstream.items():
        # One dispatcher per upstream at a time, counting and claiming under its lease, so two
        # cannot both fill the same room.
        with batch_lease(f"sync-dispatch:{name}") as held:
            if not held:
                continue
            room = settings.SYNC_CONCURRENCY - _in_flight(name, lease_cut)
            claimed += _claim(due, groups, room, now)
    if claimed:
        crash_point("after_sync_claim")
    for request_id, token in claimed:
        (send or _enqueue)(str(request_id), token)
    return claimed


def _in_flight(upstream: str, lease_cut: datetime) -> int:
    """Sends of this upstream whose lease holds."""
    flying = _syncing().filter(sync_started_at__gte=lease_cut)
    rows = flying.values("endpoint", "model", "batch__upstream").annotate(n=Count("pk")).order_by()
    return sum(
        row["n"]
        for row in rows
        if (found := _upstream_of(row["endpoint"], row["model"], row["batch__upstream"]))
        and found.name == upstream
    )


def _claim(due: QuerySet, groups: list[dict], room: int, now: datetime) -> list[tuple]:
    if room <= 0:
        return []
    match = Q()
    for group in groups:
        match |= Q(endpoint=group["endpoint"], model=group["model"])
    candidates = due.filter(match).order_by(F("deadline").asc(nulls_first=True), "created_at")
    claimed = []
    for pk, attempts in candidates.values_list("pk", "sync_attempts")[: room * 2]:
        if len(claimed) >= room:
            break
        if attempts >= settings.SYNC_MAX_ATTEMPTS:
            # Its last send's worker never recorded an outcome (killed, lost): no more sends.
            reason = "the last send was never recorded"
            request_give_up(request_id=pk, attempts=attempts, reason=reason, now=now)
            continue
        # Compare-and-set on the attempt count: the claim's token and the send's intent.
        if due.filter(pk=pk, sync_attempts=attempts).update(
            sync_started_at=now, sync_attempts=attempts + 1, updated_at=now
        ):
            claimed.append((pk, attempts + 1))
    return claimed


def _enqueue(request_id: str, token: int) -> None:
    from django_q.tasks import async_task

    async_task(
        "batches_app.tasks.sync_send",
        request_id,
        token,
        q_options={
            "task_name": f"batchproxy.sync.{request_id}",
            "timeout": settings.SYNC_TIMEOUT + 30,
        },
    )


SEND_FIELDS = (
    "pk",
    "endpoint",
    "model",
    "body",
    "deadline",
    "sync_tier",
    "batch_id",
    "batch__upstream",
    "escalated_at",
)


def request_send(request_id: str, token: int, *, timeout: float | None = None) -> str:
    """Send one claimed request at its tier and record the answer (or the failure).

    1. Read it; nothing to do unless it is still pending and still holds this claim.
    2. Send it through its upstream's transport (the intent was recorded by the claim).
    3. Record the answer by compare-and-set on the claim, with its receipt; or, when its batch
       answered first meanwhile, note the second payment.
    """
    row = _syncing().filter(pk=request_id, sync_attempts=token).values(*SEND_FIELDS).first()
    if row is None:
        return "no longer due"
    upstream = _upstream_of(row["endpoint"], row["model"], row["batch__upstream"])
    if upstream is None:
        return "no upstream"
    started = time.monotonic()
    try:
        answer = upstreams.transport(upstream.name).send(
            endpoint=row["endpoint"],
            body=row["body"],
            tier=row["sync_tier"],
            timeout=timeout or settings.SYNC_TIMEOUT,
        )
    except UpstreamError as exc:
        _send_failed(row, token, exc, upstream)
        return f"{row['sync_tier']} send failed: {exc}"
    crash_point("after_sync_send")
    seconds = time.monotonic() - started
    outcome = _send_record(row, token, answer)
    if answer.status < 400:
        timing_record(
            upstream=upstream.name,
            endpoint=row["endpoint"],
            model=row["model"],
            tier=row["sync_tier"],
            seconds=seconds,
        )
    return outcome


def _send_record(row: dict, token: int, answer: SyncAnswer) -> str:
    now = timezone.now()
    tokens, body = (None, None), answer.body
    if answer.status == 200:
        tokens = usage_tokens(answer_usage(orjson.loads(body)))
    cost, standard = receipt_costs(model=row["model"], tier=row["sync_tier"], tokens=tokens)
    if answer.status != 200:
        cost = standard = None  # an error answer is not billed
    mine = _syncing().filter(pk=row["pk"], sync_attempts=token)
    with transaction.atomic():
        recorded = mine.update(
            status=Status.COMPLETED,
            response_status=answer.status,
            response_body=body,
            response_bytes=len(body.encode()),
            response_chunks=0,
            input_tokens=tokens[0],
            output_tokens=tokens[1],
            error_code="",
            error_message="",
            tier=row["sync_tier"],
            cost_usd=cost,
            standard_cost_usd=standard,
            sync_started_at=None,
            finished_at=now,
            updated_at=now,
        )
        if recorded:
            webhook_events_record(
                requests=BatchRequest.objects.filter(pk=row["pk"], finished_at=now)
            )
            return f"answered at {row['sync_tier']}"
        # Its batch answered first (or another sender after a lost lease): this send was paid
        # all the same, and its answer is not served.
        if answer.status == 200:
            BatchRequest.objects.filter(pk=row["pk"]).update(
                paid_twice=True, cost_usd=F("cost_usd") + (cost or 0)
            )
    log.info("request %s: its %s answer came second; dropped", row["pk"], row["sync_tier"])
    return "answered first by its batch"


def _send_failed(row: dict, token: int, exc: UpstreamError, upstream: Upstream) -> None:
    """Back off and try again; a flex send that can no longer wait goes to the standard tier;
    after SYNC_MAX_ATTEMPTS sends, no more (`request_give_up`)."""
    now = timezone.now()
    attempts = token
    # A permanent failure at the standard tier (the body cannot be sent this way) will not
    # change by waiting: no more sends, as after the last allowed one.
    if attempts >= settings.SYNC_MAX_ATTEMPTS or (exc.permanent and row["sync_tier"] != Tier.FLEX):
        request_give_up(request_id=row["pk"], attempts=token, reason=str(exc), now=now)
        return
    delay = exc.retry_after or min(settings.SYNC_BACKOFF * 2 ** max(attempts - 1, 0), BACKOFF_CAP)
    tier, next_at = row["sync_tier"], now + timedelta(seconds=delay)
    if tier == Tier.FLEX:
        standard = forecast_for(
            upstream=upstream, endpoint=row["endpoint"], model=row["model"], tier=Tier.STANDARD
        )
        late = next_at + timedelta(seconds=standard.p90) + _margin()
        # A refusal (429 resource_unavailable), a timeout or an outage says "not now": flex is
        # tried again while the standard tier could still answer in time after the back-off,
        # and never with the last send SYNC_MAX_ATTEMPTS allows: that one is standard's.
        last = attempts + 1 >= settings.SYNC_MAX_ATTEMPTS
        if row["deadline"] is None or late > row["deadline"] or exc.permanent or last:
            tier, next_at = Tier.STANDARD, now
    log.warning(
        "request %s: %s send failed (%s); next %s at %s",
        row["pk"],
        row["sync_tier"],
        exc,
        tier,
        next_at,
    )
    _syncing().filter(pk=row["pk"], sync_attempts=token).update(
        sync_tier=tier, sync_started_at=None, sync_not_before=next_at, updated_at=now
    )


def request_give_up(*, request_id, attempts: int, reason: str, now: datetime) -> str:
    """Stop sending a request synchronously once SYNC_MAX_ATTEMPTS sends have failed.

    1. Still in a batch (escalated): its batch answers it, late if need be.
    2. Else back to the queue when the batch forecast still meets its deadline.
    3. Else failed for good, `sync_attempts_exhausted`, saying why.
    Compare-and-set on the claim's token, as every step of a send.
    """
    mine = _syncing().filter(pk=request_id, sync_attempts=attempts)
    fields = ("status", "endpoint", "model", "deadline", "batch_id", "batch__upstream")
    row = mine.values(*fields).first()
    if row is None:
        return "no longer due"
    stop = {"sync_tier": "", "sync_started_at": None, "sync_not_before": None, "updated_at": now}
    message = f"{attempts} synchronous sends failed; the last: {reason}"[:1000]
    log.warning("request %s: %s", request_id, message)
    if row["batch_id"]:
        mine.update(**stop)
        return "left to its batch"
    upstream = _upstream_of(row["endpoint"], row["model"], None)
    if upstream is not None and row["deadline"] is not None:
        batch = forecast_for(
            upstream=upstream, endpoint=row["endpoint"], model=row["model"], tier=Tier.BATCH
        )
        if now + timedelta(seconds=batch.p90) + _margin() <= row["deadline"]:
            mine.update(status=Status.QUEUED, **stop)
            return "back to the queue"
    why = "Its deadline leaves no time for a batch" if row["deadline"] else "No batch takes it"
    failed = mine.update(
        status=Status.FAILED,
        error_code="sync_attempts_exhausted",
        error_message=f"{message}. {why}.",
        finished_at=now,
        **stop,
    )
    if failed:
        webhook_events_record(requests=BatchRequest.objects.filter(pk=request_id, finished_at=now))
    return "failed"


# --- X-Batch-Mode: now ------------------------------------------------------------------------


def request_answer_now(*, request_id) -> None:
    """Send a pending request at the standard tier now, in this process, as the caller asked
    (`X-Batch-Mode: now`, or a deadline of 0). Its intent is recorded as any send's; a send
    already in flight for it is left to finish. A failed send is left to the tick's retries."""
    now = timezone.now()
    row = (
        BatchRequest.objects.filter(pk=request_id, status__in=PENDING)
        .values("status", "batch_id", "sync_attempts", "sync_started_at")
        .first()
    )
    if row is None or (row["sync_started_at"] and row["sync_started_at"] >= now - _lease()):
        return
    token = row["sync_attempts"] + 1
    claimed = BatchRequest.objects.filter(
        pk=request_id, status=row["status"], sync_attempts=row["sync_attempts"]
    ).update(
        status=Status.SUBMITTED,
        sync_tier=Tier.STANDARD,
        deadline=now,
        escalated_at=now if row["batch_id"] else None,
        sync_started_at=now,
        sync_attempts=token,
        updated_at=now,
    )
    if claimed:
        # A web worker waits for it: the ordinary upstream timeout, not flex's long one. A send
        # cut short is retried by the tick once its lease runs out.
        request_send(str(request_id), token, timeout=settings.OPENAI_TIMEOUT)


def deadline_tighten(*, request_id, deadline: datetime) -> None:
    """An earlier deadline from a repeat of the call (or from a new call that took the general
    path) replaces a later one; never a later one an earlier."""
    BatchRequest.objects.filter(pk=request_id, status__in=PENDING).filter(
        Q(deadline=None) | Q(deadline__gt=deadline)
    ).update(deadline=deadline)


# --- Forecasts for callers --------------------------------------------------------------------


def request_eta(
    *,
    status: str,
    endpoint: str,
    model: str,
    created_at: datetime,
    sync_tier: str = "",
    batch_upstream: str | None = None,
    batch_started: datetime | None = None,
    now: datetime | None = None,
) -> tuple[datetime, datetime, str] | None:
    """When a pending request's answer is expected: (median, p90, the tier it waits for).

    Synchronous: from now. In a batch: from the batch's creation upstream (from now when that
    is not known). Queued: from its group's flush, at the latest BATCH_MAX_WAIT after its call.
    """
    if status not in PENDING:
        return None
    now = now or timezone.now()
    upstream = _upstream_of(endpoint, model, batch_upstream)
    if upstream is None:
        return None
    tier = sync_tier or Tier.BATCH
    fc = forecast_for(upstream=upstream, endpoint=endpoint, model=model, tier=tier)
    if sync_tier:
        start = now
    elif status == Status.SUBMITTED:
        start = batch_started or now
    else:
        start = max(now, created_at + timedelta(seconds=settings.BATCH_MAX_WAIT))
    median = max(start + timedelta(seconds=fc.median), now)
    return median, max(start + timedelta(seconds=fc.p90), median), tier
