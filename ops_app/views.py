import functools
import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from requests_app.auth import bearer_token
from requests_app.errors import error_response, json_response

from .health import readiness_problems
from .metrics import DatabaseCollector

registry = CollectorRegistry(auto_describe=False)
registry.register(DatabaseCollector())


def require_get(view):
    """Like Django's require_GET, with the proxy's JSON error body."""

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


@never_cache
@require_get
def metrics(request: HttpRequest) -> HttpResponse:
    if settings.METRICS_TOKEN:
        token = bearer_token(request) or ""
        if not hmac.compare_digest(token.encode(), settings.METRICS_TOKEN.encode()):
            return error_response(
                401,
                "Send the metrics token as 'Authorization: Bearer <token>'.",
                code="invalid_metrics_token",
            )
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
