"""Completion webhooks to callers: register endpoints, record events, deliver them.

The outbox is `WebhookEvent`: the engine calls `webhook_events_record` in the transaction that
finishes requests, so an event exists exactly when its request has ended. The delivery task
(`webhooks_deliver`, a django-q2 schedule) groups each endpoint's new events into deliveries
of a bounded size, then POSTs each due delivery, signed the Standard Webhooks way, and retries
a failed one with exponential back-off until WEBHOOK_RETRY_FOR has passed. Ingestion never
waits for a receiver: it only inserts rows.
"""

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import orjson
import requests
import urllib3
from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.db.models.functions import Coalesce, Length
from django.utils import timezone
from requests_hardened import Config, HTTPSession
from requests_hardened.ip_filter import InvalidIPAddress, filter_host
from standardwebhooks import Webhook
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from batches_app.leases import run_lease

from .models import ApiKey, BatchRequest, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from .models import WebhookEvent as Event

log = logging.getLogger(__name__)
Status = BatchRequest.Status
EVENT_TYPES = {
    Status.COMPLETED: Event.Type.COMPLETED,
    Status.FAILED: Event.Type.FAILED,
    Status.CANCELLED: Event.Type.CANCELLED,
}


# Of a receiver's answer, only the start is read (and its first characters kept for the admin).
ANSWER_BYTES = 4096
ANSWER_CHARS = 1000


class WebhookURLError(ValueError):
    """A URL the proxy will not send to."""


# --- Endpoints ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedEndpoint:
    endpoint: WebhookEndpoint
    secret: str


def webhook_url_check(url: str, *, resolve: bool = True) -> None:
    """Refuse what the proxy will not send to: not http(s), plain http to a host the operator
    did not allow, or (with `resolve`) a host that resolves to a loopback, private, link-local
    or metadata address, unless WEBHOOK_ALLOW_PRIVATE_URLS. At delivery the address check is
    made by the session itself, on the very address it connects to (DNS can change).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise WebhookURLError(f"Not an http(s) URL with a host: {url[:200]!r}.")
    if parts.scheme == "http" and host not in settings.WEBHOOK_ALLOW_HTTP_HOSTS:
        raise WebhookURLError(
            f"Plain http to {host} is not allowed: use https, or list the host in "
            "WEBHOOK_ALLOW_HTTP_HOSTS."
        )
    if settings.WEBHOOK_ALLOW_PRIVATE_URLS or not resolve:
        return
    try:
        filter_host(host, parts.port or 443, allow_loopback=False)
    except InvalidIPAddress as exc:
        raise _private(host, exc) from None
    except requests.RequestException as exc:
        raise WebhookURLError(f"{host} cannot be resolved: {exc}") from None


def _private(host: str, address: object) -> WebhookURLError:
    return WebhookURLError(
        f"{host} resolves to a private address ({address}); set "
        "WEBHOOK_ALLOW_PRIVATE_URLS=true to allow it."
    )


def webhook_endpoint_create(
    *, url: str, api_key: ApiKey | None = None, include_body: bool = False
) -> IssuedEndpoint:
    """Register an endpoint (for one key, or every key when `api_key` is None)."""
    webhook_url_check(url)
    endpoint = WebhookEndpoint.objects.create(
        url=url, api_key=api_key, include_body=include_body, secret=WebhookEndpoint.new_secret()
    )
    return IssuedEndpoint(endpoint, endpoint.secret)


def webhook_endpoint_remove(*, endpoint_id: int) -> bool:
    """Delete an endpoint with its undelivered events and its deliveries."""
    return WebhookEndpoint.objects.filter(pk=endpoint_id).delete()[0] > 0


# --- The outbox -----------------------------------------------------------------------------


def webhook_events_record(*, requests: QuerySet) -> int:
    """Write one event per endpoint for each finished request among `requests`.

    Call it inside the transaction that finished them, with a query that finds exactly those
    rows (e.g. by their `finished_at`): the event then commits, or rolls back, with the
    request's new state. Costs one query when no endpoint is registered.
    """
    endpoints = list(WebhookEndpoint.objects.filter(is_active=True).values_list("pk", "api_key_id"))
    if not endpoints:
        return 0
    finished = requests.filter(status__in=EVENT_TYPES).values_list(
        "pk", "api_key_id", "status", "response_status"
    )
    now = timezone.now()
    events = [
        Event(
            endpoint_id=endpoint_id,
            request_id=pk,
            type=EVENT_TYPES[status],
            status=status,
            response_status=response_status,
            created_at=now,
        )
        for pk, key_id, status, response_status in finished.iterator(chunk_size=2000)
        for endpoint_id, endpoint_key in endpoints
        if endpoint_key is None or endpoint_key == key_id
    ]
    Event.objects.bulk_create(events, batch_size=1000)
    return len(events)


# --- Delivery -------------------------------------------------------------------------------


@dataclass(slots=True)
class DeliveryReport:
    grouped: int = 0
    delivered: int = 0
    failed: int = 0


def webhooks_deliver(*, budget: float | None = None) -> DeliveryReport | None:
    """Group new events into deliveries, then send every due delivery; None when another
    run is in progress.

    1. `webhook_deliveries_group`: each endpoint's unassigned events, WEBHOOK_MAX_EVENTS (and,
       with bodies, WEBHOOK_MAX_BYTES) at a time, become deliveries.
    2. Send due deliveries one by one, until none is due or `budget` seconds have passed
       (each delivery takes at most WEBHOOK_DELIVERY_SECONDS). An endpoint that fails once is
       skipped for the rest of the run, so a receiver that is down costs one timeout per run,
       not one per delivery.
    One run at a time (`run_lease`): however slow the receivers, deliveries hold at most one
    of django-q2's workers, so the engine's tick always finds another (Q_WORKERS >= 2). Each
    step claims rows with SKIP LOCKED besides.
    """
    with run_lease("webhooks") as alone:
        if not alone:
            return None
        return _deliver(settings.WEBHOOK_RUN_SECONDS if budget is None else budget)


def _deliver(budget: float) -> DeliveryReport:
    report = DeliveryReport(grouped=webhook_deliveries_group())
    deadline = time.monotonic() + budget
    down: set[int] = set()
    while time.monotonic() < deadline:
        delivery = _claim_due(exclude=down)
        if delivery is None:
            break
        if webhook_delivery_send(delivery=delivery):
            report.delivered += 1
        else:
            report.failed += 1
            down.add(delivery.endpoint_id)
    return report


def webhook_deliveries_group() -> int:
    """Put every endpoint's unassigned events into deliveries; return how many were made."""
    made = 0
    endpoint_ids = (
        Event.objects.filter(delivery=None).values_list("endpoint_id", flat=True).distinct()
    )
    active = WebhookEndpoint.objects.filter(pk__in=list(endpoint_ids), is_active=True)
    for endpoint in active:
        while _group_one(endpoint):
            made += 1
    return made


def _group_one(endpoint: WebhookEndpoint) -> bool:
    with transaction.atomic():
        rows = list(
            Event.objects.select_for_update(skip_locked=True)
            .filter(endpoint=endpoint, delivery=None)
            .order_by("pk")
            .values_list("pk", flat=True)[: settings.WEBHOOK_MAX_EVENTS]
        )
        if endpoint.include_body and rows:
            rows = _within_bytes(rows)
        if not rows:
            return False
        now = timezone.now()
        delivery = WebhookDelivery.objects.create(
            endpoint=endpoint,
            next_attempt_at=now,
            created_at=now,
            give_up_at=now + timedelta(seconds=settings.WEBHOOK_RETRY_FOR),
        )
        # Only events still unassigned: where SKIP LOCKED is not enforced (SQLite), another
        # run may have taken them meanwhile.
        if not Event.objects.filter(pk__in=rows, delivery=None).update(delivery=delivery):
            delivery.delete()
    return True


def _within_bytes(event_ids: list[int]) -> list[int]:
    """The first events whose bodies fit in WEBHOOK_MAX_BYTES (always at least one)."""
    sizes = dict(
        Event.objects.filter(pk__in=event_ids)
        .annotate(size=Coalesce(Length("request__response_body"), 0))
        .values_list("pk", "size")
    )
    kept, total = [], 0
    for pk in event_ids:
        total += sizes.get(pk, 0)
        if kept and total > settings.WEBHOOK_MAX_BYTES:
            break
        kept.append(pk)
    return kept


def _claim_due(*, exclude: set[int]) -> WebhookDelivery | None:
    """Take the oldest due delivery, leased past the send's timeout by its `next_attempt_at`.

    The lease is a compare-and-set on `next_attempt_at`, so two runs never both take one
    delivery, even where SKIP LOCKED is not enforced (SQLite).
    """
    due = (
        WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("endpoint")
        .filter(endpoint__is_active=True)  # an inactive endpoint is paused
        .exclude(endpoint_id__in=exclude)
        .order_by("next_attempt_at")
    )
    for _ in range(10):
        now = timezone.now()
        with transaction.atomic():
            delivery = due.filter(
                status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now
            ).first()
            if delivery is None:
                return None
            lease = now + timedelta(seconds=settings.WEBHOOK_DELIVERY_SECONDS + 60)
            taken = WebhookDelivery.objects.filter(
                pk=delivery.pk,
                status=WebhookDelivery.Status.PENDING,
                next_attempt_at=delivery.next_attempt_at,
            ).update(next_attempt_at=lease)
        if taken:
            delivery.next_attempt_at = lease
            return delivery
    return None


def webhook_payload(*, delivery: WebhookDelivery) -> bytes | None:
    """The POST body: `{"object": "list", "data": [event, ...]}`, each event in the Standard
    Webhooks shape (`type`, `timestamp`, `data`). None when no event is left (their requests
    were purged)."""
    include_body = delivery.endpoint.include_body
    fields = ["pk", "type", "created_at", "status", "response_status"]
    fields += [f"request__{name}" for name in ("id", "endpoint", "model", "error_code")]
    fields += ["request__error_message"]
    fields += ["request__response_body", "request__response_chunks"] if include_body else []
    events = []
    for row in delivery.events.order_by("pk").values(*fields):
        data = {
            "id": str(row["request__id"]),
            "object": "batch_request",
            "endpoint": row["request__endpoint"],
            "model": row["request__model"],
            "status": row["status"],
            "response_status": row["response_status"],
            "error": (
                {"code": row["request__error_code"], "message": row["request__error_message"]}
                if row["request__error_code"] and row["status"] != Status.COMPLETED
                else None
            ),
        }
        if include_body:
            body = row["request__response_body"]
            data["response"] = orjson.Fragment(body) if body is not None else None
            if row["request__response_chunks"]:
                # A large answer (images) is not inlined: the caller's identical call gets it.
                data["response_omitted"] = True
        events.append(
            {
                "id": f"evt_{row['pk']}",
                "type": row["type"],
                "timestamp": row["created_at"].isoformat().replace("+00:00", "Z"),
                "data": data,
            }
        )
    return orjson.dumps({"object": "list", "data": events}) if events else None


class _Deadline:
    """Cuts a delivery's connections when its time is up.

    WEBHOOK_TIMEOUT bounds each read, so a receiver dripping a byte at a time (in its status
    line, headers or body) would hold the delivery for ever; a timer shuts the sockets down at
    WEBHOOK_DELIVERY_SECONDS instead, and the blocked read returns at once with an error.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _cut(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def __enter__(self) -> "_Deadline":
        _watching.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        _watching.deadline = None


def _shut(sock: socket.socket) -> None:
    # The plain socket's shutdown, also under TLS: the reading thread's SSL object stays whole.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_watching = threading.local()


class _WatchedConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        if deadline := getattr(_watching, "deadline", None):
            deadline.watch(self.sock)


class _WatchedTLSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        if deadline := getattr(_watching, "deadline", None):
            deadline.watch(self.sock)


class _WatchedPool(HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _WatchedTLSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedTLSConnection


def _session() -> HTTPSession:
    """`requests` that connects only to the address it checked, follows no redirect, and
    times out (requests-hardened resolves the host, refuses private addresses unless allowed,
    and pins the connection to the checked address, keeping the name for TLS); its
    connections are watched by the delivery's `_Deadline`."""
    session = HTTPSession(
        Config(
            ip_filter_enable=not settings.WEBHOOK_ALLOW_PRIVATE_URLS,
            ip_filter_allow_loopback_ips=False,
            never_redirect=True,
            default_timeout=(settings.WEBHOOK_TIMEOUT, settings.WEBHOOK_TIMEOUT),
            user_agent_override="batchproxy-webhooks",
        )
    )
    pools = {"http": _WatchedPool, "https": _WatchedTLSPool}
    for adapter in session.adapters.values():
        adapter.poolmanager.pool_classes_by_scheme = pools
    return session


def _answer_read(response: requests.Response) -> str:
    """The start of the receiver's answer, for the admin: at most ANSWER_BYTES read, never the
    rest (a receiver may answer 400 MB); a failure to read it changes no outcome."""
    try:
        data = response.raw.read(ANSWER_BYTES, decode_content=True) or b""
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
        data = b""
    return data.decode("utf-8", "replace")[:ANSWER_CHARS]


def webhook_delivery_send(*, delivery: WebhookDelivery) -> bool:
    """POST one delivery, record the attempt, and settle it: delivered on a 2xx, else retried
    later (back-off doubling from WEBHOOK_BACKOFF) or, past its `give_up_at`, failed.

    The whole exchange lasts at most WEBHOOK_DELIVERY_SECONDS and reads at most ANSWER_BYTES
    of the answer; the URL's query string never reaches the attempt's record or the logs.
    """
    endpoint = delivery.endpoint
    attempt = WebhookAttempt(delivery=delivery, started_at=timezone.now())
    started = time.monotonic()
    deadline = _Deadline(settings.WEBHOOK_DELIVERY_SECONDS)
    try:
        webhook_url_check(endpoint.url, resolve=False)
        body = webhook_payload(delivery=delivery)
        if body is None:
            return _settle(delivery, attempt)
        headers = _signed_headers(endpoint.secret, delivery.message_id, body)
        with deadline, _session() as session:
            response = session.post(endpoint.url, data=body, headers=headers, stream=True)
            with response:
                attempt.response_status = response.status_code
                attempt.response_body = _answer_read(response)
        if response.is_redirect:
            attempt.error = "Redirects are not followed: register the final URL."
        elif not 200 <= response.status_code < 300:
            attempt.error = f"The receiver answered HTTP {response.status_code}."
    except WebhookURLError as exc:
        attempt.error = str(exc)
    except InvalidIPAddress as exc:
        attempt.error = str(_private(urlsplit(endpoint.url).hostname, exc))
    except requests.RequestException as exc:
        if deadline.expired:
            attempt.error = (
                f"The receiver took more than WEBHOOK_DELIVERY_SECONDS "
                f"({settings.WEBHOOK_DELIVERY_SECONDS:g} s) to answer."
            )
        else:
            attempt.error = f"{type(exc).__name__}: {exc}"[:2000]
    # An error may name the URL: its query string (often a token) is hidden.
    attempt.error = _scrubbed(attempt.error, endpoint.url)
    attempt.duration_ms = int((time.monotonic() - started) * 1000)
    return _settle(delivery, attempt)


def _scrubbed(text: str, url: str) -> str:
    parts = urlsplit(url)
    for secret in (parts.query, parts.username, parts.password):
        if secret:
            text = text.replace(secret, "…")
    return text


def _signed_headers(secret: str, message_id: str, body: bytes) -> dict[str, str]:
    now = timezone.now()
    signature = Webhook(secret).sign(message_id, now, body.decode())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def _settle(delivery: WebhookDelivery, attempt: WebhookAttempt) -> bool:
    ok = not attempt.error
    now = timezone.now()
    attempts = delivery.attempts + 1
    fields: dict = {"attempts": attempts, "last_error": attempt.error}
    if ok:
        fields |= {"status": WebhookDelivery.Status.DELIVERED, "delivered_at": now}
    elif now >= delivery.give_up_at:
        fields |= {"status": WebhookDelivery.Status.FAILED}
    else:
        delay = min(settings.WEBHOOK_BACKOFF * 2 ** (attempts - 1), settings.WEBHOOK_BACKOFF_CAP)
        fields |= {"next_attempt_at": now + timedelta(seconds=delay)}
    with transaction.atomic():
        attempt.save()
        # Compare-and-set on the lease: a worker whose lease ran out records its attempt only.
        WebhookDelivery.objects.filter(
            pk=delivery.pk,
            status=WebhookDelivery.Status.PENDING,
            next_attempt_at=delivery.next_attempt_at,
        ).update(**fields)
    if not ok:
        log.warning(
            "webhook delivery %s to endpoint %s failed (attempt %d): %s",
            delivery.message_id,
            delivery.endpoint_id,
            attempts,
            attempt.error[:300],
        )
    return ok


def webhook_deliveries_resend(*, delivery_ids) -> int:
    """Send deliveries again now (delivered or given up ones too), with a fresh day to retry."""
    now = timezone.now()
    return WebhookDelivery.objects.filter(pk__in=delivery_ids).update(
        status=WebhookDelivery.Status.PENDING,
        next_attempt_at=now,
        give_up_at=now + timedelta(seconds=settings.WEBHOOK_RETRY_FOR),
    )


def webhook_deliveries_purge(*, before: datetime) -> int:
    """Forget delivered deliveries (with their events and attempts) older than `before`."""
    done = WebhookDelivery.objects.filter(
        Q(status=WebhookDelivery.Status.DELIVERED, delivered_at__lt=before)
        | Q(status=WebhookDelivery.Status.FAILED, give_up_at__lt=before)
    )
    return done.delete()[0]
