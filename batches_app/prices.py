"""Default synchronous prices (USD per 1M tokens, standard tier) for current OpenAI, Anthropic
and Gemini models.

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
# Anthropic's list prices (Message Batches charge half); dated ids (`-20250514`) match too.
CLAUDE_PRICES = {
    "claude-opus-4-5": ("5.00", "25.00"),
    "claude-opus-4-1": ("15.00", "75.00"),
    "claude-opus-4": ("15.00", "75.00"),
    "claude-sonnet-4-5": ("3.00", "15.00"),
    "claude-sonnet-4": ("3.00", "15.00"),
    "claude-3-7-sonnet": ("3.00", "15.00"),
    "claude-haiku-4-5": ("1.00", "5.00"),
    "claude-3-5-haiku": ("0.80", "4.00"),
    "claude-3-haiku": ("0.25", "1.25"),
}
# Google's Gemini API paid-tier prices (prompts up to 200k tokens; Batch Mode charges half).
GEMINI_PRICES = {
    "gemini-2.5-pro": ("1.25", "10.00"),
    "gemini-2.5-flash": ("0.30", "2.50"),
    "gemini-2.5-flash-lite": ("0.10", "0.40"),
    "gemini-2.0-flash": ("0.10", "0.40"),
    "gemini-2.0-flash-lite": ("0.075", "0.30"),
}
DEFAULT_PRICES |= CLAUDE_PRICES | GEMINI_PRICES


def prices_seed(model_price) -> int:
    """Fill an empty price table with the defaults; `model_price` may be a migration's model."""
    if model_price.objects.exists():
        return 0
    model_price.objects.bulk_create(
        model_price(model=name, input_per_million=Decimal(i), output_per_million=Decimal(o))
        for name, (i, o) in DEFAULT_PRICES.items()
    )
    return len(DEFAULT_PRICES)


def prices_add(model_price, prices: dict) -> int:
    """Add the prices of models the table has no row for; rows an operator edited stay."""
    known = set(model_price.objects.values_list("model", flat=True))
    new = [
        model_price(model=name, input_per_million=Decimal(i), output_per_million=Decimal(o))
        for name, (i, o) in prices.items()
        if name not in known
    ]
    model_price.objects.bulk_create(new)
    return len(new)


def prices_ensure(**kwargs) -> None:
    """post_migrate hook: a flushed or new database gets the default prices again."""
    from .models import ModelPrice

    prices_seed(ModelPrice)
