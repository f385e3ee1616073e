"""Receipts: what each answered request cost, at the tier that answered it and at the standard
tier, and whether it was paid twice (its batch line and a synchronous send both billed).

Batch and flex are billed at half the standard price (OpenAI, Gemini; Anthropic's batches
too), standard at the full price of the `ModelPrice` table. A model with no price has no cost
(NULL), never a cost of zero.
"""

import time
from collections.abc import Callable
from decimal import Decimal

from django.db.models import F
from django.utils import timezone

from requests_app.models import BatchRequest

from .models import ModelPrice
from .spend import PriceBook

Tier = BatchRequest.Tier
Status = BatchRequest.Status
HALF_PRICE = (Tier.BATCH, Tier.FLEX)
CACHE_SECONDS = 30.0
_book: tuple[float, PriceBook | None] = (0.0, None)


def _price(model: str) -> ModelPrice | None:
    global _book
    read_at, book = _book
    if book is None or time.monotonic() - read_at > CACHE_SECONDS:
        book = PriceBook()
        _book = (time.monotonic(), book)
    return book.find(model)


def prices_forget() -> None:
    global _book
    _book = (0.0, None)


def receipt_costs(
    *, model: str, tier: str, tokens: tuple[int | None, int | None], images: int | None = None
) -> tuple[Decimal | None, Decimal | None]:
    """(cost at `tier`, cost at the standard tier) of one answer, or (None, None) unpriced."""
    price = _price(model)
    if price is None:
        return None, None
    standard = price.synchronous_cost(tokens[0] or 0, tokens[1] or 0, images or 0)
    cost = standard * ModelPrice.BATCH_DISCOUNT if tier in HALF_PRICE else standard
    return cost, standard


def batch_lines_receipts(
    *, batch, rows: list[tuple], outcomes: dict, fields: tuple, update: Callable
) -> None:
    """After a chunk of a batch's lines is applied (outcomes.py, whose row `fields` and
    `update` it uses): the receipts of the answers it delivered, and the requests a synchronous
    send answered first whose line the batch billed too (paid twice; not served)."""
    status_at, pk_at = fields.index("status"), len(fields)
    tokens_at = fields.index("input_tokens")
    images_at = fields.index("output_images")
    priced = []
    for row in rows:
        if row[status_at] == Status.COMPLETED:
            tokens = (row[tokens_at], row[tokens_at + 1])
            cost, standard = receipt_costs(
                model=batch.model, tier=Tier.BATCH, tokens=tokens, images=row[images_at]
            )
            priced.append((Tier.BATCH, cost, standard, row[pk_at]))
    update(priced, timezone.now(), names=("tier", "cost_usd", "standard_cost_usd"))
    if len(rows) < len(outcomes):
        applied = {str(row[pk_at]) for row in rows}
        _paid_twice(batch, {k: v for k, v in outcomes.items() if k not in applied})


def _paid_twice(batch, outcomes: dict) -> None:
    answered = BatchRequest.objects.filter(
        batch=batch, pk__in=list(outcomes), paid_twice=False, status=Status.COMPLETED
    ).exclude(tier=Tier.BATCH)
    for pk in answered.values_list("pk", flat=True):
        outcome = outcomes[str(pk)]
        if outcome.status_code != 200:
            continue  # an error line is not billed
        cost, _ = receipt_costs(
            model=batch.model, tier=Tier.BATCH, tokens=outcome.tokens, images=outcome.images
        )
        BatchRequest.objects.filter(pk=pk, paid_twice=False).update(
            paid_twice=True, cost_usd=F("cost_usd") + (cost or 0)
        )


def tier_figures(*, since) -> dict:
    """Receipts of the requests answered since `since`, for the dashboard and /metrics: per
    tier, requests, spend, standard-tier cost and saving; deadlines met and missed; escalations
    and what the requests paid twice cost. Two queries."""
    from django.db.models import Count, Q, Sum

    answered = BatchRequest.objects.filter(finished_at__gte=since).exclude(tier="")
    rows = answered.values("tier").annotate(
        n=Count("pk"), spent=Sum("cost_usd"), standard=Sum("standard_cost_usd")
    )
    by_tier = []
    for row in rows.order_by("tier"):
        spent, standard = row["spent"] or Decimal(0), row["standard"] or Decimal(0)
        by_tier.append(row | {"spent": spent, "standard": standard, "saved": standard - spent})
    counts = BatchRequest.objects.filter(finished_at__gte=since).aggregate(
        met=Count("pk", filter=Q(deadline__isnull=False, finished_at__lte=F("deadline"))),
        missed=Count("pk", filter=Q(deadline__isnull=False, finished_at__gt=F("deadline"))),
        escalated=Count("pk", filter=Q(escalated_at__isnull=False)),
        twice=Count("pk", filter=Q(paid_twice=True)),
        twice_usd=Sum("cost_usd", filter=Q(paid_twice=True)),
    )
    counts["twice_usd"] = counts["twice_usd"] or Decimal(0)
    return {"by_tier": by_tier, **counts}
