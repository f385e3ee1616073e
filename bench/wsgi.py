"""The benchmark's WSGI application: the proxy as deployed (batchproxy.wsgi), and beside it the
strict baseline.

/bare/… is served by a Django handler built with no middleware at all: the floor any Django view
reaches on this machine (issue 24).
"""

from django.conf import settings

from batchproxy.wsgi import application as proxy

settings.MIDDLEWARE, full = [], settings.MIDDLEWARE
try:
    from django.core.handlers.wsgi import WSGIHandler

    bare = WSGIHandler()  # its (empty) middleware chain is read now, and kept
finally:
    settings.MIDDLEWARE = full


def application(environ, start_response):
    handler = bare if environ.get("PATH_INFO", "").startswith("/bare/") else proxy
    return handler(environ, start_response)
