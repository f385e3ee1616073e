"""Default synchronous prices (USD per 1M tokens, standard tier; per image for DALL-E) for
current OpenAI models.

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
    # GPT image models are priced per token: text input, output (image) tokens. Their image
    # input tokens cost more (10.00 and 2.50) but are counted at the text rate: savings shown
    # for image edits are understated, never overstated.
    "gpt-image-1": ("5.00", "40.00"),
    "gpt-image-1-mini": ("2.00", "8.00"),
    # Moderations are free.
    "omni-moderation-latest": ("0", "0"),
    "text-moderation-latest": ("0", "0"),
}


# model: USD per image, synchronous. DALL-E answers carry no usage; OpenAI prices them per
# image by size and quality, and these are the prices at the default (1024x1024, standard):
# a larger or HD image costs more, so savings on those are understated.
PER_IMAGE_PRICES = {
    "dall-e-3": "0.040",
    "dall-e-2": "0.020",
    # Videos are priced per second of video, at 720p (the default size); kept in the same
    # column, as the seconds are counted in the same one (`output_images`).
    "sora-2": "0.10",
    "sora-2-pro": "0.30",
}
IMAGE_MODELS = ("gpt-image-1", "gpt-image-1-mini", *PER_IMAGE_PRICES)


def _rows(model_price, names) -> list:
    has_per_image = any(f.name == "per_image" for f in model_price._meta.get_fields())
    rows = []
    for name in names:
        if name in PER_IMAGE_PRICES:
            if has_per_image:
                per_image = Decimal(PER_IMAGE_PRICES[name])
                rows.append(model_price(model=name, input_per_million=0, per_image=per_image))
            continue
        i, o = DEFAULT_PRICES[name]
        rows.append(
            model_price(model=name, input_per_million=Decimal(i), output_per_million=Decimal(o))
        )
    return rows


def prices_seed(model_price) -> int:
    """Fill an empty price table with the defaults; `model_price` may be a migration's model."""
    if model_price.objects.exists():
        return 0
    names = [*DEFAULT_PRICES, *PER_IMAGE_PRICES]
    return len(model_price.objects.bulk_create(_rows(model_price, names)))


def prices_add_image_models(model_price) -> int:
    """Add the image models' prices to an existing table, leaving rows operators made alone."""
    known = set(model_price.objects.filter(model__in=IMAGE_MODELS).values_list("model", flat=True))
    missing = [name for name in IMAGE_MODELS if name not in known]
    return len(model_price.objects.bulk_create(_rows(model_price, missing)))


def prices_ensure(**kwargs) -> None:
    """post_migrate hook: a flushed or new database gets the default prices again."""
    from .models import ModelPrice

    prices_seed(ModelPrice)
