from django.core.management.base import BaseCommand, CommandError, CommandParser

from requests_app.keys import api_key_deadline_set

from .revoke_api_key import key_lookup


class Command(BaseCommand):
    help = (
        "Set the default deadline, in seconds from the first call, of a key's calls that send "
        "no X-Batch-Deadline; 'none' clears it (the proxy's DEFAULT_DEADLINE applies)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key", help="the key's id, or the first characters of its secret")
        parser.add_argument("seconds", help="seconds (0: answer at once), or 'none'")

    def handle(self, *args, key: str, seconds: str, **options) -> None:
        found = key_lookup(key)
        if seconds.lower() == "none":
            value = None
        elif seconds.isdigit():
            value = int(seconds)
        else:
            raise CommandError("seconds: a whole number of seconds, or 'none'.")
        api_key_deadline_set(key_id=found.pk, seconds=value)
        said = "no default deadline" if value is None else f"a default deadline of {value} s"
        self.stdout.write(f"Key {found.pk} '{found.name}' has {said}.")
