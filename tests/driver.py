"""A worker process for race tests: `python -m tests.driver <command> ...`.

    intake <secret> <threads> <body-file>   POST every JSON line of the file to the intake, from
                                            that many threads; print "<status> <request id>"
    tick [rounds]                           run the flush and poll tasks, as django-q2 would
                                            (SIGTERM ends it between batch steps)
    hold <batch id>                         take the batch's lease, print "held", sleep
    deadlines                               one round of the deadline work (tiers.deadlines_tick),
                                            its synchronous sends run in this process
    flush-loop / poll-loop                  run the flush (or poll) task until no request and no
                                            batch is pending

With BATCHPROXY_GO=<path> a command first prints "ready" and waits for that file to exist, so
that a test can start several processes at the same instant.

Settings come from the environment (tests.workers.worker_env points them at the test database).
"""

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "batchproxy.settings")


def intake(secret: str, threads: int, body_file: str) -> None:
    from django.db import connection
    from django.test import Client

    with open(body_file, encoding="utf-8") as fh:
        bodies = [line for line in fh.read().splitlines() if line]

    def send(body: str) -> str:
        try:
            response = Client().post(
                "/v1/chat/completions",
                data=body,
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {secret}",
            )
            return f"{response.status_code} {response.get('X-Batch-Request-Id', '-')}"
        finally:
            connection.close()

    with ThreadPoolExecutor(threads) as pool:
        for line in pool.map(send, bodies):
            print(line, flush=True)


def tick(rounds: int) -> None:
    from batches_app import tasks
    from batches_app.leases import exit_between_steps

    exit_between_steps()  # as in django-q2's workers

    for _ in range(rounds):
        print(tasks.flush(), "|", tasks.poll(), flush=True)


def loop(task_name: str) -> None:
    from batches_app import tasks
    from batches_app.models import Batch
    from requests_app.models import BatchRequest

    task = getattr(tasks, task_name)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        print(task(), flush=True)
        if not (
            BatchRequest.objects.filter(status__in=BatchRequest.PENDING).exists()
            or Batch.objects.filter(state__in=Batch.ACTIVE).exists()
        ):
            return
        time.sleep(0.05)
    raise SystemExit("still pending at the deadline")


def wait_for_go() -> None:
    go = os.environ.get("BATCHPROXY_GO")
    if go:
        print("ready", flush=True)
        while not os.path.exists(go):
            time.sleep(0.01)


def main(argv: list[str]) -> None:
    import django

    django.setup()
    command, *args = argv
    wait_for_go()
    if command == "intake":
        intake(args[0], int(args[1]), args[2])
    elif command == "tick":
        tick(int(args[0]) if args else 1)
    elif command == "hold":
        from batches_app.leases import batch_lease

        with batch_lease(args[0]) as got:
            print("held" if got else "not held", flush=True)
            time.sleep(120)
    elif command == "deadlines":
        from batches_app import tiers

        print(tiers.deadlines_tick(send=tiers.request_send), flush=True)
    elif command in ("flush-loop", "poll-loop"):
        loop(command.removesuffix("-loop"))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
