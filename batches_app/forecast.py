"""How long each way of answering takes, per upstream, endpoint, model and tier.

Measured: a batch from its creation upstream to its results ingested (`batch_observed`), a
synchronous send from the call to its answer (`sync_observed`). The forecast is the median and
90th percentile of the last FORECAST_SAMPLES measurements; with fewer than FORECAST_MIN_SAMPLES
it is the stated default below. It drives the tier choice (tiers.py), Retry-After and the `eta`
of a pending request.

Defaults (p50, p90 seconds) and where they come from:
- batch, OpenAI and Azure: 155 / 2092 (public probes of small jobs, late 2026: 2m35s / 34m52s);
- batch, Anthropic: 120 / 282 (same probes: 2m00s / 4m42s);
- batch, Gemini: 169 / 312 (same probes: 2m49s / 5m12s);
- flex, OpenAI and Azure: 2.8 / 12.3 (public flex probes: p50 2.8 s, p95 12.3 s; the p95 stands
  for the p90, erring late);
- flex, Gemini: 60 / 900 (Google's optimisation guide: "minutes, 1-15 min target");
- standard: 5 / 30 (no public probe: an assumption for a full answer of a few hundred tokens,
  replaced by measurements after FORECAST_MIN_SAMPLES sends).
"""

import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from .models import TierTiming

DEFAULTS = {
    ("batch", "openai"): (155.0, 2092.0),
    ("batch", "azure"): (155.0, 2092.0),
    ("batch", "anthropic"): (120.0, 282.0),
    ("batch", "gemini"): (169.0, 312.0),
    ("flex", "openai"): (2.8, 12.3),
    ("flex", "azure"): (2.8, 12.3),
    ("flex", "gemini"): (60.0, 900.0),
    ("standard", ""): (5.0, 30.0),
}
# A forecast is read at most this often per process: Retry-After asks on the hot path.
CACHE_SECONDS = 30.0
_cache: dict[tuple, tuple[float, "Forecast"]] = {}


@dataclass(frozen=True)
class Forecast:
    median: float
    p90: float
    samples: int  # 0: the stated default

    def as_dict(self, start: datetime) -> dict:
        return {
            "median": start + timedelta(seconds=self.median),
            "p90": start + timedelta(seconds=self.p90),
            "measured_from": self.samples,
        }


def _default(tier: str, kind: str) -> Forecast:
    median, p90 = DEFAULTS.get((tier, kind)) or DEFAULTS.get(
        (tier, "openai"), DEFAULTS[("standard", "")]
    )
    return Forecast(median, p90, 0)


def forecast_get(*, upstream: str, kind: str, endpoint: str, model: str, tier: str) -> Forecast:
    """The median and p90 seconds of this way of answering, measured or by default."""
    key = (upstream, endpoint, model, tier)
    cached = _cache.get(key)
    if cached and time.monotonic() - cached[0] < CACHE_SECONDS:
        return cached[1]
    seconds = list(
        TierTiming.objects.filter(upstream=upstream, endpoint=endpoint, model=model, tier=tier)
        .order_by("-observed_at")
        .values_list("seconds", flat=True)[: settings.FORECAST_SAMPLES]
    )
    if len(seconds) < settings.FORECAST_MIN_SAMPLES:
        found = _default(tier, kind)
    else:
        found = Forecast(statistics.median(seconds), _p90(seconds), len(seconds))
    _cache[key] = (time.monotonic(), found)
    return found


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def forecast_forget() -> None:
    _cache.clear()


def timing_record(*, upstream: str, endpoint: str, model: str, tier: str, seconds: float) -> None:
    TierTiming.objects.create(
        upstream=upstream, endpoint=endpoint, model=model, tier=tier, seconds=max(seconds, 0.0)
    )


def batch_observed(batch) -> None:
    """A batch that completed upstream: how long it took from its creation to its results."""
    if batch.upstream_status != "completed" or batch.upstream_created_at is None:
        return
    seconds = (timezone.now() - batch.upstream_created_at).total_seconds()
    timing_record(
        upstream=batch.upstream,
        endpoint=batch.endpoint,
        model=batch.model,
        tier="batch",
        seconds=seconds,
    )


def timings_prune(*, now: datetime | None = None) -> int:
    """Forget measurements older than FORECAST_WINDOW seconds."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.FORECAST_WINDOW)
    return TierTiming.objects.filter(observed_at__lt=cutoff).delete()[0]
