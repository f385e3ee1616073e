from django.core.management.base import BaseCommand, CommandError, CommandParser

from requests_app.management.commands.revoke_api_key import key_lookup
from requests_app.models import ApiKey
from requests_app.webhooks import WebhookURLError, webhook_endpoint_create


class Command(BaseCommand):
    help = (
        "Register a URL to be told when requests finish (of one key, or of every key); "
        "print its signing secret (shown this once only)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("url", help="where to POST the events, e.g. https://example.com/hook")
        parser.add_argument(
            "--key", help="only this key's requests: its name, id or prefix (default: every key)"
        )
        parser.add_argument(
            "--include-body", action="store_true", help="send each answer's body with its event"
        )

    def handle(self, *args, url: str, key: str | None, include_body: bool, **options) -> None:
        api_key = _key_by_name(key) if key else None
        try:
            issued = webhook_endpoint_create(url=url, api_key=api_key, include_body=include_body)
        except WebhookURLError as exc:
            raise CommandError(str(exc)) from None
        scope = f"key '{api_key.name}'" if api_key else "every key"
        # The secret alone on stdout, so that scripts can capture it; the rest goes to stderr.
        self.stderr.write(f"Added webhook {issued.endpoint.pk} for {scope}. Its signing secret:")
        self.stdout.write(issued.secret)
        self.stderr.write("It is shown only now: keep it with the receiver.")


def _key_by_name(key: str) -> ApiKey:
    named = list(ApiKey.objects.filter(name=key)[:2])
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise CommandError(f"Several keys are named {key!r}: give the id or prefix.")
    return key_lookup(key)
