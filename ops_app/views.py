import functools
import hmac
import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from batches_app import upstreams
from requests_app.auth import bearer_token
from requests_app.errors import error_response, json_response
from requests_app.operators import admin_exists, createsuperuser_command

from .health import readiness_problems
from .metrics import DatabaseCollector

registry = CollectorRegistry(auto_describe=False)
registry.register(DatabaseCollector())


def require_get(view):
    """Like Django's require_GET, with the proxy's JSON error body (and no CSRF 403 first:
    these pages change nothing)."""

    @csrf_exempt
    @functools.wraps(view)
    def checked(request: HttpRequest) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            response = error_response(
                405, f"Use GET for {request.path}.", code="method_not_allowed"
            )
            response["Allow"] = "GET, HEAD"
            return response
        return view(request)

    return checked


@never_cache
@require_get
def front_page(request: HttpRequest) -> HttpResponse:
    """GET /: what this is, where to point the SDK, where the operator goes, what is missing.

    Public, like /healthz: it names no key, no upstream address and no figure.
    """
    base = request.build_absolute_uri("/").rstrip("/")
    context = {
        "base": base,
        "sdk_base_url": f"{base}/v1",
        "admin_url": f"/{settings.ADMIN_URL}",
        "dashboard_url": reverse("batchproxy-dashboard"),
        "admin_exists": admin_exists(),
        "createsuperuser": createsuperuser_command(),
        "upstream": _upstreams_described(),
    }
    return render(request, "batchproxy/front_page.html", context)


# What each kind of upstream is called on the front page.
KIND_WORDS = {
    "azure": "Azure OpenAI's Global Batch",
    "anthropic": "Anthropic's Message Batches",
    "gemini": "Gemini's batch jobs",
}


def _upstreams_described() -> str:
    """Where batches go, in words: the kinds with a key, never an address or a key's name."""
    if settings.TRY_OUT is not None:
        return (
            "the built-in fakes of OpenAI, Anthropic and Gemini (try-out mode: nothing reaches "
            "a provider)"
        )
    words = []
    for upstream in upstreams.upstreams_all():
        if not upstreams.upstream_key(upstream):
            continue
        if upstream.kind != "openai":
            word = KIND_WORDS[upstream.kind]
        elif upstream.base_url.startswith("https://api.openai.com/"):
            word = "OpenAI's Batch API"
        else:
            word = "an OpenAI-compatible Batch API"
        if word not in words:
            words.append(word)
    if not words:
        return "no upstream yet (no provider's key is set)"
    return ", ".join(words[:-1]) + (" and " if len(words) > 1 else "") + words[-1]


@never_cache
@require_get
def healthz(request: HttpRequest) -> HttpResponse:
    """The process is up; touches nothing else, so a database outage does not restart it."""
    return json_response({"status": "ok"})


@never_cache
@require_get
def readyz(request: HttpRequest) -> HttpResponse:
    problems = readiness_problems()
    if problems:
        return json_response({"status": "unavailable", "problems": problems}, 503)
    return json_response({"status": "ready"})


def _loopback(request: HttpRequest) -> bool:
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


@never_cache
@require_get
def metrics(request: HttpRequest) -> HttpResponse:
    """Closed unless the scraper sends METRICS_TOKEN: the figures name models and spend.

    Without a token it is open only when the operator says so (METRICS_PUBLIC), or to this
    machine in try-out mode.
    """
    if settings.METRICS_TOKEN:
        token = bearer_token(request) or ""
        if not hmac.compare_digest(token.encode(), settings.METRICS_TOKEN.encode()):
            return error_response(
                401,
                "Send the metrics token as 'Authorization: Bearer <token>'.",
                code="invalid_metrics_token",
            )
    elif not (settings.METRICS_PUBLIC or (settings.TRY_OUT is not None and _loopback(request))):
        return error_response(
            403,
            "/metrics is closed: set METRICS_TOKEN and send it as 'Authorization: Bearer "
            "<token>' (or set METRICS_PUBLIC=true on a private network).",
            code="metrics_closed",
        )
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
