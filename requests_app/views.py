import asyncio
import functools
import math
import re

import orjson
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import serializers
from rest_framework.exceptions import MethodNotAllowed, NotAuthenticated
from rest_framework.generics import ListAPIView, RetrieveAPIView
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from batches_app import capacity, catalog, tiers, upstreams

from . import limits, streams
from .api import RawBodyParser
from .auth import (
    AnthropicKeyAuthentication,
    GeminiKeyAuthentication,
    PresentsKey,
    ProviderKeyAuthentication,
    ProxyKey,
)
from .deadlines import Deadline, deadline_parse
from .errors import ClientError, anthropic_shaped, error_response, gemini_shaped
from .listing import FinishedCursorPagination, finished_requests
from .models import ApiKey, BatchRequest, Endpoint, ResponseChunk
from .services import (
    ANSWER_FIELDS,
    IMAGES_EDITS_JSON_ONLY,
    RECENT_CALLS,
    CompiledValues,
    call_parse,
    generate_content_check,
    requests_take,
)
from .videos import video_content_stream
from .waiting import answer_wait, in_pool, in_thread, serving

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
    Sent synchronously (a deadline, tiers.py): the tier's median answer time and a tick. A
    deadline caps it: the caller asks again by then.
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
    elif row.get("sync_tier"):
        eta = _eta(row, now)
        wait = tick + (max((eta[0] - now).total_seconds(), 0) if eta else 0)
    elif row["status"] == BatchRequest.Status.QUEUED:
        start = max(row["not_before"] or now, row["created_at"])
        flush_in = (start - now).total_seconds() + settings.BATCH_MAX_WAIT
        wait += max(flush_in, 0) + tick
    if row.get("deadline") is not None:
        wait = min(wait, max((row["deadline"] - now).total_seconds(), tick))
    return max(1, math.ceil(wait))


def _eta(row: dict, now) -> tuple | None:
    if not row.get("endpoint"):
        return None
    return tiers.request_eta(
        status=row["status"],
        endpoint=row["endpoint"],
        model=row["model"],
        created_at=row["created_at"],
        sync_tier=row.get("sync_tier") or "",
        now=now,
    )


def _eta_words(row: dict) -> str:
    eta = _eta(row, timezone.now())
    if eta is None:
        return ""
    median, p90, tier = eta
    return (
        f" Expected by {median:%Y-%m-%dT%H:%M:%SZ} through the {tier} tier "
        f"(90% by {p90:%Y-%m-%dT%H:%M:%SZ})."
    )


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
            "Repeat the identical call later to get its answer." + _eta_words(row),
            type="batch_pending",
            code="batch_pending",
            Retry_After=str(retry_after(row, waiting=waiting)),
            X_Batch_Request_Id=request_id,
        )
    if status == BatchRequest.Status.COMPLETED:
        response = (
            streamed_answer(row)
            if row["response_chunks"]
            else HttpResponse(
                row["response_body"],
                status=row["response_status"],
                content_type="application/json",
            )
        )
        response["X-Batch-Request-Id"] = request_id
        receipt_headers(response, row)
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


def hold_seconds(meta: dict, caller: ProxyKey) -> int:
    """How long to hold a pending call for its answer: RFC 7240's `Prefer: wait=N`, else the
    key's hold_seconds, capped by MAX_HOLD_SECONDS (0: answer at once)."""
    wait = caller.hold_seconds or 0
    for preference in re.split(r"[,;]", meta.get("HTTP_PREFER", "")):
        name, _, value = preference.partition("=")
        value = value.strip().strip('"')
        if name.strip().lower() == "wait" and value.isdigit():
            wait = int(value) if len(value) < 10 else settings.MAX_HOLD_SECONDS
    return min(wait, settings.MAX_HOLD_SECONDS)


class Held(HttpResponse):
    """A pending call to be held: what the intake (a DRF view, in a thread) hands to the
    event loop (`holding`), which waits for the answer there and renders it."""

    def __init__(self, row: dict, seconds: int, render):
        super().__init__(status=202)
        self.row, self.seconds, self.render = row, seconds, render


def holding(view):
    """The client API's view as Django serves it: the DRF view in a thread of the pool (one
    hop, as Django would make for a sync view, but not serialised on one thread), then, for a
    held call, the wait in the event loop, costing no thread.

    Under the test client the view runs in the caller's thread, on its database connection.
    Under WSGI (batchproxy/wsgi.py) Django is handed `sync_view` instead: the DRF view in the
    worker's thread, as before, and a held call waits on that thread."""

    in_caller = sync_to_async(view, thread_sensitive=True)

    async def settled(held: Held, *, gone=None) -> HttpResponse:
        waiting = asyncio.ensure_future(answer_wait(held.row["id"], held.seconds))
        if gone is not None:  # under the ASGI server: stop waiting if the client goes away
            watch = asyncio.ensure_future(gone())
            done, _ = await asyncio.wait((waiting, watch), return_when=asyncio.FIRST_COMPLETED)
            if watch in done:
                watch.exception()  # RequestAborted, read so that it is not logged as lost
            watch.cancel()
            if not waiting.done():
                waiting.cancel()
                return HttpResponse(status=499)  # nobody is there to read it
        row = await waiting
        response = await in_thread(functools.partial(held.render, row or held.row))
        response["Preference-Applied"] = f"wait={held.seconds}"
        return response

    @functools.wraps(view)  # DRF's `cls` and `initkwargs`, csrf_exempt
    async def client_view(request, *args, **kwargs):
        if serving.get():
            response = await in_pool(functools.partial(view, request, *args, **kwargs))
        else:
            response = await in_caller(request, *args, **kwargs)
        if isinstance(response, Held):
            gone = getattr(request, "client_gone", None)
            response = await settled(response, gone=gone)
        return response

    def sync_view(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        if isinstance(response, Held):
            response = async_to_sync(settled)(response)
        return response

    client_view.sync_view = sync_view
    return client_view


def sse_answer(row: dict, call, error_shape) -> StreamingHttpResponse:
    """A call that streams: 200 `text/event-stream` at once, a keep-alive frame every
    STREAM_KEEPALIVE_SECONDS while its batch runs, then its answer as the provider's own
    stream events (requests_app/streams.py). A caller that goes away leaves its request queued;
    the same call again attaches to it."""

    async def events():
        current = row
        while current["status"] in BatchRequest.PENDING:
            done = await answer_wait(current["id"], settings.STREAM_KEEPALIVE_SECONDS)
            if done is None:
                yield streams.keepalive(call.endpoint)
            else:
                current = done
        if current["status"] == BatchRequest.Status.COMPLETED:
            body = current["response_body"]
            if current["response_chunks"]:
                body = await in_thread(functools.partial(answer_body, current["id"]))
            for frame in streams.stream_events(
                endpoint=call.endpoint,
                status=current["response_status"],
                body=body.encode() if isinstance(body, str) else body,
                include_usage=call.include_usage,
            ):
                yield frame
        else:
            error = error_shape(answer(current))  # failed or cancelled: no query
            yield streams.error_event(call.endpoint, status=error.status_code, body=error.content)

    response = StreamingHttpResponse(events(), content_type=streams.SSE_CONTENT_TYPE)
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each frame on at once
    response["X-Batch-Request-Id"] = str(row["id"])
    return response


def answer_body(request_id) -> str:
    """A large answer's body, joined from its pieces."""
    pieces = ResponseChunk.objects.filter(request_id=request_id).order_by("seq")
    return "".join(pieces.values_list("data", flat=True))


def receipt_headers(response: HttpResponse, row: dict) -> None:
    """`X-Batch-Tier` (batch, flex, standard) and `X-Batch-Cost-USD` (absent when unpriced)."""
    if row.get("tier"):
        response["X-Batch-Tier"] = row["tier"]
    if row.get("cost_usd") is not None:
        response["X-Batch-Cost-USD"] = f"{row['cost_usd'].normalize():f}"


def streamed_answer(row: dict) -> StreamingHttpResponse:
    """A large stored answer (images), read from the database and sent one piece at a time.

    Any web process can serve it, and holds one piece (RESPONSE_CHUNK_CHARS) of it at a time,
    however many such answers it sends at once.
    """
    request_id, pieces = row["id"], row["response_chunks"]
    chunks = ResponseChunk.objects.filter(request_id=request_id)

    def piece(seq: int) -> str | None:
        # One query per piece: a cursor held open across the whole answer would pin a
        # connection (and, on PostgreSQL, a snapshot) to a slow client.
        return chunks.filter(seq=seq).values_list("data", flat=True).first()

    def body():
        for seq in range(pieces):
            if (data := piece(seq)) is None:
                return  # purged while being sent: the short body tells the client
            yield data.encode()

    async def body_in_event_loop():
        # Under ASGI: Django would read a sync iterator whole before sending a byte.
        for seq in range(pieces):
            if (data := await in_pool(functools.partial(piece, seq))) is None:
                return
            yield data.encode()

    response = StreamingHttpResponse(
        body_in_event_loop() if serving.get() else body(),
        status=row["response_status"],
        content_type="application/json",
    )
    response["Content-Length"] = str(row["response_bytes"])
    response["X-Batch-Request-Id"] = str(request_id)
    return response


# JSON travels as UTF-8 (RFC 8259 §8.1); a body declared in another charset is refused rather
# than guessed at.
UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


def refuse_form_upload(request: Request, endpoint: str) -> None:
    """A form or file upload cannot go into a batch: every batch line is a JSON body.

    The SDKs send images.edit as multipart by default; say how to send the JSON form instead
    of calling the upload invalid JSON.
    """
    if request.content_type.split(";")[0].strip() not in (
        "multipart/form-data",
        "application/x-www-form-urlencoded",
    ):
        return
    if endpoint == Endpoint.IMAGES_EDITS:
        message = IMAGES_EDITS_JSON_ONLY
    elif endpoint == Endpoint.VIDEOS:
        message = (
            "The Batch API takes videos in their JSON form only: send 'Content-Type: "
            'application/json\', with \'input_reference\' as {"image_url": …} or {"file_id": …}.'
        )
    else:
        message = "The Batch API takes JSON bodies only: send 'Content-Type: application/json'."
    raise ClientError(400, message, code="unsupported_content_type")


def _read_body(request: Request) -> bytes:
    """The body's bytes (RawBodyParser), once its declared charset and length are acceptable."""
    http = request._request  # its headers, without DRF's attribute proxy (the hot path)
    charset = http.content_params.get("charset")
    if charset is not None and charset.strip().lower() not in UTF8_CHARSETS:
        raise ClientError(
            415,
            f"The body must be JSON in UTF-8, not {charset[:40]!r}.",
            code="unsupported_media_type",
        )
    declared = http.META.get("CONTENT_LENGTH") or ""
    if not declared:
        # Django reads a body only as far as its declared length: a chunked one would look
        # empty. Say what to do instead of calling it invalid JSON.
        raise ClientError(
            411, "Send the body with a Content-Length header.", code="length_required"
        )
    if not declared.isdigit() or int(declared) > settings.MAX_REQUEST_BYTES:
        # Refused before a byte is read; what is read below is at most what was declared.
        raise ClientError(
            413,
            f"The body is larger than the proxy accepts ({settings.MAX_REQUEST_BYTES} bytes).",
            code="request_too_large",
        )
    # DRF parses nothing when the declared length is 0: an empty body, not JSON (400).
    return request.data or b""


class Intake(APIView):
    """POST /v1/<endpoint>: queue the call, or answer how it stands.

    DRF, lean, because this is the hot path. The key comes first: before a byte of the body is
    read, it is known (from this process's memory of keys seen lately, else one indexed
    lookup), so a wrong key costs the same whatever it sends. Then the call costs one round
    trip on PostgreSQL (`requests_take`: the request found or queued in one statement); on
    SQLite one statement too, as a rule: a lookup for a call this process met lately, else an
    insert (RECENT_CALLS). For Gemini's calls (whose SDK check only a new call pays) and under
    a queue cap, a lookup comes first, and only a new call pays the insert. The answer is the
    contract's HttpResponse, sent as it is; a call that streams or asks to be held (`reply`) gets a
    stream, or a `Held` that `holding` awaits in the event loop.
    """

    http_method_names = ["post"]
    permission_classes = [PresentsKey]
    parser_classes = [RawBodyParser]
    throttle_classes = [limits.KeyRateThrottle]
    metadata_class = None
    schema = None  # described by hand: ops_app/openapi.py
    # Whether a new call must pass `check_new`, which a repeat ask skips.
    checks_new = False
    # Whether every call of this endpoint streams (Gemini's streamGenerateContent).
    streams = False
    # The proxy's own errors in the caller's SDK's shape (OpenAI's here).
    error_shape = staticmethod(lambda response: response)
    call = None
    hold = 0

    @property
    def default_response_headers(self) -> dict:
        return {}  # DRF would add `Allow` to every answer; a 405 has it (errors.py)

    def finalize_response(self, request, response, *args, **kwargs):
        return self.error_shape(super().finalize_response(request, response, *args, **kwargs))

    def initial(self, request, *args, **kwargs) -> None:
        # A wrong method is 405 whoever asks, before the key is looked at.
        if request.method != "POST":
            raise MethodNotAllowed(request.method)
        super().initial(request, *args, **kwargs)

    def post(self, request: Request, endpoint: str, model: str | None = None) -> HttpResponse:
        caller: ProxyKey = request.user
        if not caller.is_trusted():
            raise NotAuthenticated
        now = timezone.now()
        try:
            refuse_form_upload(request, endpoint)
            call = call_parse(
                endpoint=endpoint, raw=_read_body(request), model=model, stream=self.streams
            )
            self.call, self.hold = call, hold_seconds(request._request.META, caller)
            self.check_served(call)
            when = deadline_parse(request._request.META, now=now)
            if when is not None and when.now and not self.answers_now(call):
                raise ClientError(
                    400,
                    "X-Batch-Mode: now is not offered for images, videos, or this model's "
                    "upstream (no synchronous API): the call waits for its batch.",
                    code="invalid_header",
                    param="X-Batch-Mode",
                )
        except ClientError:
            # Only a key active now learns what is wrong with its input: trusted from memory,
            # it may have been revoked since (one lookup, on this error path only).
            if not caller.is_authenticated:
                raise NotAuthenticated from None
            raise

        capped = settings.MAX_QUEUED_PER_KEY > 0
        seen = (caller.key_hash, call.fingerprint)
        # SQLite: a call this process has met lately is looked up first (a repeat ask reads
        # and never waits for the write lock); any other is inserted first.
        sqlite = connection.vendor != "postgresql"
        looked = self.checks_new or capped or (sqlite and seen in RECENT_CALLS)
        if looked:
            if (found := self.looked_up(caller, when)) is not None:
                return found
            try:
                self.check_new(call)
            except ClientError:
                if not caller.is_authenticated:
                    raise NotAuthenticated from None
                raise
        if not capped:
            deadline = when.resolve(now) if when is not None else None
            taken = requests_take(key_hash=caller.key_hash, call=call, deadline=deadline, now=now)
            if taken.key_active is False:
                raise NotAuthenticated
            if taken.created:
                if sqlite:
                    RECENT_CALLS.add(seen)
                return (
                    self.deadline_apply(taken.row, when, stored=True)
                    if when
                    else self.reply(taken.row)
                )
            if taken.row is not None:
                return self.found(taken.row, when)
            if sqlite and not looked and (found := self.looked_up(caller, when)) is not None:
                return found
        # A twin won the race, the key is at a cap, or it has just gone: the general path
        # tells which.
        if not caller.is_authenticated:
            raise NotAuthenticated
        created = limits.requests_enqueue_capped(api_key_id=caller.key.pk, call=call)
        row = {field: getattr(created, field) for field in ANSWER_FIELDS}
        return self.deadline_apply(row, when) if when and created.is_pending else self.reply(row)

    def looked_up(self, caller: ProxyKey, when: Deadline | None) -> HttpResponse | None:
        """The answer to this call if it was made before (ANSWER_LOOKUP), else None."""
        row = ANSWER_LOOKUP.first(caller.key_hash, self.call.fingerprint)
        if row is None:
            return None
        if not caller.accepts(row):
            raise NotAuthenticated
        if connection.vendor != "postgresql":
            RECENT_CALLS.add((caller.key_hash, self.call.fingerprint))
        return self.found(row, when)

    def found(self, row: dict, when: Deadline | None) -> HttpResponse:
        """The answer to a call made before; a deadline it carries may tighten a pending one."""
        if when is not None and row["status"] in BatchRequest.PENDING:
            return self.deadline_apply(row, when)
        return self.reply(row)

    def reply(self, row: dict) -> HttpResponse:
        """The answer as the call asked for it: as a stream, held until the answer lands
        (`Prefer: wait=N`), or at once."""
        if self.call.stream:
            return sse_answer(row, self.call, self.error_shape)
        if self.hold and row["status"] in BatchRequest.PENDING:
            return Held(row, self.hold, lambda row: self.error_shape(answer(row)))
        return answer(row)

    def deadline_apply(self, row: dict, when: Deadline, *, stored: bool = False) -> HttpResponse:
        """A pending request's call with a deadline: an earlier one tightens the stored one (one
        conditional UPDATE, only for calls that carry the header); `now` sends it at once at
        the standard tier and answers with the upstream's answer."""
        deadline = when.resolve(row["created_at"])
        if not stored:
            tiers.deadline_tighten(request_id=row["id"], deadline=deadline)
        if not when.now:
            return self.reply(row | {"deadline": min(filter(None, (row["deadline"], deadline)))})
        tiers.request_answer_now(request_id=row["id"])
        fresh = BatchRequest.objects.filter(pk=row["id"]).values(*ANSWER_FIELDS).first()
        return self.reply(fresh or row)

    @staticmethod
    def answers_now(call) -> bool:
        route = upstreams.upstream_route(endpoint=call.endpoint, model=call.model)
        return tiers.sync_offered(route, call.endpoint)

    def check_served(self, call) -> None:
        """On OpenAI's endpoints the default upstream serves every model."""

    def check_new(self, call) -> None:
        """What only a call not seen before must pass (the repeat path skips it), when
        `checks_new` is set."""


class ProviderIntake(Intake):
    """An endpoint of another provider's API, served only by an upstream of its kind."""

    key_variable = ""

    def check_served(self, call) -> None:
        if upstreams.upstream_route(endpoint=call.endpoint, model=call.model) is None:
            kind = upstreams.kinds_for(call.endpoint)[0]
            raise ClientError(
                404,
                f"model: no upstream of this proxy serves {call.model!r} (set "
                f"{self.key_variable} or an upstream of kind {kind}).",
                code="model_not_found",
                param="model",
            )


class AnthropicIntake(ProviderIntake):
    """POST /v1/messages: Anthropic's Messages API, queued like the others and sent through
    Message Batches; the key as `x-api-key` or a bearer, every error in Anthropic's shape."""

    authentication_classes = [AnthropicKeyAuthentication]
    key_variable = "ANTHROPIC_API_KEY"

    error_shape = staticmethod(anthropic_shaped)


class GeminiIntake(ProviderIntake):
    """POST /v1beta/models/{model}:generateContent (or /v1/…): the Gemini API's, as google-genai
    calls it, queued like the others and sent as a Gemini batch job; the key as
    `x-goog-api-key`, every error in Google's shape."""

    authentication_classes = [GeminiKeyAuthentication]
    key_variable = "GEMINI_API_KEY"
    checks_new = True

    def check_new(self, call) -> None:
        generate_content_check(call)

    error_shape = staticmethod(gemini_shaped)


class GeminiStreamIntake(GeminiIntake):
    """…:streamGenerateContent?alt=sse: queued like generateContent, answered as Gemini's
    stream when the batch lands."""

    streams = True


# The proxy's own read endpoints take the key as the caller's SDK sends it: an Anthropic or
# Gemini caller holds only its x-api-key or x-goog-api-key (or a bearer, as OpenAI's SDKs send).
PROVIDER_KEYS = [ProviderKeyAuthentication]


class BatchRequestSerializer(serializers.ModelSerializer):
    object = serializers.SerializerMethodField()
    waiting_for = serializers.SerializerMethodField()
    batch = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()
    eta = serializers.SerializerMethodField()
    receipt = serializers.SerializerMethodField()

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
            "deadline",
            "eta",
            "receipt",
            "created_at",
            "updated_at",
            "finished_at",
        )

    @extend_schema_field(
        {
            "type": "object",
            "nullable": True,
            "properties": {
                "median": {"type": "string", "format": "date-time"},
                "p90": {"type": "string", "format": "date-time"},
                "tier": {"type": "string", "enum": ["batch", "flex", "standard"]},
            },
        }
    )
    def get_eta(self, obj: BatchRequest) -> dict | None:
        """When a pending request's answer is expected (the forecast's median and p90)."""
        batch = obj.batch
        eta = tiers.request_eta(
            status=obj.status,
            endpoint=obj.endpoint,
            model=obj.model,
            created_at=obj.created_at,
            sync_tier=obj.sync_tier,
            batch_upstream=batch.upstream if batch else None,
            batch_started=batch.upstream_created_at if batch else None,
        )
        if eta is None:
            return None
        return {"median": eta[0], "p90": eta[1], "tier": eta[2]}

    @extend_schema_field(
        {
            "type": "object",
            "nullable": True,
            "properties": {
                "tier": {"type": "string", "enum": ["batch", "flex", "standard"]},
                "input_tokens": {"type": "integer", "nullable": True},
                "output_tokens": {"type": "integer", "nullable": True},
                "cost_usd": {"type": "string", "nullable": True},
                "standard_cost_usd": {"type": "string", "nullable": True},
                "saving_usd": {"type": "string", "nullable": True},
                "paid_twice": {"type": "boolean"},
                "escalated": {"type": "boolean"},
                "deadline_met": {"type": "boolean", "nullable": True},
            },
        }
    )
    def get_receipt(self, obj: BatchRequest) -> dict | None:
        """Who answered and what it cost; None until answered."""
        if not obj.tier:
            return None
        money = (obj.cost_usd, obj.standard_cost_usd, obj.saving_usd)
        cost, standard, saving = (None if v is None else f"{v.normalize():f}" for v in money)
        met = None
        if obj.deadline is not None and obj.finished_at is not None:
            met = obj.finished_at <= obj.deadline
        return {
            "tier": obj.tier,
            "input_tokens": obj.input_tokens,
            "output_tokens": obj.output_tokens,
            "cost_usd": cost,
            "standard_cost_usd": standard,
            "saving_usd": saving,
            "paid_twice": obj.paid_twice,
            "escalated": obj.escalated_at is not None,
            "deadline_met": met,
        }

    def get_object(self, obj: BatchRequest) -> str:
        return "batch_request"

    def get_waiting_for(self, obj: BatchRequest) -> str | None:
        """`queue_capacity` while the request waits for room in its model's upstream queue."""
        waiting = obj.status == BatchRequest.Status.QUEUED and capacity.is_waiting(
            obj.model, obj.endpoint
        )
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
    authentication_classes = PROVIDER_KEYS
    throttle_classes = [limits.KeyRateThrottle]

    def get_queryset(self):
        key: ApiKey = self.request.auth
        return (
            BatchRequest.objects.filter(api_key=key)
            .select_related("batch")
            .defer("body", "response_body")
        )


class FinishedRequestSerializer(BatchRequestSerializer):
    """A list entry; with `?include=body`, also the answer as the caller would get it."""

    response = serializers.SerializerMethodField()
    response_omitted = serializers.SerializerMethodField()

    class Meta(BatchRequestSerializer.Meta):
        fields = (*BatchRequestSerializer.Meta.fields, "response", "response_omitted")

    def get_response_omitted(self, obj: BatchRequest) -> bool:
        """True for a large answer (images), which only the identical call streams."""
        return bool(self.context.get("include_body") and obj.response_chunks)

    @extend_schema_field({"type": "object", "nullable": True, "additionalProperties": True})
    def get_response(self, obj: BatchRequest) -> dict | None:
        if not self.context.get("include_body") or obj.response_body is None:
            return None
        return orjson.loads(obj.response_body)


@extend_schema_view(
    get=extend_schema(
        parameters=[
            OpenApiParameter(
                "status",
                str,
                description="Comma-separated: completed, failed, cancelled (default: all three).",
            ),
            OpenApiParameter("include", str, enum=["body"], description="`body`: the answers."),
        ]
    )
)
class BatchRequestList(ListAPIView):
    """GET /v1/batch_requests?status=completed&after=<cursor>: the caller's own finished
    requests, oldest finish first; `next_cursor` (or `last_id`, as OpenAI's lists and their
    SDKs' auto-pagination send it) of one page is the `after` of the next."""

    serializer_class = FinishedRequestSerializer
    pagination_class = FinishedCursorPagination
    authentication_classes = PROVIDER_KEYS
    throttle_classes = [limits.KeyRateThrottle]

    def include_body(self) -> bool:
        return "body" in self.request.query_params.get("include", "").split(",")

    def get_serializer_context(self) -> dict:
        return super().get_serializer_context() | {"include_body": self.include_body()}

    def get_queryset(self):
        key: ApiKey = self.request.auth
        rows = BatchRequest.objects.filter(api_key=key).select_related("batch").defer("body")
        if not self.include_body():
            rows = rows.defer("body", "response_body")
        return finished_requests(queryset=rows, statuses=self.request.query_params.get("status"))


class VideoContent(APIView):
    """GET /v1/videos/{id}/content: a video one of the caller's calls made, streamed from
    upstream (which keeps it for a day); another key's video is 404, like an unknown one."""

    throttle_classes = [limits.KeyRateThrottle]
    schema = None  # described by hand: ops_app/openapi.py

    def get(self, request: Request, video_id: str) -> StreamingHttpResponse:
        key: ApiKey = request.auth
        variant = request.query_params.get("variant", "video")
        media_type, content = video_content_stream(
            api_key_id=key.pk, video_id=video_id, variant=variant
        )
        return StreamingHttpResponse(content, content_type=media_type)


class ModelSerializer(serializers.Serializer):
    """OpenAI's model object (openai.types.Model)."""

    id = serializers.CharField()
    object = serializers.CharField()
    created = serializers.IntegerField()
    owned_by = serializers.CharField()


class ModelListSerializer(serializers.Serializer):
    object = serializers.CharField()
    data = ModelSerializer(many=True)


class ModelList(APIView):
    """GET /v1/models: the models the proxy knows, in OpenAI's list shape (a key's health check).

    The operator's models (prices, queue limits, upstreams' model lists) and the models this
    key has had batches of; never another key's.
    """

    authentication_classes = PROVIDER_KEYS
    throttle_classes = [limits.KeyRateThrottle]

    @extend_schema(operation_id="list_models", responses=ModelListSerializer)
    def get(self, request: Request) -> Response:
        known = catalog.models_known(api_key_id=request.auth.pk)
        data = [catalog.model_object(m, first) for m, first in known.items()]
        return Response({"object": "list", "data": data})


class ModelDetail(APIView):
    """GET /v1/models/{model}: one known model, or 404 `model_not_found` as OpenAI answers."""

    authentication_classes = PROVIDER_KEYS
    throttle_classes = [limits.KeyRateThrottle]

    @extend_schema(operation_id="retrieve_model", responses=ModelSerializer)
    def get(self, request: Request, model: str) -> Response:
        found = catalog.model_find(model, api_key_id=request.auth.pk)
        if found is None:
            raise ClientError(
                404,
                f"The model '{model[:200]}' does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        return Response(found)
