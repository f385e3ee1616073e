from django.core.management.base import BaseCommand, CommandError, CommandParser

from batches_app.retention import key_purge
from requests_app.management.commands.revoke_api_key import key_lookup


class Command(BaseCommand):
    help = (
        "Erase one proxy key: its requests and answers, its webhook records, the upstream files "
        "that hold its lines, and the key itself. Says what it deleted."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key", help="the key's id, or the first characters of its secret")
        parser.add_argument(
            "--yes", action="store_true", help="do not ask for confirmation (scripts)"
        )

    def handle(self, *args, key: str, yes: bool, **options) -> None:
        found = key_lookup(key)
        if not yes:
            answer = input(f"Erase key {found.pk} '{found.name}' and all its data? Type yes: ")
            if answer.strip().lower() != "yes":
                raise CommandError("Nothing erased.")
        report = key_purge(key_id=found.pk)
        for line in report.lines():
            self.stdout.write(line)
        if report.files_failed:
            raise CommandError(f"{len(report.files_failed)} upstream files were not deleted.")
