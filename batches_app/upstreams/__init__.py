"""The upstreams the proxy sends batches to, routed by (endpoint family, model).

Defined in the environment (settings.UPSTREAMS, see README "Upstreams"); the single OPENAI_*
settings are the default upstream, named `openai`, which serves every model no other upstream
claims. Each kind has its module behind `base.Transport`.
"""

from django.conf import settings

from .base import Transport, Upstream, UpstreamError

__all__ = ["DEFAULT", "KINDS", "Transport", "Upstream", "UpstreamError"]

DEFAULT = "openai"
# The kinds that speak OpenAI's Files + Batches API, i.e. serve its endpoints.
KINDS = ("openai", "azure")


def upstreams_all() -> list[Upstream]:
    """Every upstream, in routing order: those configured first, the default one last."""
    configured = [
        Upstream(
            name=item["name"],
            kind=item["kind"],
            base_url=item["base_url"],
            key_env=item["key_env"],
            models=tuple(item["models"]),
            api_version=item.get("api_version", ""),
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


def upstream_route(*, endpoint: str, model: str) -> Upstream:
    """The first upstream that serves this model on this endpoint's family.

    Every endpoint served today is OpenAI's, so the default upstream is always there to fall
    back on.
    """
    for upstream in upstreams_all():
        if upstream.kind in KINDS and upstream.serves(model):
            return upstream
    raise LookupError(f"no upstream serves {model} on {endpoint}")


def upstream_get(name: str) -> Upstream:
    for upstream in upstreams_all():
        if upstream.name == name:
            return upstream
    raise UpstreamError(f"upstream {name!r} is no longer configured", permanent=False)


def upstream_key(upstream: Upstream) -> str:
    """The default's key is a setting (OPENAI_API_KEY); the others' are read from their
    variable at call time."""
    return settings.OPENAI_API_KEY if upstream.name == DEFAULT else upstream.api_key()


def transport(name: str = DEFAULT) -> Transport:
    """The transport of the named upstream, with its key read from the environment now."""
    from .azure import AzureTransport
    from .openai import OpenAITransport

    upstream = upstream_get(name)
    key = upstream_key(upstream)
    if upstream.kind == "azure":
        return AzureTransport(upstream, key)
    return OpenAITransport(upstream, key)
