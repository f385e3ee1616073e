"""Request ids and log hygiene: every log line names its request, and no secret reaches a log."""

import contextvars
import json
import logging
import os
import re
import time
from datetime import UTC, datetime

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings

from batchproxy.utils import uuid4

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# A caller's own id is kept if it looks like one; anything else is replaced, not trusted.
INCOMING_ID = re.compile(r"^[A-Za-z0-9._-]{8,128}$")
# (pattern, replacement): bearer tokens, OpenAI and proxy keys, `api_key=...` pairs.
SECRET_PATTERNS = (
    (re.compile(r"(?i)\b(bearer)\s+[^\s'\",]+"), r"\1 [redacted]"),
    (re.compile(r"\b(?:sk|bp)-[A-Za-z0-9_-]{8,}"), "[redacted]"),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]{8,}"), "[redacted]"),  # webhook signing secrets
    (re.compile(r"(?i)(api[_-]?key['\"]?\s*[:=]\s*['\"]?)[^'\",}\s]+"), r"\1[redacted]"),
)
access_log = logging.getLogger("batchproxy.access")


def redact(text: str) -> str:
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    for upstream_key in _upstream_keys():
        if upstream_key in text:
            text = text.replace(upstream_key, "[redacted]")
    return text


def _upstream_keys() -> list[str]:
    """Every upstream's key (an Azure key has no prefix a pattern could know), read now."""
    keys = [getattr(settings, "OPENAI_API_KEY", "")]
    keys += [os.environ.get(item["key_env"], "") for item in getattr(settings, "UPSTREAMS", [])]
    return [key for key in keys if len(key) >= 8]


class RequestContextFilter(logging.Filter):
    """Adds `request_id` to every record and masks secrets in its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class SchedulerChatterFilter(logging.Filter):
    """django-q2 logs every task it queues, runs and saves (three INFO lines a tick: every
    second in a try-out). Below `level` only its cluster's own lines (starting, running,
    stopping) pass; SCHEDULER_LOG_LEVEL=INFO lets every task line through again."""

    def __init__(self, level: str = "WARNING"):
        super().__init__()
        self.level = logging.getLevelName(level.upper())

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or record.module == "cluster"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", request_id_var.get()),
        }
        for field in ("method", "path", "status", "duration_ms"):
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


class RequestIdMiddleware:
    """Gives each request an id (the caller's X-Request-Id, or a new one), echoed in the answer.

    With LOG_REQUESTS=true it also logs one line per request: method, path, status and time,
    never a header or a body.
    """

    sync_capable = async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)  # under ASGI: awaited, no thread of its own

    def __call__(self, request):
        if self.is_async:
            return self._acall(request)
        token, request_id, started = self._begin(request)
        try:
            return self._end(request, self.get_response(request), request_id, started)
        finally:
            request_id_var.reset(token)

    async def _acall(self, request):
        token, request_id, started = self._begin(request)
        try:
            return self._end(request, await self.get_response(request), request_id, started)
        finally:
            request_id_var.reset(token)

    @staticmethod
    def _begin(request) -> tuple:
        incoming = request.META.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if INCOMING_ID.match(incoming) else uuid4().hex
        return request_id_var.set(request_id), request_id, time.monotonic()

    @staticmethod
    def _end(request, response, request_id: str, started: float):
        response["X-Request-Id"] = request_id
        if settings.LOG_REQUESTS:
            duration_ms = round((time.monotonic() - started) * 1000, 1)
            access_log.info(
                "%s %s %s %.1fms",
                request.method,
                request.path,
                response.status_code,
                duration_ms,
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "duration_ms": duration_ms,
                },
            )
        return response
