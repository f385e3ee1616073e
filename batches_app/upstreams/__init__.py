"""The upstreams the proxy sends batches to, routed by (endpoint family, model).

Defined in the environment (settings.UPSTREAMS, see docs/providers.md); the single OPENAI_*
settings are the default upstream, named `openai`, which serves every model no other upstream
claims. Each kind has its module behind `base.Transport`.
"""

import re
from dataclasses import dataclass
from importlib import import_module

from django.conf import settings

from batchproxy.tryout import fake_key
from requests_app.models import Endpoint

from .base import METADATA_KEY, Transport, Upstream, UpstreamError

__all__ = ["DEFAULT", "KINDS", "METADATA_KEY", "Transport", "Upstream", "UpstreamError"]

DEFAULT = "openai"
# The kinds that serve an endpoint family: OpenAI's endpoints, Anthropic's Messages, Gemini's
# generateContent.
FAMILIES = {
    Endpoint.MESSAGES: ("anthropic",),
    # Vertex AI serves the same requests: the first upstream of either kind that lists the
    # model takes it (google-genai's callers, vertexai=True or not, look the same).
    Endpoint.GENERATE_CONTENT: ("gemini", "vertex"),
    Endpoint.BEDROCK_CONVERSE: ("bedrock",),
    Endpoint.BEDROCK_INVOKE: ("bedrock",),
}
KINDS = ("openai", "azure", "groq", "together", "mistral", "fireworks", "xai")


@dataclass(frozen=True)
class KindDefaults:
    """What an upstream of this kind uses where its UPSTREAM_<NAME>_* variables say nothing,
    from the provider's docs (docs/providers.md)."""

    base_url: str
    completion_window: str = "24h"
    max_requests: int = 50_000
    max_bytes: int = 200 * 1024 * 1024
    min_requests: int = 1


KIND_DEFAULTS = {
    # console.groq.com/docs/batch; the groq SDK's BatchCreateParams: 24h to 7d, files <= 100 MB.
    "groq": KindDefaults("https://api.groq.com/openai/v1", max_bytes=100_000_000),
    # docs.together.ai/docs/inference/batch/overview: 50,000 requests and 100 MB per batch.
    "together": KindDefaults("https://api.together.ai/v1", max_bytes=100_000_000),
    # docs.mistral.ai, batch inference: jobs time out after `timeout_hours` (24 by default).
    "mistral": KindDefaults("https://api.mistral.ai"),
    # docs.fireworks.ai/guides/batch-inference: datasets under 500 MB, one upload request up to
    # 150 MB; jobs expire after 24 h. No default URL: it names the account
    # (https://api.fireworks.ai/v1/accounts/<account-id>).
    "fireworks": KindDefaults("", max_bytes=150_000_000),
    # docs.x.ai, Batch API: most batches end within 24 h; one add-requests call carries at
    # most 25 MB, taken as the file's limit; batches over 100,000 requests may be throttled.
    "xai": KindDefaults("https://api.x.ai/v1", max_requests=100_000, max_bytes=25_000_000),
    # Bedrock's quotas (docs.aws.amazon.com/bedrock, "Quotas"): 50,000 records per job by
    # default, input files up to 1 GB, and at least 100 records per job ("Minimum number of
    # records per batch inference job for <model>", docs.aws.amazon.com/general/latest/gr/
    # bedrock.html; a per-model quota, 100 by default). No default URL: it names the region
    # (https://bedrock.<region>.amazonaws.com).
    "bedrock": KindDefaults("", max_bytes=1_000_000_000, min_requests=100),
    # Vertex AI's batch inference for Gemini (docs.cloud.google.com/vertex-ai, "Batch inference
    # from Cloud Storage"): up to 200,000 requests and a 1 GB input file per job. The base URL
    # is the endpoint of the upstream's location (UPSTREAM_<NAME>_LOCATION, us-central1).
    "vertex": KindDefaults(
        "https://us-central1-aiplatform.googleapis.com/",
        max_requests=200_000,
        max_bytes=1_000_000_000,
    ),
}
OPENAI_DEFAULTS = KindDefaults("https://api.openai.com/v1")
# A batch still running this long past its completion window is treated as expired.
STUCK_MARGIN = 2 * 3600
WINDOW = re.compile(r"([1-9][0-9]*)([hd])")


def kinds_for(endpoint: str) -> tuple[str, ...]:
    return FAMILIES.get(endpoint, KINDS)


def upstreams_all() -> list[Upstream]:
    """Every upstream, in routing order: those configured first, the default one last."""
    configured = [
        Upstream(
            name=item["name"],
            kind=item["kind"],
            base_url=item["base_url"] or _defaults(item["kind"]).base_url,
            key_env=item["key_env"],
            models=tuple(item["models"]),
            api_version=item.get("api_version", ""),
            completion_window=item.get("completion_window", ""),
            max_requests=item.get("max_requests", 0),
            max_bytes=item.get("max_bytes", 0),
            min_requests=item.get("min_requests", 0),
        )
        for item in settings.UPSTREAMS
    ]
    default = Upstream(
        name=DEFAULT,
        kind="openai",
        base_url=settings.OPENAI_BASE_URL,
        key_env="OPENAI_API_KEY",
        models=("*",),
    )
    return [*configured, default]


def _defaults(kind: str) -> KindDefaults:
    return KIND_DEFAULTS.get(kind, OPENAI_DEFAULTS)


def window_seconds(window: str) -> int:
    """`24h`, `48h`, `7d`: a completion window in seconds (ValueError for anything else)."""
    match = WINDOW.fullmatch(window.strip())
    if match is None:
        raise ValueError(f"{window!r} is not a completion window like 24h or 7d")
    return int(match.group(1)) * (3600 if match.group(2) == "h" else 86_400)


def upstream_window(upstream: Upstream) -> str:
    """The completion window its batches are created with."""
    return upstream.completion_window or _defaults(upstream.kind).completion_window


def upstream_limits(upstream: Upstream) -> tuple[int, int]:
    """Requests and JSONL bytes per batch: the proxy's own limits (BATCH_MAX_*), lowered to
    the upstream's where it takes less."""
    defaults = _defaults(upstream.kind)
    requests = upstream.max_requests or defaults.max_requests
    size = upstream.max_bytes or defaults.max_bytes
    return min(settings.BATCH_MAX_REQUESTS, requests), min(settings.BATCH_MAX_BYTES, size)


def upstream_min_requests(upstream: Upstream) -> int:
    """The fewest requests a batch of this upstream may hold (never above its most): a group
    under it waits, then goes synchronously (services.batch_flush)."""
    least = upstream.min_requests or _defaults(upstream.kind).min_requests
    return max(1, min(least, upstream_limits(upstream)[0]))


def upstream_stuck_after(name: str) -> int:
    """Seconds after which a batch still running upstream is treated as expired: its window
    and a margin (BATCH_STUCK_AFTER at least), so a 7-day Groq window is not cut at 26 h."""
    try:
        window = window_seconds(upstream_window(upstream_get(name)))
    except (UpstreamError, ValueError):
        return settings.BATCH_STUCK_AFTER
    return max(settings.BATCH_STUCK_AFTER, window + STUCK_MARGIN)


def upstream_route(*, endpoint: str, model: str) -> Upstream | None:
    """The first upstream that serves this model on this endpoint's family.

    On OpenAI's endpoints the default upstream serves every model; on Anthropic's and Gemini's,
    only a configured upstream of that kind does (None without one).
    """
    kinds = kinds_for(endpoint)
    for upstream in upstreams_all():
        if upstream.kind in kinds and upstream.serves(model):
            return upstream
    return None


def default_missing() -> bool:
    """The default OpenAI upstream has no key (and this is no try-out, whose fake needs none)."""
    return settings.TRY_OUT is None and not settings.OPENAI_API_KEY


def upstream_get(name: str) -> Upstream:
    for upstream in upstreams_all():
        if upstream.name == name:
            return upstream
    raise UpstreamError(f"upstream {name!r} is no longer configured", permanent=False)


def upstream_refusal() -> str | None:
    """Why this process may not start to call upstream, or None.

    Outside try-out mode (batchproxy/tryout.py) some upstream needs a key: the default OpenAI
    one (OPENAI_API_KEY) or any other (Anthropic, Gemini, Azure, UPSTREAMS). A process never
    falls back to sending prompts to OPENAI_BASE_URL with no key: `transport` refuses every
    call to a keyless default (its batches wait, retried, until the key is set).
    """
    if not default_missing() or any(u.name != DEFAULT and u.api_key() for u in upstreams_all()):
        return None
    return (
        "No upstream key is set (OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY, "
        "AZURE_OPENAI_API_KEY or an UPSTREAMS key), and this data directory is not in try-out "
        "mode. Set one, or run `manage.py serve --fake-openai` to try the proxy against the "
        "built-in fakes."
    )


def upstream_key(upstream: Upstream) -> str:
    """The default's key is a setting (OPENAI_API_KEY); the others' are read from their
    variable at call time. In try-out mode every upstream is a fake: it gets a placeholder."""
    if upstream.name == DEFAULT:
        return settings.OPENAI_API_KEY
    if settings.TRY_OUT is not None:
        return fake_key(upstream.kind)
    return upstream.api_key()


# Each kind's module and transport, imported when first used: a process that sends to OpenAI
# only never loads the other SDKs (the anthropic SDK alone takes about a second).
TRANSPORTS = {
    "openai": ("openai", "OpenAITransport"),
    "azure": ("azure", "AzureTransport"),
    "anthropic": ("anthropic", "AnthropicTransport"),
    "gemini": ("gemini", "GeminiTransport"),
    "groq": ("groq", "GroqTransport"),
    "together": ("together", "TogetherTransport"),
    "mistral": ("mistral", "MistralTransport"),
    "fireworks": ("fireworks", "FireworksTransport"),
    "xai": ("xai", "XaiTransport"),
    "bedrock": ("bedrock", "BedrockTransport"),
    "vertex": ("vertex", "VertexTransport"),
}


def transport_class(kind: str) -> type[Transport]:
    """A kind's transport class, without a key or a client (what the kind can do)."""
    module, cls = TRANSPORTS.get(kind, TRANSPORTS["openai"])
    return getattr(import_module(f".{module}", __name__), cls)


def transport(name: str = DEFAULT) -> Transport:
    """The transport of the named upstream, with its key read from the environment now."""
    upstream = upstream_get(name)
    if upstream.name == DEFAULT and default_missing():
        raise UpstreamError(
            "OPENAI_API_KEY is not set: nothing is sent to the default OpenAI upstream.",
            permanent=False,
            code="no_api_key",
        )
    module, cls = TRANSPORTS.get(upstream.kind, TRANSPORTS["openai"])
    kind = getattr(import_module(f".{module}", __name__), cls)
    return kind(upstream, upstream_key(upstream))
