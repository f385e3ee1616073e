"""Bedrock runtime's intake: boto3's `bedrock-runtime` client (`converse`, `invoke_model`) with
the proxy as its `endpoint_url`, queued like the others and sent as Bedrock batch inference jobs
(batches_app/upstreams/bedrock.py); every error in the shape boto3 reads.

The key. boto3 signs its calls with SigV4, an HMAC keyed by the secret access key; the proxy
keeps only the SHA-256 of each proxy key (requests_app/models.py, `ApiKey`), so it cannot
recompute a signature. It takes the key two ways instead:
- a Bedrock API key, which botocore sends as `Authorization: Bearer <key>` when
  `AWS_BEARER_TOKEN_BEDROCK` is set (the documented scheme for Bedrock API keys): the proxy key
  there, as for OpenAI's SDK;
- SigV4, with the proxy key as the access key id (`Credential=<proxy key>/…`) and any secret:
  the key travels in the header as a bearer does (so only over TLS), and the signature is not
  checked.
"""

import re

import orjson
from django.http import HttpResponse
from rest_framework.exceptions import NotAuthenticated
from rest_framework.request import Request

from requests_app.auth import ProxyKeyAuthentication
from requests_app.errors import PROXY_TYPES, ClientError, _proxy_error, _rewritten
from requests_app.models import Endpoint
from requests_app.views import ProviderIntake

# `AWS4-HMAC-SHA256 Credential=<access key id>/<date>/<region>/<service>/aws4_request, ...`
SIGV4 = re.compile(r"^AWS4-HMAC-SHA256 +Credential=([A-Za-z0-9_-]{1,256})/")
# HTTP status -> the exception name Bedrock runtime answers with (boto3's `Error.Code`).
EXCEPTIONS = {
    400: "ValidationException",
    401: "UnrecognizedClientException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    405: "ValidationException",
    413: "ValidationException",
    429: "ThrottlingException",
    503: "ServiceUnavailableException",
}


class BedrockKeyAuthentication(ProxyKeyAuthentication):
    """A bearer (a Bedrock API key), or SigV4 whose access key id is the proxy key."""

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if header.startswith("AWS4-HMAC-SHA256"):
            match = SIGV4.match(header)
            return self.presented(match[1]) if match else None
        return super().authenticate(request)


def bedrock_shaped(response: HttpResponse) -> HttpResponse:
    """An OpenAI-shaped error answer rewritten as Bedrock's `{"message"}` with its exception
    name in `x-amzn-ErrorType`; the proxy's own states (`batch_pending`, ...) keep their code.
    Other bodies pass unchanged (an answer, or Bedrock's own error for that request)."""
    error = _proxy_error(response)
    if error is None:
        return response
    code = error.get("code") or error.get("type")
    if code not in PROXY_TYPES and error.get("type") not in PROXY_TYPES:
        status = response.status_code
        code = EXCEPTIONS.get(status, "InternalServerException" if status >= 500 else None)
        code = code or "ValidationException"
    response["x-amzn-ErrorType"] = code
    return _rewritten(response, {"message": error["message"]})


class BedrockIntake(ProviderIntake):
    """POST /model/{modelId}/converse or /invoke."""

    authentication_classes = [BedrockKeyAuthentication]
    key_variable = "UPSTREAMS (kind bedrock)"
    checks_new = True

    def check_new(self, call) -> None:
        if call.endpoint != Endpoint.BEDROCK_CONVERSE:
            return
        messages = orjson.loads(call.canonical).get("messages")
        if not isinstance(messages, list) or not messages:
            raise ClientError(400, "messages: a non-empty array is required.", code="invalid_value")

    def finalize_response(self, request, response, *args, **kwargs):
        return bedrock_shaped(super().finalize_response(request, response, *args, **kwargs))


class BedrockStreamRefused(BedrockIntake):
    """converse-stream and invoke-with-response-stream: a batch is answered whole."""

    def post(self, request: Request, endpoint: str, model: str | None = None) -> HttpResponse:
        if not request.user.is_authenticated:
            raise NotAuthenticated
        raise ClientError(
            400,
            "Streaming is not supported: batched requests are answered whole. Call converse "
            "or invoke_model.",
            code="unsupported_parameter",
        )
