"""The WSGI application: the client API through a lean handler, everything else through all of
MIDDLEWARE.

Django builds a handler's middleware chain once, from settings.MIDDLEWARE; the client API's
handler is built from CLIENT_API_MIDDLEWARE instead, so a call to /v1/… skips the admin's
sessions, CSRF, users and messages (docs/benchmarks.md). Both handlers share the URLs, the
views and the exception handling.
"""

import os

from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "batchproxy.settings")

everything = get_wsgi_application()  # sets Django up

# gunicorn runs no system checks: a production without SECRET_KEY or ALLOWED_HOSTS stops here.
from ops_app.checks import startup_refusal  # noqa: E402

if (refusal := startup_refusal()) is not None:
    raise ImproperlyConfigured(refusal)


def _client_api_handler():
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler

    class ClientApiHandler(WSGIHandler):
        def make_view_atomic(self, view):
            # The client API's views are async for the ASGI server's sake (held calls wait in
            # its event loop); under WSGI their sync form spares each call an event loop.
            return super().make_view_atomic(getattr(view, "sync_view", view))

    full = settings.MIDDLEWARE
    settings.MIDDLEWARE = settings.CLIENT_API_MIDDLEWARE
    try:
        return ClientApiHandler()  # reads MIDDLEWARE now, once
    finally:
        settings.MIDDLEWARE = full


client_api = _client_api_handler()
CLIENT_API_PREFIXES = ("/v1/", "/v1beta/")


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    handler = client_api if path.startswith(CLIENT_API_PREFIXES) else everything
    return handler(environ, start_response)
