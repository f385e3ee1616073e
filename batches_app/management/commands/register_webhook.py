from django.core.management.base import BaseCommand, CommandError, CommandParser

from batches_app import upstreams
from batches_app.webhooks import BATCH_EVENTS


class Command(BaseCommand):
    help = (
        "Register the proxy's /webhooks/openai with OpenAI for the batch events, and print the "
        "endpoint's signing secret (shown this once only) for OPENAI_WEBHOOK_SECRET."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "url",
            help="the proxy's public HTTPS URL of it, e.g. https://proxy.example.com/webhooks/openai",
        )
        parser.add_argument("--name", default="batchproxy", help="the endpoint's name upstream")

    def handle(self, *args, url: str, name: str, **options) -> None:
        if not url.rstrip("/").endswith("/webhooks/openai"):
            raise CommandError("The URL must end in /webhooks/openai, the proxy's endpoint.")
        try:
            # The default upstream's: OpenAI's webhooks sign with that organisation's secret.
            endpoint_id, secret = upstreams.transport().create_webhook_endpoint(
                url=url, name=name, event_types=list(BATCH_EVENTS)
            )
        except upstreams.UpstreamError as exc:
            raise CommandError(f"OpenAI refused the endpoint: {exc}") from exc
        # The secret alone on stdout, never through logging, so that scripts can capture it.
        self.stderr.write(f"Registered webhook endpoint {endpoint_id} for {url}. Its secret:")
        self.stdout.write(secret)
        self.stderr.write(
            "Set it as OPENAI_WEBHOOK_SECRET on every web process; it is shown only now."
        )
