"""Intake: turn a client's call into a queued request, exactly once per (key, endpoint, body)."""

import hashlib
from dataclasses import dataclass

import orjson
from django.db import IntegrityError, transaction

from .errors import ClientError
from .models import BatchRequest, Endpoint


@dataclass(frozen=True, slots=True)
class ParsedCall:
    endpoint: str
    model: str
    canonical: bytes
    fingerprint: str
    embedding_inputs: int


def _embedding_inputs(body: dict) -> int:
    value = body.get("input")
    if isinstance(value, list) and value and not isinstance(value[0], int):
        return len(value)  # a list of strings or of token arrays: one input each
    return 1


def call_parse(*, endpoint: str, raw: bytes) -> ParsedCall:
    """Validate a call's body and give its canonical form and fingerprint.

    Canonical JSON (sorted keys, no insignificant white space) is the request's identity, so
    the same call with its keys in another order is the same request.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ClientError(400, "The body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ClientError(400, "The body must be a JSON object.", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ClientError(
            400, "'model' is required and must be a string.", code="invalid_model", param="model"
        )
    if len(model) > 200:
        raise ClientError(400, "'model' is too long.", code="invalid_model", param="model")
    if body.get("stream") not in (None, False):
        raise ClientError(
            400,
            "Streaming is not supported: batched requests are answered whole. Drop 'stream'.",
            code="unsupported_parameter",
            param="stream",
        )
    try:
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        raise ClientError(
            400, "The body holds a number too large to handle.", code="invalid_json"
        ) from None
    fingerprint = hashlib.sha256(endpoint.encode() + b"\n" + canonical).hexdigest()
    inputs = _embedding_inputs(body) if endpoint == Endpoint.EMBEDDINGS else 0
    return ParsedCall(endpoint, model, canonical, fingerprint, inputs)


def requests_enqueue(*, api_key_id: int, call: ParsedCall) -> BatchRequest:
    """The key's live request for this call, created if there is none.

    The unique constraint on (key, fingerprint) decides races: whoever inserts second gets an
    IntegrityError and reads the winner's row.
    """
    try:
        with transaction.atomic():
            return BatchRequest.objects.create(
                api_key_id=api_key_id,
                endpoint=call.endpoint,
                model=call.model,
                body=call.canonical.decode(),
                body_bytes=len(call.canonical),
                embedding_inputs=call.embedding_inputs,
                fingerprint=call.fingerprint,
            )
    except IntegrityError:
        return BatchRequest.objects.get(api_key_id=api_key_id, fingerprint=call.fingerprint)
