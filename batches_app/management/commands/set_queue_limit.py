from django.core.management.base import BaseCommand, CommandError, CommandParser

from batches_app import capacity
from batches_app.upstreams import upstreams_all


class Command(BaseCommand):
    help = (
        "Set a model's queue limit on an upstream (OpenAI's enqueued-token limit, and for "
        "embeddings its queued-request limit); with no model, list every upstream and model's "
        "limit and queue."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model", nargs="?", help="the model, without a date suffix")
        parser.add_argument(
            "--upstream", help="the upstream's name (default: the one the model routes to)"
        )
        parser.add_argument("--tokens", type=int, help="enqueued input tokens; 0 clears it")
        parser.add_argument("--requests", type=int, help="queued requests; 0 clears it")
        parser.add_argument(
            "--forget-learned", action="store_true", help="drop the budget learned from refusals"
        )

    def handle(self, *args, model, upstream, tokens, requests, forget_learned, **options) -> None:
        if model is None:
            rows = capacity.capacity_rows()
            for row in rows:
                state = "waiting for queue capacity" if row["waiting_since"] else "flowing"
                self.stdout.write(
                    f"{row['upstream']}:{row['model']}: limit {row['limit'] or 'none'}, budget "
                    f"{row['budget'] or '-'}, {row['upstream_tokens']} tokens upstream, "
                    f"{row['waiting_tokens']} waiting, {state}"
                )
            self.stdout.write(f"{len(rows)} upstream and model pairs.")
            return
        if tokens is None and requests is None and not forget_learned:
            raise CommandError("Give --tokens, --requests or --forget-learned.")
        if min(tokens or 0, requests or 0) < 0:
            raise CommandError("Limits are whole numbers of 0 (none) or more.")
        names = [u.name for u in upstreams_all()]
        if upstream is not None and upstream not in names:
            # A typo would make a limit that no batch ever reads.
            raise CommandError(f"No upstream {upstream!r}; configured: {', '.join(names)}.")
        row = capacity.queue_limit_set(
            model=model,
            upstream=upstream,
            tokens=tokens,
            requests=requests,
            forget_learned=forget_learned,
        )
        self.stdout.write(
            f"{row.upstream}:{row.model}: {row.enqueued_tokens or 'no'} enqueued-token limit, "
            f"{row.queued_requests or 'no'} queued-request limit"
            + ("; learned budget forgotten" if forget_learned else "")
        )
