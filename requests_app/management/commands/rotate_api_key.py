from django.core.management.base import BaseCommand, CommandError, CommandParser

from requests_app.keys import api_key_rotate

from .revoke_api_key import key_lookup


class Command(BaseCommand):
    help = "Give a proxy key a new secret (printed this once only); the old secret stops working."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key", help="the key's id, or the first characters of its secret")

    def handle(self, *args, key: str, **options) -> None:
        found = key_lookup(key)
        try:
            issued = api_key_rotate(key_id=found.pk)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stderr.write(f"Rotated key {found.pk} '{found.name}'. Its new secret:")
        self.stdout.write(issued.secret)
        self.stderr.write("It is shown only now and stored hashed: keep it somewhere safe.")
