"""An upstream's queue limit per model: how many input tokens (and, for embeddings, requests)
may wait in batches it has not finished. A batch that would go over it is refused with
`token_limit_exceeded`, so the flush takes from a budget instead (`QueueLimit`):

- the budget is the configured limit less QUEUE_LIMIT_MARGIN (for counting error), or what a
  refusal taught (`budget_learn`), whichever is lower; with neither, nothing is enforced;
- a batch takes what fits beside the model's batches still queued on the same upstream; the
  rest waits, shown as *waiting for queue capacity*, until a batch finishes;
- flushers lock the (upstream, model) row while they take, so two never overshoot together.

Budgets are per (upstream, model): OpenAI counts the limit per organisation, so the same model
on a second organisation has a budget of its own. A dated snapshot shares its model's row
(`base_model`). A limit named without an upstream (`MODEL=N` in QUEUE_LIMITS, `set_queue_limit
MODEL`) belongs to the upstream the model routes to (`upstream_of`).
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
from .upstreams import DEFAULT, upstream_route, upstreams_all

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
    busy: bool  # the model has batches on this upstream that are not finished

    def fits(self, tokens: int, requests: int) -> bool:
        return tokens <= self.tokens and requests <= self.requests


Pair = tuple[str, str]  # (upstream name, model without its date)


def upstream_of(model: str, endpoint: str | None = None) -> str:
    """The upstream a model's requests go to: routed by endpoint when it is known, else the
    first upstream in routing order that serves the model (the default one serves any)."""
    if endpoint is not None:
        route = upstream_route(endpoint=endpoint, model=model)
        return route.name if route else DEFAULT
    return next((u.name for u in upstreams_all() if u.serves(model)), DEFAULT)


def env_limits(setting: dict[str, int]) -> dict[Pair, int]:
    """QUEUE_LIMITS or QUEUE_REQUEST_LIMITS by (upstream, model).

    `UPSTREAM:MODEL` names an upstream; a plain `MODEL` means the upstream the model routes to.
    Only a configured upstream's name counts as a prefix, so a fine-tuned model's own colons
    (`ft:gpt-4o-mini:org::id`) stay part of its name. A pair named both ways keeps the
    explicit one.
    """
    names = {upstream.name for upstream in upstreams_all()}
    plain, explicit = {}, {}
    for key, number in setting.items():
        head, colon, tail = key.partition(":")
        if colon and head in names:
            explicit[head, base_model(tail)] = number
        else:
            plain[upstream_of(key), base_model(key)] = number
    return plain | explicit


def _upstream_by_model(pair: Pair | None = None) -> dict[Pair, tuple[int, int]]:
    """Tokens and requests, per upstream and model without its date, of the batches that each
    upstream holds unfinished or is about to get; of one pair (with its snapshots) only, when
    named."""
    # Written as one IN on the state (not an OR of two), so that SQLite too reads the state
    # index instead of every batch ever made.
    unfinished = (Batch.State.BUILDING, Batch.State.UPLOADED, Batch.State.RUNNING)
    ended = Q(state=Batch.State.RUNNING, upstream_status__in=Batch.UPSTREAM_TERMINAL)
    batches = Batch.objects.filter(state__in=unfinished).exclude(ended)
    if pair is not None:
        upstream, model = pair
        batches = batches.filter(Q(model=model) | Q(model__startswith=f"{model}-"))
        batches = batches.filter(upstream=upstream)
    totals: dict[Pair, tuple[int, int]] = {}
    rows = batches.values_list("upstream", "model", "counted_tokens", "request_count")
    for upstream, name, counted, count in rows:
        key = (upstream, base_model(name))
        tokens, requests = totals.get(key, (0, 0))
        totals[key] = (tokens + counted, requests + count)
    return totals


def queued_upstream(model: str, upstream: str = DEFAULT) -> tuple[int, int]:
    """Tokens and requests of the model's batches that the upstream holds or is about to get."""
    pair = (upstream, base_model(model))
    return _upstream_by_model(pair).get(pair, (0, 0))


def _configured(row: QueueLimit | None, pair: Pair) -> tuple[int | None, int | None]:
    tokens = row.enqueued_tokens if row else None
    requests = row.queued_requests if row else None
    return (
        tokens if tokens is not None else env_limits(settings.QUEUE_LIMITS).get(pair),
        requests if requests is not None else env_limits(settings.QUEUE_REQUEST_LIMITS).get(pair),
    )


def _learned(row: QueueLimit | None) -> tuple[int | None, int | None]:
    """The learned budget and the stated limit, while they are fresh."""
    if row is None or row.learned_at is None:
        return None, None
    if timezone.now() - row.learned_at > timedelta(seconds=settings.QUEUE_LIMIT_LEARNED_TTL):
        return None, None
    return row.learned_tokens, row.stated_tokens


def limits_of(
    model: str, row: QueueLimit | None = None, *, upstream: str = DEFAULT
) -> tuple[float, float, int | None]:
    """The token budget, the request budget and the hard token limit of a model on an
    upstream (the row's, when a row is given)."""
    tokens, requests = _configured(row, (row.upstream if row else upstream, base_model(model)))
    learned, stated = _learned(row)
    budget = [math.floor(tokens * (1 - settings.QUEUE_LIMIT_MARGIN))] if tokens else []
    budget += [learned] if learned else []
    return (
        min(budget, default=math.inf),
        requests if requests else math.inf,
        tokens or stated,
    )


def room_take(*, upstream: str, model: str) -> Room | None:
    """The room a new batch of this model has on this upstream, holding their row until the
    transaction ends; None when no limit applies. Call inside the claim's transaction."""
    key = {"upstream": upstream, "model": base_model(model)}
    row = QueueLimit.objects.select_for_update().filter(**key).first()
    configured = env_limits(settings.QUEUE_LIMITS) | env_limits(settings.QUEUE_REQUEST_LIMITS)
    if row is None and (upstream, key["model"]) in configured:
        QueueLimit.objects.get_or_create(**key)
        row = QueueLimit.objects.select_for_update().get(**key)
    if row is None:
        return None
    tokens, requests, limit = limits_of(key["model"], row)
    if tokens == requests == math.inf:
        return None
    queued_tokens, queued_requests = queued_upstream(key["model"], upstream)
    return Room(tokens - queued_tokens, requests - queued_requests, limit, bool(queued_requests))


def too_large_message(*, tokens: int, limit: int, model: str) -> str:
    return (
        f"This request has about {tokens:,} input tokens, more than the enqueued-token limit "
        f"of {limit:,} for {model}: it can never be batched."
    )


def waiting_mark(*, upstream: str, model: str, waiting: bool) -> None:
    now = timezone.now()
    rows = QueueLimit.objects.filter(upstream=upstream, model=base_model(model))
    if waiting:
        rows.filter(waiting_since=None).update(waiting_since=now)
    else:
        rows.exclude(waiting_since=None).update(waiting_since=None)


def waiting_clear(*, still_waiting: set[Pair]) -> None:
    """(Upstream, model) pairs whose queue has emptied wait no longer."""
    marked = QueueLimit.objects.exclude(waiting_since=None).values_list("pk", "upstream", "model")
    done = [pk for pk, upstream, model in marked if (upstream, model) not in still_waiting]
    QueueLimit.objects.filter(pk__in=done).update(waiting_since=None)


def budget_learn(*, batch: Batch, message: str) -> int | None:
    """Lower the working budget of the batch's upstream and model after a
    `token_limit_exceeded` refusal of `batch`.

    The limit the refusal states, less the margin, when what was queued went over it; else
    (someone else shares the organisation, or the count was off) half of what was queued. The
    lowest figure learned stays until QUEUE_LIMIT_LEARNED_TTL passes. Returns the stated limit.
    """
    found = STATED_LIMIT.search(message or "")
    stated = int(found.group(1).replace(",", "")) if found else None
    key = {"upstream": batch.upstream, "model": base_model(batch.model)}
    QueueLimit.objects.get_or_create(**key)
    row = QueueLimit.objects.select_for_update().get(**key)
    attempted = queued_upstream(key["model"], batch.upstream)[0] + batch.counted_tokens
    cap = math.floor(stated * (1 - settings.QUEUE_LIMIT_MARGIN)) if stated else None
    working = cap if cap is not None and attempted > cap else attempted // 2
    learned, _ = _learned(row)
    row.learned_tokens = max(1, min(working, learned or working))
    row.stated_tokens = stated or row.stated_tokens
    row.learned_at = timezone.now()
    row.save(update_fields=["learned_tokens", "stated_tokens", "learned_at", "updated_at"])
    return stated


def queue_limit_set(
    *,
    model: str,
    tokens: int | None,
    requests: int | None,
    upstream: str | None = None,
    forget_learned: bool = False,
) -> QueueLimit:
    """An operator sets a model's limits on an upstream (by default the one the model routes
    to; None leaves a limit as it is, 0 clears it)."""
    upstream = upstream or upstream_of(model)
    row, _ = QueueLimit.objects.get_or_create(upstream=upstream, model=base_model(model))
    if tokens is not None:
        row.enqueued_tokens = tokens or None
    if requests is not None:
        row.queued_requests = requests or None
    if forget_learned:
        row.learned_tokens = row.stated_tokens = row.learned_at = None
    row.save()
    return row


# --- What clients and operators see ---------------------------------------------------------

_waiting_cache: tuple[float, frozenset[Pair]] = (0.0, frozenset())


def waiting_models() -> frozenset[Pair]:
    """The (upstream, model) pairs whose queued requests wait for capacity, read at most once a
    few seconds per process: the 422 path asks it on every repeat."""
    global _waiting_cache
    expires, pairs = _waiting_cache
    if time.monotonic() < expires:
        return pairs
    marked = QueueLimit.objects.exclude(waiting_since=None).values_list("upstream", "model")
    pairs = frozenset(marked)
    _waiting_cache = (time.monotonic() + settings.CAPACITY_CACHE_SECONDS, pairs)
    return pairs


def is_waiting(model: str, endpoint: str | None = None) -> bool:
    """Whether a queued request of this model waits for capacity on the upstream it goes to
    (routed by `endpoint` when the caller knows it)."""
    pairs = waiting_models()
    return bool(pairs) and (upstream_of(model, endpoint), base_model(model)) in pairs


def _queued_by_pair(queued) -> dict[Pair, dict]:
    """Counted tokens and requests of queued requests per (upstream routed to, base model)."""
    groups = queued.values("endpoint", "model").annotate(
        tokens=Sum("counted_tokens"), requests=Count("pk")
    )
    totals: dict[Pair, dict] = {}
    for group in groups:
        pair = (upstream_of(group["model"], group["endpoint"]), base_model(group["model"]))
        row = totals.setdefault(pair, {"tokens": 0, "requests": 0})
        row["tokens"] += group["tokens"] or 0
        row["requests"] += group["requests"]
    return totals


def tokens_waiting(model: str, upstream: str = DEFAULT) -> int:
    """Counted input tokens of the model's queued requests (its snapshots' too) that go to
    this upstream."""
    queued = BatchRequest.objects.filter(status=BatchRequest.Status.QUEUED)
    queued = queued.filter(Q(model=model) | Q(model__startswith=f"{model}-"))
    return _queued_by_pair(queued).get((upstream, model), {}).get("tokens", 0)


def capacity_rows() -> list[dict]:
    """Per upstream and model with a limit or a queue: limit, budget, tokens upstream and
    tokens waiting."""
    by_pair = _queued_by_pair(BatchRequest.objects.filter(status=BatchRequest.Status.QUEUED))
    limits = {(row.upstream, row.model): row for row in QueueLimit.objects.all()}
    upstream = _upstream_by_model()
    configured = env_limits(settings.QUEUE_LIMITS)
    pairs = sorted(set(limits) | set(by_pair) | set(upstream) | set(configured))
    rows = []
    for pair in pairs:
        row = limits.get(pair)
        tokens, requests, limit = limits_of(pair[1], row, upstream=pair[0])
        queued_tokens, queued_requests = upstream.get(pair, (0, 0))
        rows.append(
            {
                "upstream": pair[0],
                "model": pair[1],
                "limit": limit,
                "budget": None if tokens == math.inf else tokens,
                "request_budget": None if requests == math.inf else requests,
                "upstream_tokens": queued_tokens,
                "upstream_requests": queued_requests,
                "waiting_tokens": by_pair.get(pair, {}).get("tokens", 0),
                "waiting_requests": by_pair.get(pair, {}).get("requests", 0),
                "waiting_since": row.waiting_since if row else None,
            }
        )
    return rows
