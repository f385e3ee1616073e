"""Default synchronous prices (USD per 1M tokens, standard tier; per image for DALL-E) for
current OpenAI, Anthropic and Gemini models.

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
# OpenAI-shaped and other batch APIs (issue 23; docs/providers.md), their synchronous list
# prices. Groq's Batch API charges half (console.groq.com/docs/batch; groq.com/pricing).
GROQ_PRICES = {
    "llama-3.1-8b-instant": ("0.05", "0.08"),
    "llama-3.3-70b-versatile": ("0.59", "0.79"),
    "openai/gpt-oss-120b": ("0.15", "0.60"),
}
# Together's batch discount is "up to 50%", on selected models only
# (docs.together.ai/docs/batch-inference, "discounted models"; together.ai/pricing): on
# another model the saving shown is overstated.
TOGETHER_PRICES = {
    "meta-llama/Llama-3.3-70B-Instruct-Turbo": ("0.88", "0.88"),
    "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo": ("0.18", "0.18"),
}
# Mistral's batch API charges half (docs.mistral.ai, "Batch inference"; mistral.ai/pricing).
MISTRAL_PRICES = {
    "mistral-small-latest": ("0.10", "0.30"),
    "mistral-medium-latest": ("0.40", "2.00"),
    "mistral-embed": ("0.10", "0"),
}
# Fireworks' serverless prices go by the base model's size (fireworks.ai/pricing: up to 16B
# parameters $0.20, 16.1B to 80B $0.90 per million tokens, in and out alike); batch inference
# is billed at half of them (docs.fireworks.ai/serverless/overview, "Billing").
FIREWORKS_PRICES = {
    "accounts/fireworks/models/llama-v3p1-8b-instruct": ("0.20", "0.20"),
    "accounts/fireworks/models/llama-v3p3-70b-instruct": ("0.90", "0.90"),
}
# xAI's synchronous list prices (docs.x.ai/developers/pricing); its Batch API charges half
# (docs.x.ai, "Batch API").
XAI_PRICES = {
    "grok-4.3": ("1.25", "2.50"),
    "grok-4-1-fast-reasoning": ("0.20", "0.50"),
    "grok-4-1-fast-non-reasoning": ("0.20", "0.50"),
}
# Bedrock's on-demand prices by model id (aws.amazon.com/bedrock/pricing, us-east-1); batch
# inference charges half of them.
BEDROCK_PRICES = {
    "anthropic.claude-3-haiku-20240307-v1:0": ("0.25", "1.25"),
    "amazon.nova-micro-v1:0": ("0.035", "0.14"),
    "amazon.nova-lite-v1:0": ("0.06", "0.24"),
}
# Vertex AI's Gemini prices (cloud.google.com/vertex-ai/generative-ai/pricing, us-central1):
# its batch prediction charges half ("Batch requests for Gemini models are discounted 50% from
# standard requests", Vertex's batch prediction page). The 2.5 models cost what they cost on the
# Gemini API (the rows above serve both); these are Vertex's versioned ids of the 2.0 models.
# Unverified: Google's pricing page itself was out of reach (December 2026); Flash-Lite's row
# agrees with a user's quote of that page ($0.075 / $0.30), Flash's with the Gemini API's.
VERTEX_PRICES = {
    "gemini-2.0-flash-001": ("0.15", "0.60"),
    "gemini-2.0-flash-lite-001": ("0.075", "0.30"),
}
PROVIDER_PRICES = (
    GROQ_PRICES
    | TOGETHER_PRICES
    | MISTRAL_PRICES
    | FIREWORKS_PRICES
    | XAI_PRICES
    | BEDROCK_PRICES
    | VERTEX_PRICES
)
DEFAULT_PRICES |= CLAUDE_PRICES | GEMINI_PRICES | PROVIDER_PRICES


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


def prices_add(model_price, names) -> int:
    """Add the default prices of these models where the table has no row for them; rows an
    operator edited stay as they are."""
    known = set(model_price.objects.filter(model__in=names).values_list("model", flat=True))
    missing = [name for name in names if name not in known]
    return len(model_price.objects.bulk_create(_rows(model_price, missing)))


def prices_ensure(**kwargs) -> None:
    """post_migrate hook: a flushed or new database gets the default prices again."""
    from .models import ModelPrice

    prices_seed(ModelPrice)
