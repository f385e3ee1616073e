from django.core.management.base import BaseCommand, CommandError, CommandParser

from batches_app import services, upstream
from batches_app.models import Batch


class Command(BaseCommand):
    help = "Poll every running batch now, whatever POLL_INTERVAL says, and ingest finished ones."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("batch", nargs="?", help="only this batch (proxy id)")

    def handle(self, *args, batch: str | None, **options) -> None:
        refusal = upstream.upstream_refusal()
        if refusal is not None:
            raise CommandError(refusal)
        report = services.batches_advance(
            states=(Batch.State.RUNNING, Batch.State.INGESTING), force=True, batch_id=batch
        )
        for failure in report.failures:
            self.stderr.write(f"upstream error, will retry: {failure}")
        self.stdout.write(
            f"{report.stepped} batches polled, {len(report.failures)} upstream errors"
        )
