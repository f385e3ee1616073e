import math

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers
from rest_framework.generics import RetrieveAPIView

from batches_app import capacity

from . import limits
from .auth import api_key_for_hash, bearer_token
from .errors import ClientError, client_error_response, error_response, invalid_api_key
from .models import ApiKey, BatchRequest, hash_key
from .services import (
    ANSWER_FIELDS,
    CompiledValues,
    call_parse,
    requests_insert,
)

# The request with its key's state, by (key hash, fingerprint): the unique index answers it.
ANSWER_LOOKUP = CompiledValues(
    lambda key_hash, fingerprint: BatchRequest.objects.filter(
        api_key__key_hash=key_hash, fingerprint=fingerprint
    ).values(*ANSWER_FIELDS, "api_key_id", "api_key__revoked_at", "api_key__from_env")[:1],
    arity=2,
)


def retry_after(row: dict, *, waiting: bool = False) -> int:
    """An honest estimate of the seconds until the answer could be there.

    Queued: its group is flushed at the first tick after its oldest request has waited
    BATCH_MAX_WAIT (sooner when it fills up); then it runs upstream. Running: the proxy learns
    that a batch ended at its next poll, a tick after POLL_INTERVAL, or, with OpenAI's
    webhooks, a tick after it ends, which nobody knows in advance: ask again within 30 s.
    """
    now = timezone.now()
    tick = settings.TICK_SECONDS
    running = settings.POLL_INTERVAL
    if settings.OPENAI_WEBHOOK_SECRET:
        running = min(running, 30)
    wait = running + tick
    if waiting:
        # Capacity comes back when one of the model's batches finishes upstream.
        wait = max(wait, capacity.CAPACITY_RETRY_AFTER)
    elif row["status"] == BatchRequest.Status.QUEUED:
        start = max(row["not_before"] or now, row["created_at"])
        flush_in = (start - now).total_seconds() + settings.BATCH_MAX_WAIT
        wait += max(flush_in, 0) + tick
    return max(1, math.ceil(wait))


def answer(row: dict) -> HttpResponse:
    """The contract's answer for a request in any state (CONTRACT.md §1)."""
    request_id = str(row["id"])
    status = row["status"]
    if status in BatchRequest.PENDING:
        waiting = status == BatchRequest.Status.QUEUED and capacity.is_waiting(row["model"])
        state = f"{status}, waiting for queue capacity upstream," if waiting else status
        return error_response(
            422,
            f"Request {request_id} is {state} for the Batch API. "
            "Repeat the identical call later to get its answer.",
            type="batch_pending",
            code="batch_pending",
            Retry_After=str(retry_after(row, waiting=waiting)),
            X_Batch_Request_Id=request_id,
        )
    if status == BatchRequest.Status.COMPLETED:
        response = HttpResponse(
            row["response_body"], status=row["response_status"], content_type="application/json"
        )
        response["X-Batch-Request-Id"] = request_id
        return response
    if status == BatchRequest.Status.CANCELLED:
        return error_response(
            409,
            f"Request {request_id} was cancelled by an operator.",
            type="batch_cancelled",
            code="batch_cancelled",
            X_Should_Retry="false",
            X_Batch_Request_Id=request_id,
        )
    return error_response(
        502,
        f"Request {request_id} failed in the Batch API: "
        f"{row['error_message'] or row['error_code']}",
        type="batch_failed",
        code=row["error_code"] or "batch_failed",
        X_Should_Retry="false",
        X_Batch_Request_Id=request_id,
    )


# JSON travels as UTF-8 (RFC 8259 §8.1); a body declared in another charset is refused rather
# than guessed at.
UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


def _read_body(request: HttpRequest) -> bytes:
    charset = request.content_params.get("charset")
    if charset is not None and charset.strip().lower() not in UTF8_CHARSETS:
        raise ClientError(
            415,
            f"The body must be JSON in UTF-8, not {charset[:40]!r}.",
            code="unsupported_media_type",
        )
    declared = request.META.get("CONTENT_LENGTH") or ""
    if not declared:
        # Django reads a body only as far as its declared length: a chunked one would look
        # empty. Say what to do instead of calling it invalid JSON.
        raise ClientError(
            411, "Send the body with a Content-Length header.", code="length_required"
        )
    if not declared.isdigit() or int(declared) > settings.MAX_REQUEST_BYTES:
        raise ClientError(
            413,
            f"The body is larger than the proxy accepts ({settings.MAX_REQUEST_BYTES} bytes).",
            code="request_too_large",
        )
    try:
        return request.body
    except RequestDataTooBig:
        raise ClientError(413, "The body is too large.", code="request_too_large") from None


@csrf_exempt
def intake(request: HttpRequest, endpoint: str) -> HttpResponse:
    """POST /v1/<endpoint>: queue the call, or answer how it stands.

    A plain Django view rather than DRF: this is the hot path. A repeated call costs one
    query (the request joined with its key), a new call one more (the insert).
    """
    if request.method != "POST":
        response = error_response(405, f"Use POST for {request.path}.", code="method_not_allowed")
        response["Allow"] = "POST"
        return response
    token = bearer_token(request)
    if token is None:
        return invalid_api_key()
    key_hash = hash_key(token)
    try:
        call = call_parse(endpoint=endpoint, raw=_read_body(request))
    except ClientError as exc:
        # Only a valid key learns what is wrong with its input.
        if api_key_for_hash(key_hash, token) is None:
            return invalid_api_key()
        return client_error_response(exc)

    row = ANSWER_LOOKUP.first(key_hash, call.fingerprint)
    if row is not None:
        if row["api_key__revoked_at"] is not None or (
            row["api_key__from_env"] and key_hash not in settings.ENV_API_KEY_HASHES
        ):
            return invalid_api_key()
        try:
            limits.rate_limit_take(api_key_id=row["api_key_id"])
        except limits.LimitExceeded as exc:
            return exc.response()
        return answer(row)
    if settings.RATE_LIMIT_PER_MINUTE <= 0 and settings.MAX_QUEUED_PER_KEY <= 0:
        # No per-key limit to count first: find the key and insert in one statement.
        created = requests_insert(key_hash=key_hash, call=call)
        if created is not None:
            return answer(created)
    key = api_key_for_hash(key_hash, token)
    if key is None:
        return invalid_api_key()
    try:
        limits.rate_limit_take(api_key_id=key.pk)
        created = limits.requests_enqueue_capped(api_key_id=key.pk, call=call)
    except limits.LimitExceeded as exc:
        return exc.response()
    return answer({field: getattr(created, field) for field in ANSWER_FIELDS})


class BatchRequestSerializer(serializers.ModelSerializer):
    object = serializers.SerializerMethodField()
    waiting_for = serializers.SerializerMethodField()
    batch = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()

    class Meta:
        model = BatchRequest
        fields = (
            "id",
            "object",
            "status",
            "endpoint",
            "model",
            "attempts",
            "waiting_for",
            "batch",
            "error",
            "response_status",
            "created_at",
            "updated_at",
            "finished_at",
        )

    def get_object(self, obj: BatchRequest) -> str:
        return "batch_request"

    def get_waiting_for(self, obj: BatchRequest) -> str | None:
        """`queue_capacity` while the request waits for room in its model's upstream queue."""
        waiting = obj.status == BatchRequest.Status.QUEUED and capacity.is_waiting(obj.model)
        return "queue_capacity" if waiting else None

    def get_batch(self, obj: BatchRequest) -> dict | None:
        if obj.batch is None:
            return None
        return {
            "id": str(obj.batch_id),
            "upstream_id": obj.batch.upstream_id or None,
            "status": obj.batch.upstream_status or obj.batch.state,
        }

    def get_error(self, obj: BatchRequest) -> dict | None:
        if not obj.error_code:
            return None
        return {"code": obj.error_code, "message": obj.error_message}


class BatchRequestDetail(RetrieveAPIView):
    """GET /v1/batch_requests/{id}: how one of the caller's own requests stands."""

    serializer_class = BatchRequestSerializer
    throttle_classes = [limits.KeyRateThrottle]

    def get_queryset(self):
        key: ApiKey = self.request.auth
        return (
            BatchRequest.objects.filter(api_key=key)
            .select_related("batch")
            .defer("body", "response_body")
        )
