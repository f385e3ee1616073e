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
