"""django-q2 tasks: thin callers of the services, each safe to run twice at once.

django-q2's schedules count in whole minutes and its scheduler wakes every 30 s, so the engine's
work runs in a chain of short ticks instead: the minute schedule starts `tick`, and each tick
does one round of work, waits for the next TICK_SECONDS mark and queues its successor, until its
minute is over and the next run of the schedule has started a fresh chain. Each link is short,
so a stopping cluster (a deploy) finishes the one it runs within a tick; a successor left in the
broker finds its minute over and does nothing.
"""

import logging
import time

from django.conf import settings
from django_q.tasks import async_task

from . import retention, services, webhooks
from .models import Batch

log = logging.getLogger(__name__)
# A chain runs a little past its minute, so the next minute's chain starts before it ends.
CHAIN_OVERLAP = 5.0


def flush() -> str:
    """Claim due groups into batches, then take one step for every due batch.

    New batches are uploaded and created; batches whose poll is due are polled and ingested
    too, so one run of either task keeps every batch moving even if the other lags.
    """
    created = services.batch_flush()
    report = services.batches_advance()
    return f"{len(created)} batches flushed, {report.stepped} batch steps"


def poll() -> str:
    """Poll every running batch whose POLL_INTERVAL has passed; ingest the finished ones."""
    report = services.batches_advance(states=(Batch.State.RUNNING, Batch.State.INGESTING))
    summary = f"{report.stepped} batches polled, {len(report.failures)} upstream errors"
    if swept := services.files_sweep():
        summary += f", {swept} leftover files deleted"
    return summary


def tick(until: float | None = None, at: float | None = None) -> str:
    """One link of the tick chain: wait for its mark, flush and poll, queue the next link.

    The schedule calls it without arguments: a chain that lasts a minute from now.
    """
    now = time.time()
    if until is None:
        until, at = now + 60 + CHAIN_OVERLAP, now
    if now > until:
        return "chain over"
    time.sleep(max(at - now, 0))
    summary = flush()
    if swept := services.files_sweep():
        summary += f", {swept} leftover files deleted"
    following = max(at + settings.TICK_SECONDS, time.time())
    if following < until:
        async_task(tick, until, following, q_options={"task_name": "batchproxy.tick"})
    return summary


def batch_refresh(upstream_id: str) -> str:
    """A webhook said this batch ended upstream: poll and ingest it now."""
    return webhooks.batch_refresh(upstream_id=upstream_id)


def purge() -> str:
    summary = f"{services.requests_purge()} answers purged"
    if pruned := webhooks.openai_webhooks_prune():
        summary += f", {pruned} old webhook ids pruned"
    return f"{summary}; {retention.retention_prune()}"
