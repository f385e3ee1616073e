"""The upstream's queue limit per model: how many input tokens (and, for embeddings, requests)
may wait in batches it has not finished. A batch that would go over it is refused with
`token_limit_exceeded`, so the flush takes from a budget instead (`QueueLimit`):

- the budget is the configured limit less QUEUE_LIMIT_MARGIN (for counting error), or what a
  refusal taught (`budget_learn`), whichever is lower; with neither, nothing is enforced;
- a batch takes what fits beside the model's batches still queued upstream; the rest waits,
  shown as *waiting for queue capacity*, until a batch finishes;
- flushers lock the model's row while they take, so two of them never overshoot together.

A dated snapshot shares its model's row (`base_model`).
"""

import math
import re
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Q, Sum
from django.utils import timezone

from requests_app.models import BatchRequest

from .models import Batch, QueueLimit, base_model

# "… Limit: 90,000 enqueued tokens. …", as OpenAI words the refusal.
STATED_LIMIT = re.compile(r"Limit:\s*([\d,]+)\s*enqueued tokens", re.IGNORECASE)
# A queued request waiting for capacity is told to ask again no sooner than this: capacity comes
# back only when a batch finishes upstream, which takes minutes at best.
CAPACITY_RETRY_AFTER = 60


@dataclass(frozen=True)
class Room:
    """What one new batch of a model may take now."""

    tokens: float  # input tokens; math.inf when no token budget applies
    requests: float
    limit: int | None  # the limit itself (configured or stated): a request above it never fits
    busy: bool  # the model has batches upstream that are not finished

    def fits(self, tokens: int, requests: int) -> bool:
        return tokens <= self.tokens and requests <= self.requests


def _upstream_by_model(model: str | None = None) -> dict[str, tuple[int, int]]:
    """Tokens and requests, per model without its date, of the batches that the upstream holds
    unfinished or is about to get; of one model (and its snapshots) only, when named."""
    before = Q(state__in=(Batch.State.BUILDING, Batch.State.UPLOADED))
    running = Q(state=Batch.State.RUNNING) & ~Q(upstream_status__in=Batch.UPSTREAM_TERMINAL)
    batches = Batch.objects.filter(before | running)
    if model is not None:
        batches = batches.filter(Q(model=model) | Q(model__startswith=f"{model}-"))
    totals: dict[str, tuple[int, int]] = {}
    for name, counted, count in batches.values_list("model", "counted_tokens", "request_count"):
        tokens, requests = totals.get(base_model(name), (0, 0))
        totals[base_model(name)] = (tokens + counted, requests + count)
    return totals


def queued_upstream(model: str) -> tuple[int, int]:
    """Tokens and requests of the model's batches that the upstream holds or is about to get."""
    base = base_model(model)
    return _upstream_by_model(base).get(base, (0, 0))


def _configured(row: QueueLimit | None, base: str) -> tuple[int | None, int | None]:
    tokens = row.enqueued_tokens if row else None
    requests = row.queued_requests if row else None
    return (
        tokens if tokens is not None else settings.QUEUE_LIMITS.get(base),
        requests if requests is not None else settings.QUEUE_REQUEST_LIMITS.get(base),
    )


def _learned(row: QueueLimit | None) -> tuple[int | None, int | None]:
    """The learned budget and the stated limit, while they are fresh."""
    if row is None or row.learned_at is None:
        return None, None
    if timezone.now() - row.learned_at > timedelta(seconds=settings.QUEUE_LIMIT_LEARNED_TTL):
        return None, None
    return row.learned_tokens, row.stated_tokens


def limits_of(model: str, row: QueueLimit | None = None) -> tuple[float, float, int | None]:
    """The token budget, the request budget and the hard token limit of a model."""
    tokens, requests = _configured(row, base_model(model))
    learned, stated = _learned(row)
    budget = [math.floor(tokens * (1 - settings.QUEUE_LIMIT_MARGIN))] if tokens else []
    budget += [learned] if learned else []
    return (
        min(budget, default=math.inf),
        requests if requests else math.inf,
        tokens or stated,
    )


def room_take(*, model: str) -> Room | None:
    """The room a new batch of this model has, holding the model's row until the transaction
    ends; None when no limit applies. Call inside the claim's transaction."""
    base = base_model(model)
    row = QueueLimit.objects.select_for_update().filter(model=base).first()
    if row is None and base in settings.QUEUE_LIMITS | settings.QUEUE_REQUEST_LIMITS:
        QueueLimit.objects.get_or_create(model=base)
        row = QueueLimit.objects.select_for_update().get(model=base)
    if row is None:
        return None
    tokens, requests, limit = limits_of(base, row)
    if tokens == requests == math.inf:
        return None
    queued_tokens, queued_requests = queued_upstream(base)
    return Room(tokens - queued_tokens, requests - queued_requests, limit, bool(queued_requests))


def too_large_message(*, tokens: int, limit: int, model: str) -> str:
    return (
        f"This request has about {tokens:,} input tokens, more than the enqueued-token limit "
        f"of {limit:,} for {model}: it can never be batched."
    )


def waiting_mark(*, model: str, waiting: bool) -> None:
    now = timezone.now()
    rows = QueueLimit.objects.filter(model=base_model(model))
    if waiting:
        rows.filter(waiting_since=None).update(waiting_since=now)
    else:
        rows.exclude(waiting_since=None).update(waiting_since=None)


def waiting_clear(*, except_models: set[str]) -> None:
    """Models whose queue has emptied wait no longer."""
    QueueLimit.objects.exclude(waiting_since=None).exclude(model__in=except_models).update(
        waiting_since=None
    )


def budget_learn(*, batch: Batch, message: str) -> int | None:
    """Lower the model's working budget after a `token_limit_exceeded` refusal of `batch`.

    The limit the refusal states, less the margin, when what was queued went over it; else
    (someone else shares the organisation, or the count was off) half of what was queued. The
    lowest figure learned stays until QUEUE_LIMIT_LEARNED_TTL passes. Returns the stated limit.
    """
    found = STATED_LIMIT.search(message or "")
    stated = int(found.group(1).replace(",", "")) if found else None
    base = base_model(batch.model)
    QueueLimit.objects.get_or_create(model=base)
    row = QueueLimit.objects.select_for_update().get(model=base)
    attempted = queued_upstream(base)[0] + batch.counted_tokens
    cap = math.floor(stated * (1 - settings.QUEUE_LIMIT_MARGIN)) if stated else None
    working = cap if cap is not None and attempted > cap else attempted // 2
    learned, _ = _learned(row)
    row.learned_tokens = max(1, min(working, learned or working))
    row.stated_tokens = stated or row.stated_tokens
    row.learned_at = timezone.now()
    row.save(update_fields=["learned_tokens", "stated_tokens", "learned_at", "updated_at"])
    return stated


def queue_limit_set(
    *, model: str, tokens: int | None, requests: int | None, forget_learned: bool = False
) -> QueueLimit:
    """An operator sets a model's limits (None leaves one as it is, 0 clears it)."""
    row, _ = QueueLimit.objects.get_or_create(model=base_model(model))
    if tokens is not None:
        row.enqueued_tokens = tokens or None
    if requests is not None:
        row.queued_requests = requests or None
    if forget_learned:
        row.learned_tokens = row.stated_tokens = row.learned_at = None
    row.save()
    return row


# --- What clients and operators see ---------------------------------------------------------

_waiting_cache: tuple[float, frozenset[str]] = (0.0, frozenset())


def waiting_models() -> frozenset[str]:
    """The models whose queued requests wait for capacity, read at most once a few seconds per
    process: the 422 path asks it on every repeat."""
    global _waiting_cache
    expires, models = _waiting_cache
    if time.monotonic() < expires:
        return models
    models = frozenset(
        QueueLimit.objects.exclude(waiting_since=None).values_list("model", flat=True)
    )
    _waiting_cache = (time.monotonic() + settings.CAPACITY_CACHE_SECONDS, models)
    return models


def is_waiting(model: str) -> bool:
    return base_model(model) in waiting_models()


def tokens_waiting(model: str) -> int:
    """Counted input tokens of the model's queued requests (its snapshots' too)."""
    queued = BatchRequest.objects.filter(status=BatchRequest.Status.QUEUED)
    rows = queued.filter(Q(model=model) | Q(model__startswith=f"{model}-")).values("model")
    rows = rows.annotate(tokens=Sum("counted_tokens"))
    return sum(row["tokens"] or 0 for row in rows if base_model(row["model"]) == model)


def capacity_rows() -> list[dict]:
    """Per model with a limit or a queue: limit, budget, tokens upstream and tokens waiting."""
    waiting = (
        BatchRequest.objects.filter(status=BatchRequest.Status.QUEUED)
        .values("model")
        .annotate(tokens=Sum("counted_tokens"), requests=Count("pk"))
    )
    by_base: dict[str, dict] = {}
    for group in waiting:
        row = by_base.setdefault(base_model(group["model"]), {"tokens": 0, "requests": 0})
        row["tokens"] += group["tokens"] or 0
        row["requests"] += group["requests"]
    limits = {row.model: row for row in QueueLimit.objects.all()}
    upstream = _upstream_by_model()
    names = sorted(set(limits) | set(by_base) | set(upstream) | set(settings.QUEUE_LIMITS))
    rows = []
    for name in names:
        row = limits.get(name)
        tokens, requests, limit = limits_of(name, row)
        queued_tokens, queued_requests = upstream.get(name, (0, 0))
        rows.append(
            {
                "model": name,
                "limit": limit,
                "budget": None if tokens == math.inf else tokens,
                "request_budget": None if requests == math.inf else requests,
                "upstream_tokens": queued_tokens,
                "upstream_requests": queued_requests,
                "waiting_tokens": by_base.get(name, {}).get("tokens", 0),
                "waiting_requests": by_base.get(name, {}).get("requests", 0),
                "waiting_since": row.waiting_since if row else None,
            }
        )
    return rows
