"""Per-key limits and the admin's sign-in throttle, counted in the database.

The counters live in the database, not in Django's cache: the proxy runs as several gunicorn
workers (and may run on several hosts), where a per-process LocMem cache would let each process
count alone, and Redis is optional. One conditional UPDATE per counted call is atomic on
PostgreSQL and SQLite alike, so a limit holds exactly however many processes share it.

With a limit set to 0 (the default) none of this costs a query.
"""

import hashlib
import math
import time
from collections.abc import Callable

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.http import HttpRequest, HttpResponse
from rest_framework.exceptions import Throttled
from rest_framework.throttling import BaseThrottle

from .errors import ClientError
from .models import ApiKey, BatchRequest, RateCounter
from .services import ParsedCall, requests_enqueue


class LimitExceeded(ClientError):
    """A key or a client went over a limit: answered 429 with Retry-After."""

    def __init__(self, message: str, *, code: str, retry_after: int):
        self.retry_after = max(1, retry_after)
        # `type: "requests"` is what OpenAI itself sends with a request-rate 429.
        super().__init__(
            429,
            message,
            code=code,
            type="requests",
            headers={"Retry-After": str(self.retry_after)},
        )


def _now() -> float:
    return time.time()


def counter_take(*, scope: str, limit: int, period: int) -> int | None:
    """Count one hit on `scope` in the current fixed window of `period` seconds.

    Returns None when the hit fits under `limit` (at least 1), else the seconds until the
    window closes.
    The UPDATE only succeeds while `hits < limit`, so racing processes can never push a
    counter past its limit; a window's first hit inserts its row, and the unique constraint
    sends whoever inserts second back to the UPDATE.
    """
    now = _now()
    window_end = (int(now) // period + 1) * period
    counters = RateCounter.objects.filter(scope=scope, window_end=window_end)
    if counters.filter(hits__lt=limit).update(hits=F("hits") + 1):
        return None
    if not counters.exists():
        try:
            with transaction.atomic():
                RateCounter.objects.create(scope=scope, window_end=window_end, hits=1)
        except IntegrityError:
            if counters.filter(hits__lt=limit).update(hits=F("hits") + 1):
                return None
        else:
            # Once per window and scope: drop the windows that have closed, of every scope.
            RateCounter.objects.filter(window_end__lte=now).delete()
            return None
    return math.ceil(window_end - now)


def rate_limit_take(*, api_key_id: int) -> None:
    """Count one call against the key's RATE_LIMIT_PER_MINUTE; raise when it is over."""
    limit = settings.RATE_LIMIT_PER_MINUTE
    if limit <= 0:
        return
    wait = counter_take(scope=f"key:{api_key_id}", limit=limit, period=60)
    if wait is not None:
        raise LimitExceeded(
            f"Rate limit reached for this key: {limit} calls per minute. "
            f"Repeat the call in {wait} seconds.",
            code="rate_limit_exceeded",
            retry_after=wait,
        )


class RateLimitThrottled(Throttled):
    default_code = "rate_limit_exceeded"


class KeyRateThrottle(BaseThrottle):
    """RATE_LIMIT_PER_MINUTE for every client endpoint, one counter per key for all of them.

    Every call counts, repeats included. A call with a wrong key is let through to be refused
    401 by the view. With the limit off it costs nothing, not even the key's lookup.
    """

    def allow_request(self, request, view) -> bool:
        if settings.RATE_LIMIT_PER_MINUTE > 0 and isinstance(request.auth, ApiKey):
            try:
                rate_limit_take(api_key_id=request.auth.pk)
            except LimitExceeded as exc:
                raise RateLimitThrottled(wait=exc.retry_after, detail=exc.message) from None
        return True


def requests_enqueue_capped(*, api_key_id: int, call: ParsedCall) -> BatchRequest:
    """`requests_enqueue`, refused when the key already has MAX_QUEUED_PER_KEY pending requests,
    or MAX_GROUPS_PER_KEY pending (endpoint, model) groups and none of this call's.

    Steps, in one transaction: lock the key's row, so that a key's inserts are serialised and
    racing calls cannot all see room for one more (SQLite's IMMEDIATE transactions serialise
    every writer anyway); count its pending requests and groups; insert. A call whose
    identical request was queued by a racing twin gets that request, not a 429.
    """
    max_queued, max_groups = settings.MAX_QUEUED_PER_KEY, settings.MAX_GROUPS_PER_KEY
    if max_queued <= 0 and max_groups <= 0:
        return requests_enqueue(api_key_id=api_key_id, call=call)
    with transaction.atomic():
        list(ApiKey.objects.select_for_update().filter(pk=api_key_id).values_list("pk"))
        mine = BatchRequest.objects.filter(api_key_id=api_key_id)
        pending = mine.filter(status__in=BatchRequest.PENDING)
        refusal = None
        if max_queued > 0 and pending.count() >= max_queued:
            refusal = LimitExceeded(
                f"This key has {max_queued} requests waiting for the Batch API, the most it may "
                "have. Repeat the call once some of them are answered.",
                code="queue_limit_exceeded",
                retry_after=settings.POLL_INTERVAL,
            )
        elif (
            max_groups > 0
            and not pending.filter(endpoint=call.endpoint, model=call.model).exists()
            and pending.values("endpoint", "model").distinct().count() >= max_groups
        ):
            refusal = LimitExceeded(
                f"This key has requests waiting for {max_groups} different models (or "
                "endpoints), the most it may have at once. Repeat the call once some of them "
                "are answered.",
                code="queue_groups_exceeded",
                retry_after=settings.POLL_INTERVAL,
            )
        if refusal is not None:
            existing = mine.filter(fingerprint=call.fingerprint).first()
            if existing is not None:
                return existing
            raise refusal
        return requests_enqueue(api_key_id=api_key_id, call=call)


# A browser that signed in as a user carries this signed cookie, naming the user (hashed).
SIGNED_IN_COOKIE = "batchproxy_signed_in"
SIGNED_IN_SALT = "batchproxy.limits.signed-in"
SIGNED_IN_SECONDS = 90 * 86400


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def client_address(request: HttpRequest) -> str:
    """The caller's address: behind a load balancer the proxy trusts (USE_X_FORWARDED), the one
    it appended to X-Forwarded-For, since the connection's is the balancer's own."""
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if settings.USE_X_FORWARDED and forwarded:
        return forwarded.rsplit(",", 1)[-1].strip()
    return request.META.get("REMOTE_ADDR", "")


def _signed_in_before(request: HttpRequest, user: str) -> bool:
    seen = request.get_signed_cookie(
        SIGNED_IN_COOKIE, default=None, salt=SIGNED_IN_SALT, max_age=SIGNED_IN_SECONDS
    )
    return seen == user


def login_wait(request: HttpRequest, username: str) -> int | None:
    """Seconds a sign-in attempt must wait (None: let it through), counting it.

    Steps:
    1. One address and user name: ADMIN_LOGIN_ATTEMPTS per ADMIN_LOGIN_WINDOW, then locked
       until the window ends. A guesser from one address is stopped; the operator, from their
       own address, is not, so no one can lock them out.
    2. One user name from anywhere, past as many attempts in the window: one attempt per
       ADMIN_LOGIN_SLOWDOWN seconds. Guessing spread over many addresses is slowed, not
       locked: the operator is slowed by seconds, never locked out.
    3. A browser that signed in as this user before skips step 2: others' guessing never slows
       the operator's own browser.
    """
    limit, window = settings.ADMIN_LOGIN_ATTEMPTS, settings.ADMIN_LOGIN_WINDOW
    user = _digest(username.lower())
    pair = _digest(f"{client_address(request)}\n{user}")
    wait = counter_take(scope=f"login:{pair}", limit=limit, period=window)
    if wait is not None or _signed_in_before(request, user):
        return wait
    if counter_take(scope=f"login-user:{user}", limit=limit, period=window) is None:
        return None
    return counter_take(scope=f"login-slow:{user}", limit=1, period=settings.ADMIN_LOGIN_SLOWDOWN)


def login_throttled(login_view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap the admin's login view with `login_wait`.

    Every POST counts, successful or not: an operator signs in rarely, a guesser often.
    """

    def view(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.method != "POST" or settings.ADMIN_LOGIN_ATTEMPTS <= 0:
            return login_view(request, *args, **kwargs)
        username = request.POST.get("username", "")
        wait = login_wait(request, username)
        if wait is not None:
            response = HttpResponse(
                f"Too many sign-in attempts. Try again in {wait} seconds.\n",
                status=429,
                content_type="text/plain",
            )
            response["Retry-After"] = str(wait)
            return response
        response = login_view(request, *args, **kwargs)
        if request.user.is_authenticated and response.status_code == 302:
            response.set_signed_cookie(
                SIGNED_IN_COOKIE,
                _digest(username.lower()),
                salt=SIGNED_IN_SALT,
                max_age=SIGNED_IN_SECONDS,
                secure=settings.SESSION_COOKIE_SECURE,
                httponly=True,
                samesite="Lax",
            )
        return response

    return view
