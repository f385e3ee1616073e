"""The benchmark's WSGI application: the proxy, and beside it the strict baseline.

/bare/… is served by a second Django handler built with no middleware at all: the floor any
Django view reaches on this machine (issue 24). Everything else is the proxy as deployed.
"""

from django.core.handlers.wsgi import WSGIHandler
from django.core.wsgi import get_wsgi_application
from django.test.utils import override_settings

proxy = get_wsgi_application()
with override_settings(MIDDLEWARE=[]):
    bare = WSGIHandler()  # its middleware chain is read now, and kept


def application(environ, start_response):
    handler = bare if environ.get("PATH_INFO", "").startswith("/bare/") else proxy
    return handler(environ, start_response)
