"""Tokens and money: the price book and what batches and keys spent and saved.

It sits below the dashboard (batches_app/dashboard.py) and /metrics (ops_app/metrics.py), which
both read it, and imports neither, nor the engine's services: a price lookup needs no upstream.

Money: OpenAI's Batch API charges half the synchronous price, so for every model with a price
(`ModelPrice`) this gives what the batches cost and what the same tokens would have cost
synchronously. Per upstream and model, tokens come from each batch's upstream `usage` (batches
are kept), so OpenAI, Anthropic and Gemini spend show apart; per
key, from each answer's own `usage`, counted into `BatchRequest.input_tokens/output_tokens`
(answers are purged after RESULT_RETENTION, so per-key figures reach back that far at most).
Models priced per image (DALL-E) are priced by the images counted at ingest, per batch
(`Batch.output_images`) and per answer (`BatchRequest.output_images`).
"""

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import Count, F, Sum

from requests_app.models import ApiKey, BatchRequest

from .models import Batch, ModelPrice, QueueLimit, SpendTotal, base_model
from .usage import usage_tokens

# Done batches added into the totals per transaction.
TALLY_CHUNK = 2000
# What a model no operator named is called in figures anyone can read (/metrics): a caller
# chooses model names, and each would be a label of its own.
OTHER = "other"


class PriceBook:
    """The price table, read once, matching dated snapshots to their model."""

    def __init__(self) -> None:
        self.prices = {p.model: p for p in ModelPrice.objects.all()}

    def find(self, model: str) -> ModelPrice | None:
        return self.prices.get(model) or self.prices.get(base_model(model))


class ModelLabels(PriceBook):
    """Model names as /metrics shows them: a priced model (a snapshot under its price's name)
    or one with a queue limit keeps its name; any other folds into `other`."""

    def __init__(self) -> None:
        super().__init__()
        self.limited = set(QueueLimit.objects.values_list("model", flat=True))

    def label(self, model: str) -> str:
        if price := self.find(model):
            return price.model
        name = base_model(model)
        return name if name in self.limited else OTHER


@dataclass
class Spend:
    """Tokens and money of one model (on one upstream), one key or one day."""

    label: str
    upstream: str = ""  # per-model figures only: the upstream the batches went to
    tokens_in: int = 0
    tokens_out: int = 0
    requests: int = 0
    synchronous: Decimal = Decimal(0)
    unpriced_tokens: int = 0  # tokens of models with no price: not counted as free
    images: int = 0
    unpriced_images: int = 0  # likewise for models priced per image
    models: set = field(default_factory=set)

    def add(
        self,
        price: ModelPrice | None,
        model: str,
        tokens_in: int,
        tokens_out: int,
        images: int = 0,
    ) -> None:
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out
        self.images += images
        self.models.add(model)
        if price is None:
            self.unpriced_tokens += tokens_in + tokens_out
            self.unpriced_images += images
        else:
            self.synchronous += price.synchronous_cost(tokens_in, tokens_out, images)

    @property
    def priced(self) -> bool:
        return self.unpriced_tokens == 0 and self.unpriced_images == 0

    @property
    def spent(self) -> Decimal:
        return self.synchronous * ModelPrice.BATCH_DISCOUNT

    @property
    def saved(self) -> Decimal:
        return self.synchronous - self.spent


def batch_tokens(batches: list[dict]) -> dict:
    """Tokens per batch: its upstream `usage`, else the sum its answers report."""
    missing = [b["pk"] for b in batches if not b["usage"]]
    from_requests = {
        row["batch"]: (row["tin"] or 0, row["tout"] or 0)
        for row in BatchRequest.objects.filter(batch__in=missing)
        .values("batch")
        .annotate(tin=Sum("input_tokens"), tout=Sum("output_tokens"))
    }
    return {
        b["pk"]: usage_tokens(b["usage"]) if b["usage"] else from_requests.get(b["pk"], (0, 0))
        for b in batches
    }


def spend_by_model(*, since: datetime, book: PriceBook) -> list[Spend]:
    """Per upstream and model (the same model on two upstreams is two rows)."""
    batches = list(
        Batch.objects.filter(state=Batch.State.DONE, finished_at__gte=since).values(
            "pk", "upstream", "model", "usage", "request_counts", "output_images"
        )
    )
    tokens = batch_tokens(batches)
    by_model: dict[tuple[str, str], Spend] = {}
    for b in batches:
        key = (b["upstream"], b["model"])
        spend = by_model.setdefault(key, Spend(b["model"], upstream=b["upstream"]))
        spend.add(book.find(b["model"]), b["model"], *tokens[b["pk"]], b["output_images"])
    # Requests are the proxy's answered ones in the window, as per key and in "completed" (an
    # upstream's own count also holds lines it answered with an error the proxy retried).
    answered = (
        BatchRequest.objects.filter(status=BatchRequest.Status.COMPLETED, finished_at__gte=since)
        .values(upstream=F("batch__upstream"), batch_model=F("batch__model"))
        .annotate(n=Count("pk"))
    )
    for row in answered:
        key = (row["upstream"], row["batch_model"])
        spend = by_model.setdefault(key, Spend(row["batch_model"], upstream=row["upstream"]))
        spend.requests += row["n"]
    return spend_sorted(by_model.values())


def spend_sorted(spends) -> list[Spend]:
    """Dearest first, then by tokens, then by name: the same order on every load."""
    return sorted(spends, key=lambda s: (-s.spent, -(s.tokens_in + s.tokens_out), s.label))


def spend_tally(*, limit: int | None = None) -> int:
    """Add done batches not yet tallied into `SpendTotal`; return how many were added.

    A chunk per transaction: the chunk's batches are locked (SKIP LOCKED: two tallies take
    different batches) and marked `tallied` with the totals' increments, so each batch is
    counted once. Called by /metrics (with a `limit`) and by the hourly purge (all).
    """
    tallied = 0
    untallied = Batch.objects.filter(state=Batch.State.DONE, tallied=False)
    # Looked for outside a transaction first: a scrape with nothing to add takes no write lock.
    while (limit is None or tallied < limit) and untallied.exists():
        with transaction.atomic():
            batches = list(
                Batch.objects.select_for_update(skip_locked=True)
                .filter(state=Batch.State.DONE, tallied=False)
                .order_by("finished_at")
                .values(
                    "pk",
                    "upstream",
                    "model",
                    "upstream_status",
                    "usage",
                    "request_counts",
                    "output_images",
                )[:TALLY_CHUNK]
            )
            if not batches:
                break
            tokens = batch_tokens(batches)
            sums: dict[tuple[str, str, str], list[int]] = {}
            for b in batches:
                group = (b["upstream"], b["model"], b["upstream_status"])
                row = sums.setdefault(group, [0, 0, 0, 0, 0])
                completed = (b["request_counts"] or {}).get("completed", 0)
                for i, n in enumerate((1, completed, *tokens[b["pk"]], b["output_images"])):
                    row[i] += n
            # In one order: two tallies at once update shared rows without a deadlock.
            for group, row in sorted(sums.items()):
                _total_add(group, row)
            pks = [b["pk"] for b in batches]
            tallied += Batch.objects.filter(pk__in=pks, tallied=False).update(tallied=True)
    return tallied


def _total_add(group: tuple[str, str, str], row: list[int]) -> None:
    names = dict(zip(("upstream", "model", "upstream_status"), group, strict=True))
    fields = ("batches", "requests", "tokens_in", "tokens_out", "images")
    increments = {name: F(name) + n for name, n in zip(fields, row, strict=True)}
    totals = SpendTotal.objects.filter(**names)
    if totals.update(**increments):
        return
    try:
        with transaction.atomic():
            SpendTotal.objects.create(**names, **dict(zip(fields, row, strict=True)))
            return
    except IntegrityError:
        pass  # another tally created it first
    totals.update(**increments)


def spend_totals(*, labels: ModelLabels) -> list[Spend]:
    """Per upstream and model label, over every batch tallied: what /metrics counts."""
    by_label: dict[tuple[str, str], Spend] = {}
    rows = SpendTotal.objects.values_list(
        "upstream", "model", "requests", "tokens_in", "tokens_out", "images"
    )
    for upstream, model, requests, tokens_in, tokens_out, images in rows:
        label = labels.label(model)
        spend = by_label.setdefault((upstream, label), Spend(label, upstream=upstream))
        spend.add(labels.find(model), model, tokens_in, tokens_out, images)
        spend.requests += requests
    return sorted(by_label.values(), key=lambda s: -(s.tokens_in + s.tokens_out))


def spend_by_key(*, since: datetime, book: PriceBook, api_key_id: int | None = None) -> list[Spend]:
    answered = BatchRequest.objects.filter(
        status=BatchRequest.Status.COMPLETED, finished_at__gte=since
    )
    if api_key_id is not None:
        answered = answered.filter(api_key_id=api_key_id)
    rows = answered.values("api_key", "model").annotate(
        n=Count("pk"), tin=Sum("input_tokens"), tout=Sum("output_tokens"), img=Sum("output_images")
    )
    names = {k.pk: str(k) for k in ApiKey.objects.all()}
    by_key: dict[int, Spend] = {}
    for row in rows:
        spend = by_key.setdefault(row["api_key"], Spend(names.get(row["api_key"], "?")))
        tokens = (row["tin"] or 0, row["tout"] or 0, row["img"] or 0)
        spend.add(book.find(row["model"]), row["model"], *tokens)
        spend.requests += row["n"]
    return spend_sorted(by_key.values())


def total(spends: list[Spend], label: str = "all") -> Spend:
    result = Spend(label)
    for s in spends:
        result.tokens_in += s.tokens_in
        result.tokens_out += s.tokens_out
        result.requests += s.requests
        result.synchronous += s.synchronous
        result.unpriced_tokens += s.unpriced_tokens
        result.images += s.images
        result.unpriced_images += s.unpriced_images
    return result
