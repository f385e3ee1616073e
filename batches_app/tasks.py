"""django-q2 tasks: thin callers of the services, each safe to run twice at once."""

import logging

from . import services
from .models import Batch

log = logging.getLogger(__name__)


def flush() -> str:
    """Claim due groups into batches, then upload and create every batch that is due."""
    created = services.batch_flush()
    report = services.batches_advance(states=(Batch.State.BUILDING, Batch.State.UPLOADED))
    return f"{len(created)} batches flushed, {report.stepped} submit steps"


def poll() -> str:
    """Poll every running batch whose POLL_INTERVAL has passed; ingest the finished ones."""
    report = services.batches_advance(states=(Batch.State.RUNNING, Batch.State.INGESTING))
    return f"{report.stepped} batches polled, {len(report.failures)} upstream errors"


def purge() -> str:
    return f"{services.requests_purge()} answers purged"
