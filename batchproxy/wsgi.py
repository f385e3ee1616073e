import os

from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "batchproxy.settings")

application = get_wsgi_application()

# gunicorn runs no system checks: a production without SECRET_KEY or ALLOWED_HOSTS stops here.
from ops_app.checks import startup_refusal  # noqa: E402

if (refusal := startup_refusal()) is not None:
    raise ImproperlyConfigured(refusal)
