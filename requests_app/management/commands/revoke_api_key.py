from django.core.management.base import BaseCommand, CommandError, CommandParser

from requests_app.keys import api_key_revoke
from requests_app.models import ApiKey


class Command(BaseCommand):
    help = (
        "Revoke a proxy key by its id or its prefix; its clients get 401 from now on, and its "
        "queued requests are cancelled."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key", help="the key's id, or the first characters of its secret")

    def handle(self, *args, key: str, **options) -> None:
        found = key_lookup(key)
        done = api_key_revoke(key_id=found.pk)
        state = "revoked" if done.revoked else "was already revoked"
        self.stdout.write(
            f"Key {found.pk} '{found.name}' {state}; {done.cancelled} queued requests cancelled."
        )


def key_lookup(key: str) -> ApiKey:
    matches = ApiKey.objects.filter(pk=int(key)) if key.isdigit() else ApiKey.objects.none()
    if not matches:
        matches = ApiKey.objects.filter(prefix=key)
    if len(matches) != 1:
        raise CommandError(f"No single key has the id or prefix {key!r}.")
    return matches[0]
