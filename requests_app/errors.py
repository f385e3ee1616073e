"""OpenAI-shaped error answers: `{"error": {"message", "type", "param", "code"}}`, all four."""

import orjson
from django.http import HttpResponse
from rest_framework import exceptions
from rest_framework.views import exception_handler


class ClientError(Exception):
    """Bad input: answered with `status` and nothing stored."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


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


def client_error_response(exc: ClientError) -> HttpResponse:
    return error_response(exc.status, exc.message, code=exc.code, param=exc.param)


def invalid_api_key() -> HttpResponse:
    return error_response(
        401,
        "Incorrect or missing API key. Send a proxy key as 'Authorization: Bearer <key>'.",
        code="invalid_api_key",
    )


def not_found(request, *args, **kwargs) -> HttpResponse:
    return error_response(404, f"Unknown path: {request.path}", code="unknown_url")


def server_error(request, *args, **kwargs) -> HttpResponse:
    return error_response(
        500, "The proxy failed on this request.", type="server_error", code="server_error"
    )


def drf_exception_handler(exc, context):
    """Give DRF's errors the OpenAI shape the SDKs parse."""
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        return invalid_api_key()
    response = exception_handler(exc, context)
    if response is None:
        return None
    detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
    code = exc.get_codes() if isinstance(exc, exceptions.APIException) else None
    return error_response(
        response.status_code,
        str(detail),
        code=code if isinstance(code, str) else None,
        **{k: v for k, v in response.items() if k.lower() in ("retry-after", "allow")},
    )
