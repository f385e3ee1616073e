"""Helpers for driving the engine in tests: one full scheduler cycle, and asking until done."""

from batches_app import services


def cycle(*, force: bool = True) -> None:
    """What the flush and poll schedules do, right now: claim, submit, poll, ingest."""
    services.batch_flush(force=force)
    services.batches_advance(force=True)
    services.batches_advance(force=True)
