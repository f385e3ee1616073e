"""`X-Batch-Deadline` and `X-Batch-Mode`: when a caller needs its answer (docs: "Deadlines").

`X-Batch-Deadline: 1800` is seconds from the first call of the request; `X-Batch-Deadline:
2026-12-05T07:00:00Z` an RFC 3339 time. `X-Batch-Mode: now` (or a deadline of 0, or a time
already past) asks for the standard tier at once. Neither header is part of the request's
identity: a repeat of the call with an earlier deadline tightens it, never loosens it.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from .errors import ClientError

# A deadline further than this is no deadline a batch could miss (24 h window, and expiry).
MAX_SECONDS = 30 * 86_400


@dataclass(frozen=True, slots=True)
class Deadline:
    seconds: float | None = None  # from the first call
    at: datetime | None = None  # or an absolute time
    now: bool = False  # X-Batch-Mode: now

    def resolve(self, first_call: datetime) -> datetime:
        if self.at is not None:
            return self.at
        return first_call + timedelta(seconds=self.seconds or 0)


def _bad(header: str, message: str) -> ClientError:
    return ClientError(400, f"{header}: {message}", code="invalid_header", param=header)


def deadline_parse(meta: dict, *, now: datetime) -> Deadline | None:
    """The call's deadline from its headers (Django's `request.META`), or None without one;
    a 400 in the caller's SDK's shape for a value the proxy cannot read."""
    mode = meta.get("HTTP_X_BATCH_MODE")
    raw = meta.get("HTTP_X_BATCH_DEADLINE")
    if mode is None and raw is None:
        return None
    if mode is not None:
        if mode.strip().lower() == "now":
            return Deadline(at=now, now=True)
        if mode.strip().lower() != "batch":
            raise _bad("X-Batch-Mode", "'now' (answer at the standard tier at once) or 'batch'.")
    if raw is None:
        return None
    value = raw.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not (0 <= seconds <= MAX_SECONDS):
            raise _bad("X-Batch-Deadline", f"seconds from the first call, 0 to {MAX_SECONDS}.")
        return Deadline(at=now, now=True) if seconds == 0 else Deadline(seconds=seconds)
    try:
        at = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        at = None
    if at is None or at.tzinfo is None or "T" not in value.upper():
        raise _bad(
            "X-Batch-Deadline",
            "seconds from the first call (1800) or an RFC 3339 time with its offset "
            "(2026-12-05T07:00:00Z).",
        )
    if at <= now:
        return Deadline(at=now, now=True)
    if (at - now).total_seconds() > MAX_SECONDS:
        raise _bad("X-Batch-Deadline", f"at most {MAX_SECONDS} seconds from now.")
    return Deadline(at=at)
