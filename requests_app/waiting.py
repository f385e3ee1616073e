"""Held calls and streams: a caller waits, in the event loop, for its request's answer.

One watcher per event loop (one per process under the ASGI server) wakes every caller it holds:
- on PostgreSQL it LISTENs on `batchproxy_answers`, where a trigger NOTIFYs the id of each request
  that leaves the queue (answered, failed or cancelled; requests_app/migrations/0016), on a
  connection of its own;
- on SQLite, which has no NOTIFY, it polls every HOLD_POLL_SECONDS, one query for all the
  requests it holds;
and fetches the rows of the requests it holds that are done, in one query per wake-up, never one
per caller. A caller is handed its row, ready to answer.

A request may finish between the caller's read and its registration here: the watcher remembers
the ids it heard of lately, and when it (re)connects it checks everything it holds once.
"""

import asyncio
import contextlib
import contextvars
import logging
import time
import uuid
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection

from .models import BatchRequest
from .services import ANSWER_FIELDS

log = logging.getLogger(__name__)

CHANNEL = "batchproxy_answers"
# Whether this request is served by the ASGI server (batchproxy/asgi.py sets it): its views
# then run in a pool of threads, each on its own connection; else in the caller's thread.
serving: contextvars.ContextVar[bool] = contextvars.ContextVar("serving", default=False)
RECENT_SECONDS = 120.0
FETCH_CHUNK = 500


def answers_fetch(request_ids: list[uuid.UUID], fields: tuple[str, ...]) -> list[dict]:
    """The rows of those requests that are no longer pending (in chunks of FETCH_CHUNK)."""
    close_old_connections()
    rows = []
    for start in range(0, len(request_ids), FETCH_CHUNK):
        chunk = request_ids[start : start + FETCH_CHUNK]
        rows += (
            BatchRequest.objects.filter(pk__in=chunk)
            .exclude(status__in=BatchRequest.PENDING)
            .values(*fields)
        )
    return rows


class Watcher:
    """The callers this process holds, by request id, and the task that wakes them."""

    def __init__(self, fields: tuple[str, ...]):
        self.fields = fields
        self.waiting: dict[uuid.UUID, set[asyncio.Future]] = {}
        self.recent: OrderedDict[uuid.UUID, float] = OrderedDict()
        self.woken = asyncio.Event()
        self.heard: set[uuid.UUID] = set()
        self.loop = asyncio.get_running_loop()
        watch = self._listen if connection.vendor == "postgresql" else self._poll
        self.task = self.loop.create_task(watch())

    async def wait(self, request_id: uuid.UUID, timeout: float | None) -> dict | None:
        """The request's row once it is done, or None after `timeout` seconds (None: forever)."""
        future = self.loop.create_future()
        self.waiting.setdefault(request_id, set()).add(future)
        if request_id in self.recent:
            self._hear([request_id])
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            futures = self.waiting.get(request_id)
            if futures is not None:
                futures.discard(future)
                if not futures:
                    del self.waiting[request_id]

    def _hear(self, request_ids) -> None:
        now = time.monotonic()
        for request_id in request_ids:
            self.recent[request_id] = now
            self.recent.move_to_end(request_id)
            if request_id in self.waiting:
                self.heard.add(request_id)
        while self.recent and next(iter(self.recent.values())) < now - RECENT_SECONDS:
            self.recent.popitem(last=False)
        if self.heard:
            self.woken.set()

    async def _wake(self, request_ids) -> None:
        """Fetch the rows of those held requests that are done, and hand each to its callers."""
        if not request_ids:
            return
        rows = await sync_to_async(answers_fetch, thread_sensitive=False)(
            list(request_ids), self.fields
        )
        for row in rows:
            for future in self.waiting.get(row["id"], ()):
                if not future.done():
                    future.set_result(row)

    async def _deliver(self) -> None:
        """Wakes the callers of the ids heard, a batch of ids per fetch."""
        while True:
            await self.woken.wait()
            await asyncio.sleep(0.01)  # the rest of a batch's notifications arrive together
            self.woken.clear()
            heard, self.heard = self.heard, set()
            try:
                await self._wake(heard)
            except Exception:
                log.exception("waking held callers failed; they are checked again shortly")
                self.heard |= heard
                await asyncio.sleep(1)
                self.woken.set()

    async def _listen(self) -> None:
        """PostgreSQL: LISTEN, then check what it holds (what landed before), then wake on
        each notification; reconnect after a second when the connection drops."""
        import psycopg

        deliver = asyncio.get_running_loop().create_task(self._deliver())
        params = {
            name: value
            for name, value in connection.get_connection_params().items()
            if name not in ("cursor_factory", "context", "prepare_threshold")
        }
        try:
            while True:
                try:
                    async with await psycopg.AsyncConnection.connect(
                        **params, autocommit=True
                    ) as listener:
                        await listener.execute(f"LISTEN {CHANNEL}")
                        self._hear(list(self.waiting))
                        async for notify in listener.notifies():
                            with contextlib.suppress(ValueError):
                                self._hear([uuid.UUID(notify.payload)])
                except (psycopg.Error, OSError):
                    log.warning("the answers listener lost its connection; reconnecting")
                    await asyncio.sleep(1)
        finally:
            deliver.cancel()

    async def _poll(self) -> None:
        """SQLite: every HOLD_POLL_SECONDS, one query for all the requests held here."""
        while True:
            await asyncio.sleep(settings.HOLD_POLL_SECONDS)
            try:
                await self._wake(list(self.waiting))
            except Exception:
                log.exception("polling held requests failed; trying again")


# One watcher per event loop: the server's (one per process), or, under WSGI and the test
# client, each call's own short-lived loop.
_watchers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def answer_wait(request_id: uuid.UUID, timeout: float | None) -> dict | None:
    """The request's row (ANSWER_FIELDS) once it is no longer pending, or None after
    `timeout` seconds (None: for as long as the caller stays)."""
    loop = asyncio.get_running_loop()
    watcher = _watchers.get(loop)
    if watcher is None or watcher.task.done():
        watcher = _watchers[loop] = Watcher(ANSWER_FIELDS)
    return await watcher.wait(request_id, timeout)


# The threads that run the client API's views under ASGI, each with its database connection.
_pool = ThreadPoolExecutor(max_workers=settings.WEB_THREADS, thread_name_prefix="client-api")


def in_pool(func):
    """Run `func` (no arguments) in the pool, in this request's context (its request id): a
    plain executor call, which costs a third of asgiref's sync_to_async per call."""
    context = contextvars.copy_context()
    return asyncio.get_running_loop().run_in_executor(_pool, context.run, _fresh, func)


def in_thread(func):
    """Run `func` (no arguments) where sync work belongs: the pool under the ASGI server, else
    the caller's thread (the test client, WSGI)."""
    return in_pool(func) if serving.get() else sync_to_async(func)()


def _fresh(func):
    # What Django's request_started does (CONN_MAX_AGE, CONN_HEALTH_CHECKS), in the thread
    # whose connection serves the call.
    close_old_connections()
    return func()
