from django.core.management.base import BaseCommand, CommandParser

from requests_app.keys import api_key_create


class Command(BaseCommand):
    help = "Create a proxy key for clients and print its secret (shown this once only)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="who or what the key is for, e.g. 'data team'")

    def handle(self, *args, name: str, **options) -> None:
        issued = api_key_create(name=name)
        # The secret alone on stdout, so that scripts can capture it; the rest goes to stderr.
        self.stderr.write(f"Created key {issued.key.pk} '{issued.key.name}'. Its secret:")
        self.stdout.write(issued.secret)
        self.stderr.write("It is shown only now and stored hashed: keep it somewhere safe.")
