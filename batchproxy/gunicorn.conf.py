"""gunicorn settings for the proxy's web role; each can be overridden from the environment.

Request bodies are limited by the proxy itself (MAX_REQUEST_BYTES, answered with an OpenAI-shaped
413); gunicorn has no body limit of its own, only the header limits below.
"""

import json
import os

from gunicorn import util

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '9487')}"  # noqa: S104
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# uvicorn's worker: the ASGI application (batchproxy/asgi.py), an event loop per worker, so a
# held call, a stream or a slow client costs a socket and a coroutine, never a thread; the
# client API's views run in a pool of WEB_THREADS threads. The WSGI worker
# (`batchproxy.web_worker.BufferingThreadWorker`, gthread receiving each request whole before a
# thread takes it; WEB_READ_TIMEOUT, WEB_BUFFER_BYTES) is still there: it holds a held call or a
# stream on a thread each (docs/operating.md).
ASGI_WORKER = "uvicorn_worker.UvicornWorker"
worker_class = os.environ.get("WEB_WORKER_CLASS", ASGI_WORKER)
wsgi_app = (
    "batchproxy.asgi:application" if worker_class == ASGI_WORKER else "batchproxy.wsgi:application"
)
threads = int(os.environ.get("WEB_THREADS", "8"))
# Open connections (kept-alive ones included) one worker takes before leaving the rest to others.
worker_connections = int(os.environ.get("WEB_WORKER_CONNECTIONS", "1000"))
# Answers never wait on a batch, so a slow request is a stuck one.
timeout = int(os.environ.get("WEB_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("WEB_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("WEB_KEEPALIVE", "5"))
# Recycle workers now and then, staggered, so a slow leak never becomes an outage.
# A leak guard, not a routine: at a thousand requests a second, 10,000 restarted each worker
# every few seconds, and a restarting worker takes nothing for about a second.
max_requests = int(os.environ.get("WEB_MAX_REQUESTS", "200000"))
max_requests_jitter = max_requests // 10
# Header limits: a request line up to 8 KiB, 100 headers of up to 16 KiB each.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 16384
# X-Forwarded-* are trusted only from these addresses (the load balancer); Django's own
# USE_X_FORWARDED decides what the application makes of them.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# ACCESS_LOG=- writes gunicorn's access log to stdout; it carries the request id, never the
# Authorization header.
accesslog = os.environ.get("ACCESS_LOG") or None
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(D)sus id=%({x-request-id}o)s'
errorlog = "-"
# No control socket: gunicorn 24+ would otherwise create ~/.gunicorn/gunicorn.ctl, outside the
# data directory (and outside a read-only container's writable paths); nothing here uses it.
control_socket_disable = True
# Heartbeat files in memory, not on a slow or read-only disk.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108


def _openai_shaped_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own refusals (a header too large, a broken request line) in OpenAI's error
    shape, like every other error of the proxy, instead of gunicorn's HTML page."""
    body = json.dumps(
        {
            "error": {
                "message": f"{reason}: {mesg}"[:500],
                "type": "invalid_request_error",
                "param": None,
                "code": reason.lower().replace(" ", "_"),
            }
        }
    )
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, (head + body).encode("latin-1", "replace"))


# Workers are forked from the process that reads this file, so they inherit the replacement.
util.write_error = _openai_shaped_error
