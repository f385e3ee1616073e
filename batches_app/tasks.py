"""django-q2 tasks: thin callers of the services, each safe to run twice at once."""

import logging

from . import services
from .models import Batch

log = logging.getLogger(__name__)


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


def purge() -> str:
    return f"{services.requests_purge()} answers purged"
