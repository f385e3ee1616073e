"""OpenAI-shaped error answers: `{"error": {"message", "type", "param", "code"}}`, all four."""

import orjson
from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.views import exception_handler


class ClientError(Exception):
    """Bad input or a refused call: answered with `status` and nothing stored.

    Raised anywhere under a DRF view, it is answered by `drf_exception_handler`.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type
        self.headers = headers or {}

    def response(self) -> HttpResponse:
        response = error_response(
            self.status, self.message, type=self.type, code=self.code, param=self.param
        )
        for name, value in self.headers.items():
            response[name] = value
        return response


def error_body(message: str, *, type: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def json_response(payload: dict | bytes | str, status: int = 200, **headers: str) -> HttpResponse:
    content = payload if isinstance(payload, bytes | str) else orjson.dumps(payload)
    response = HttpResponse(content, status=status, content_type="application/json")
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    **headers: str,
) -> HttpResponse:
    return json_response(error_body(message, type=type, code=code, param=param), status, **headers)


def invalid_api_key() -> HttpResponse:
    return error_response(
        401,
        "Incorrect or missing API key. Send a proxy key as 'Authorization: Bearer <key>'.",
        code="invalid_api_key",
    )


# HTTP status -> Anthropic's error type (https://docs.claude.com/en/api/errors).
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
}
# The proxy's own states keep their names, as on OpenAI's endpoints.
PROXY_TYPES = ("batch_pending", "batch_failed", "batch_cancelled")


def anthropic_shaped(response: HttpResponse) -> HttpResponse:
    """An OpenAI-shaped error answer rewritten as Anthropic's `{"type": "error", "error":
    {"type", "message"}}`, headers kept. Other bodies (an answer, or Anthropic's own error for
    that request) pass unchanged."""
    error = _proxy_error(response)
    if error is None:
        return response
    return _rewritten(response, anthropic_error(response.status_code, error))


def anthropic_error(status: int, error: dict) -> dict:
    """The proxy's OpenAI-shaped `error` (with its HTTP status) in Anthropic's shape."""
    kind = error.get("type")
    if kind not in PROXY_TYPES:
        kind = ANTHROPIC_TYPES.get(status, "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": error["message"]}}


def _proxy_error(response: HttpResponse) -> dict | None:
    """The `error` of one of the proxy's own OpenAI-shaped error answers, else None (an
    answer, or the upstream's own error body for that request)."""
    if response.status_code < 400 or not response.get("Content-Type", "").startswith(
        "application/json"
    ):
        return None
    return proxy_error(response.content)


def proxy_error(content: bytes) -> dict | None:
    """The `error` of an OpenAI-shaped error body of the proxy's own, else None."""
    try:
        error = orjson.loads(content).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if not isinstance(error, dict) or "message" not in error or "code" not in error:
        return None
    if set(error) != {"message", "type", "param", "code"}:
        return None  # not ours: ours always has these four
    return error


def _rewritten(response: HttpResponse, body: dict) -> HttpResponse:
    response.content = orjson.dumps(body)
    if response.has_header("Content-Length"):
        response["Content-Length"] = str(len(response.content))
    return response


# HTTP status -> google.rpc.Code name, as Google's APIs answer (https://google.aip.dev/193).
GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "ABORTED",
    411: "INVALID_ARGUMENT",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    422: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
}


def gemini_shaped(response: HttpResponse) -> HttpResponse:
    """An OpenAI-shaped error answer rewritten as Google's `{"error": {"code", "message",
    "status", "details"}}`, headers kept. Other bodies pass unchanged."""
    error = _proxy_error(response)
    if error is None:
        return response
    return _rewritten(response, google_error(response.status_code, error))


def google_error(status: int, error: dict) -> dict:
    """The proxy's OpenAI-shaped `error` (with its HTTP status) in Google's shape; the proxy's
    own state (`batch_pending`, ...) is the reason of a google.rpc.ErrorInfo in `details`."""
    body = {
        "code": status,
        "message": error["message"],
        "status": GOOGLE_STATUSES.get(status, "UNKNOWN"),
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": str(error.get("code") or error.get("type") or "").upper(),
                "domain": "batchproxy",
            }
        ],
    }
    return {"error": body}


@csrf_exempt  # an unknown path is 404 for every method, never a CSRF 403
def not_found(request, *args, **kwargs) -> HttpResponse:
    return error_response(404, f"Unknown path: {request.path}", code="unknown_url")


def server_error(request, *args, **kwargs) -> HttpResponse:
    return error_response(
        500, "The proxy failed on this request.", type="server_error", code="server_error"
    )


def drf_exception_handler(exc, context):
    """The one EXCEPTION_HANDLER: every refusal of a client endpoint in OpenAI's error shape.

    A wrong or missing key is 401 `invalid_api_key` and says nothing else; a 429 has OpenAI's
    type for rate limits (`requests`) and Retry-After; a 405 names the allowed methods.
    Anything else DRF does not know is left to Django (a 500, logged).
    """
    if isinstance(exc, ClientError):
        return exc.response()
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        return invalid_api_key()
    response = exception_handler(exc, context)
    if response is None:
        return None
    detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)  # Http404
    code = exc.get_codes() if isinstance(exc, exceptions.APIException) else None
    headers = {k: v for k, v in response.items() if k.lower() == "retry-after"}
    if isinstance(exc, exceptions.MethodNotAllowed):
        headers["Allow"] = ", ".join(context["view"].allowed_methods)
    return error_response(
        response.status_code,
        str(detail),
        type="requests" if isinstance(exc, exceptions.Throttled) else "invalid_request_error",
        code=code if isinstance(code, str) else None,
        **headers,
    )
