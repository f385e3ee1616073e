"""The ASGI application, which `serve` and the Docker image run (docs/benchmarks.md: why).

As in batchproxy/wsgi.py, the client API (/v1/…, /v1beta/…) has a handler of its own, built from
CLIENT_API_MIDDLEWARE, and everything else (the admin) goes through all of MIDDLEWARE. Two things
are added for the client API:
- its views run in a pool of threads, each with its own database connection, and a held call
  or a stream waits in the event loop (requests_app/views.py, `holding`);
- the key before the body: Django's ASGI handler reads a whole body before any view runs, so for
  a key that is not active, or a body declared larger than MAX_REQUEST_BYTES, the handler is
  given an empty body instead, and the view answers 401 or 413 from the headers alone.
"""

import asyncio
import contextlib
import functools
import logging
import os

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.core.asgi import get_asgi_application
from django.core.exceptions import ImproperlyConfigured, RequestAborted

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "batchproxy.settings")

everything = get_asgi_application()  # sets Django up

# No system checks under an ASGI server: a production without SECRET_KEY or ALLOWED_HOSTS
# stops here.
from django.conf import settings  # noqa: E402
from django.core.handlers.asgi import ASGIHandler, get_script_prefix  # noqa: E402
from django.urls import set_script_prefix, set_urlconf  # noqa: E402
from django.utils.log import log_response, request_logger  # noqa: E402

from ops_app.checks import startup_refusal  # noqa: E402
from requests_app.auth import ProviderKeyAuthentication  # noqa: E402
from requests_app.waiting import in_pool, serving  # noqa: E402

if (refusal := startup_refusal()) is not None:
    raise ImproperlyConfigured(refusal)


class ClientApiHandler(ASGIHandler):
    """Django's ASGI handler for the client API, less three thread hops per call.

    Django's opens a ThreadSensitiveContext per request, which starts a thread for the call's
    sync work, and runs the sync receivers of request_started and request_finished (resetting
    and closing the thread's database connections) through sync_to_async. Here the views run
    in the pool's threads, which do what request_started does themselves (`waiting.in_pool`),
    and request_finished's receivers run in the event loop, whose thread holds no connection.
    Only a stream is sent while watching for the client going away. Measured:
    docs/benchmarks.md ("ASGI").
    """

    async def __call__(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            return

        # A held call watches for its client going away, from the moment it is held (holding).
        request.client_gone = functools.partial(self.listen_for_disconnect, receive)
        response = await self.run_get_response(request)
        if response.streaming:
            await self._send_until_gone(response, send, receive)
        else:
            await self.send_response(response, send)
        response.close()  # request_finished, in the event loop's thread
        body_file.close()

    async def get_response_async(self, request):
        """Django's, less a thread hop for a log line nobody keeps: Django hands every answer
        of 400 and up to `log_response` through sync_to_async, and each 422 "not ready yet"
        is one, while LOGGING keeps only django.request's errors. Logged as ever when the
        logger takes it (a 5xx, or a lower level configured)."""
        set_urlconf(settings.ROOT_URLCONF)
        response = await self._middleware_chain(request)
        response._resource_closers.append(request.close)
        level = logging.ERROR if response.status_code >= 500 else logging.WARNING
        if response.status_code >= 400 and request_logger.isEnabledFor(level):
            await sync_to_async(log_response, thread_sensitive=False)(
                "%s: %s", response.reason_phrase, request.path, response=response, request=request
            )
        return response

    def make_view_atomic(self, view):
        """A sync view (the read endpoints) runs in the pool too, as the intake does: Django
        would run it on its one shared thread, whose connection nothing checks any more."""
        view = super().make_view_atomic(view)
        if iscoroutinefunction(view):
            return view

        @functools.wraps(view)
        async def in_pool_view(request, *args, **kwargs):
            return await in_pool(functools.partial(view, request, *args, **kwargs))

        return in_pool_view

    async def _send_until_gone(self, response, send, receive) -> None:
        """A stream (a held call's events, a large answer) is sent while Django watches for
        the client going away, as its own handler does for every call: the stream's
        generator is then cancelled, and its wait with it."""
        watch = asyncio.create_task(self.listen_for_disconnect(receive))
        sending = asyncio.create_task(self.send_response(response, send))
        await asyncio.wait((watch, sending), return_when=asyncio.FIRST_COMPLETED)
        for task in (watch, sending):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RequestAborted):
                await task


def _client_api_handler() -> ASGIHandler:
    full = settings.MIDDLEWARE
    settings.MIDDLEWARE = settings.CLIENT_API_MIDDLEWARE
    try:
        return ClientApiHandler()  # reads MIDDLEWARE now, once
    finally:
        settings.MIDDLEWARE = full


client_api = _client_api_handler()
CLIENT_API_PREFIXES = ("/v1/", "/v1beta/")
KEY_HEADERS = (b"authorization", b"x-api-key", b"x-goog-api-key")


async def _body_worth_reading(scope) -> bool:
    """Whether the declared length is acceptable and the key presented is active."""
    meta = {}
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value.decode("latin-1")
            if not length.isdigit() or int(length) > settings.MAX_REQUEST_BYTES:
                return False
        elif name in KEY_HEADERS:
            meta["HTTP_" + name.decode().upper().replace("-", "_")] = value.decode("latin-1")
    presented = ProviderKeyAuthentication().authenticate(_Headers(meta))
    if presented is None:
        return False
    caller = presented[0]
    if caller.remembered():
        return True
    return await sync_to_async(caller.is_trusted, thread_sensitive=False)()


class _Headers:
    def __init__(self, meta: dict):
        self.META = meta


def _no_body(receive):
    """A receive that gives Django an empty body, never reading the client's."""
    sent = False

    async def empty():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # Django's disconnect watch: cancelled with the answer

    return empty


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    serving.set(True)
    if not scope["path"].startswith(CLIENT_API_PREFIXES):
        return await everything(scope, receive, send)
    if scope["method"] == "POST" and not await _body_worth_reading(scope):
        receive = _no_body(receive)
    return await client_api(scope, receive, send)
