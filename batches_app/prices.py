"""Default synchronous prices (USD per 1M tokens, standard tier) for current OpenAI models.

The `ModelPrice` table is the one place prices live; operators edit it in the admin. These
defaults fill it when it is empty: by migration on a new database, and after every `migrate`
or test-database flush that leaves it empty. A table an operator has edited is left alone.
"""

from decimal import Decimal

# model: (input, output), OpenAI's synchronous list prices; the Batch API charges half.
DEFAULT_PRICES = {
    "gpt-5": ("1.25", "10.00"),
    "gpt-5-mini": ("0.25", "2.00"),
    "gpt-5-nano": ("0.05", "0.40"),
    "gpt-4.1": ("2.00", "8.00"),
    "gpt-4.1-mini": ("0.40", "1.60"),
    "gpt-4.1-nano": ("0.10", "0.40"),
    "gpt-4o": ("2.50", "10.00"),
    "gpt-4o-mini": ("0.15", "0.60"),
    "o3": ("2.00", "8.00"),
    "o3-mini": ("1.10", "4.40"),
    "o4-mini": ("1.10", "4.40"),
    "o1": ("15.00", "60.00"),
    "gpt-4-turbo": ("10.00", "30.00"),
    "gpt-3.5-turbo": ("0.50", "1.50"),
    "gpt-3.5-turbo-instruct": ("1.50", "2.00"),
    "text-embedding-3-small": ("0.02", "0"),
    "text-embedding-3-large": ("0.13", "0"),
    "text-embedding-ada-002": ("0.10", "0"),
    # Moderations are free.
    "omni-moderation-latest": ("0", "0"),
    "text-moderation-latest": ("0", "0"),
}


def prices_seed(model_price) -> int:
    """Fill an empty price table with the defaults; `model_price` may be a migration's model."""
    if model_price.objects.exists():
        return 0
    model_price.objects.bulk_create(
        model_price(model=name, input_per_million=Decimal(i), output_per_million=Decimal(o))
        for name, (i, o) in DEFAULT_PRICES.items()
    )
    return len(DEFAULT_PRICES)


def prices_ensure(**kwargs) -> None:
    """post_migrate hook: a flushed or new database gets the default prices again."""
    from .models import ModelPrice

    prices_seed(ModelPrice)
