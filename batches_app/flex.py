"""Which models each upstream kind serves at its flex tier: the defaults, and the lookup.

The `FlexModel` table is the one place this lives; operators edit it in the admin, like the
prices. These defaults fill it when it is empty (after every `migrate`), from the providers'
flex guides as of late 2026 (read them again before relying on a row):
- OpenAI (developers.openai.com, guides/flex-processing): `service_tier: "flex"` on the o-series
  and the gpt-5 family.
- Azure OpenAI (flex, preview): the same models where the deployment offers it; an unsupported
  one answers 400, so only listed models are sent.
- Gemini (ai.google.dev, flex inference): `serviceTier: "flex"` on the 2.5 and later models.
- Vertex AI's Flex PayGo (header `X-Vertex-AI-LLM-Shared-Request-Type: flex`) takes some
  preview models at the `global` location only: none is listed by default (add them in the
  admin for an upstream at `global`).
- Anthropic has no flex tier: its requests go to the standard Messages API.
- Mistral has no flex tier (its `service_tier` chooses priority or standard capacity): chat and
  embeddings go to its standard API through the `mistralai` SDK, sent `standard_only`.
- Fireworks has no flex tier: chat completions go to its standard inference API.
- Together has no flex tier: its requests go to its OpenAI-compatible standard API.
- Groq documents a flex service tier; none of its models is listed here by default (add them
  in the admin to send its requests with `service_tier: "flex"`).
- Bedrock has a flex tier (`serviceTier` `flex`, botocore's bedrock-runtime model), offered per
  model and region; none is listed by default (unverified which): add them in the admin.
"""

import time

from .models import FlexModel, base_model

DEFAULT_FLEX = {
    "openai": ("gpt-5", "gpt-5-mini", "gpt-5-nano", "o3", "o4-mini"),
    "azure": ("gpt-5", "gpt-5-mini", "gpt-5-nano", "o3", "o4-mini"),
    "gemini": ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"),
}
# The table is read at most this often per process: the tick asks for every group.
CACHE_SECONDS = 30.0
_cache: tuple[float, frozenset] = (0.0, frozenset())


def flex_seed(flex_model=FlexModel) -> int:
    """Fill an empty table with the defaults; `flex_model` may be a migration's model."""
    if flex_model.objects.exists():
        return 0
    rows = [flex_model(kind=k, model=m) for k, models in DEFAULT_FLEX.items() for m in models]
    return len(flex_model.objects.bulk_create(rows))


def flex_ensure(**kwargs) -> None:
    """post_migrate hook: a flushed or new database gets the default flex models again."""
    flex_seed()


def flex_offered(*, kind: str, model: str) -> bool:
    """Whether an upstream of this kind serves the model (or its undated name) at flex."""
    global _cache
    read_at, rows = _cache
    if time.monotonic() - read_at > CACHE_SECONDS:
        rows = frozenset(FlexModel.objects.values_list("kind", "model"))
        _cache = (time.monotonic(), rows)
    return (kind, model) in rows or (kind, base_model(model)) in rows


def flex_forget() -> None:
    """Read the table afresh on the next lookup (after an edit, and in tests)."""
    global _cache
    _cache = (0.0, frozenset())
