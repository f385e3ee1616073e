from django.core.management.base import BaseCommand, CommandError, CommandParser

from requests_app.models import WebhookEndpoint
from requests_app.webhooks import webhook_endpoint_remove


class Command(BaseCommand):
    help = "Remove a webhook endpoint by its id or URL, with its undelivered events."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("endpoint", help="the endpoint's id (as add_webhook printed) or URL")

    def handle(self, *args, endpoint: str, **options) -> None:
        found = WebhookEndpoint.objects.filter(
            **({"pk": int(endpoint)} if endpoint.isdigit() else {"url": endpoint})
        )
        if len(found) != 1:
            raise CommandError(f"No single webhook has the id or URL {endpoint!r}.")
        webhook_endpoint_remove(endpoint_id=found[0].pk)
        self.stdout.write(f"Removed webhook {found[0].pk} ({found[0].url_shown}).")
