from django.core.management.base import BaseCommand, CommandError, CommandParser

from batches_app import services, upstream
from batches_app.models import Batch


class Command(BaseCommand):
    help = (
        "Flush every non-empty queue group into batches now, whatever its size and age, and "
        "submit them upstream. Requests still in a back-off wait for it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--endpoint", help="only this endpoint, e.g. /v1/chat/completions")
        parser.add_argument("--model", help="only this model")

    def handle(self, *args, endpoint: str | None, model: str | None, **options) -> None:
        refusal = upstream.upstream_refusal()
        if refusal is not None:
            raise CommandError(refusal)
        if endpoint and not endpoint.startswith("/v1/"):
            endpoint = "/v1/" + endpoint.lstrip("/")
        created = services.batch_flush(force=True, endpoint=endpoint, model=model)
        report = services.batches_advance(
            states=(Batch.State.BUILDING, Batch.State.UPLOADED), force=True
        )
        for failure in report.failures:
            self.stderr.write(f"upstream error, will retry: {failure}")
        claimed = sum(b.request_count for b in Batch.objects.filter(pk__in=[b.pk for b in created]))
        self.stdout.write(
            f"{len(created)} batches flushed with {claimed} requests; "
            f"{report.stepped - len(report.failures)} submitted, {len(report.failures)} to retry"
        )
