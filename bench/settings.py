"""The proxy's own settings plus the bare-Django baseline views; used only by the benchmarks.

The baseline routes are mounted here and never in batchproxy/urls.py, so production serves none
of them. Both are served by the same gunicorn process, the same middleware and the same database.
"""

from batchproxy.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "bench"]  # noqa: F405
ROOT_URLCONF = "bench.urls"
