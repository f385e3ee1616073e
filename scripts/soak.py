"""Soak the engine: many requests through the fake OpenAI, with random faults and worker kills.

    .venv/bin/python scripts/soak.py [--requests 5000] [--workers 3] [--minutes 4]

Clients post through the real intake (Django's test client, in this process): the first
--through-intake calls; the rest are queued in bulk exactly as the intake stores them, since a
client round trip costs tens of milliseconds of CPU and the run must stay short. Worker processes
run the scheduler's flush and poll tasks in a loop and are killed with SIGKILL at random, or die
at a random crash point; the fake OpenAI fails random calls (HTTP 429/500/503, timeouts,
disconnects, lost responses). Faults and kills stop once every request is sent and a little
while has passed; then the workers drain the queue. Printed at the end: sent, answered, lost
(not answered by the deadline) and submitted twice (request ids that went into more than one
upstream batch). Both of the last two must be 0; the exit status says whether they are.

The database is a temporary SQLite file, or, with DATABASE_URL pointing at a PostgreSQL
server, a fresh database created there for the run and dropped after it. Loopback only.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CRASH_POINTS = ("after_claim", "after_upload", "before_create", "after_create", "mid_ingest")
OPERATIONS = ("upload", "create", "retrieve", "list", "list_files", "content", "delete")
FAULTS = (429, 500, 503, "timeout", "disconnect", "lost_response")
WORKER_ENV = {
    "BATCH_MAX_WAIT": "1",
    "BATCH_MAX_REQUESTS": "250",
    "POLL_INTERVAL": "0",
    "UPSTREAM_BACKOFF": "1",
    "OPENAI_TIMEOUT": "5",
    "OPENAI_MAX_RETRIES": "0",
    "INGEST_CHUNK_LINES": "50",
    "LOG_LEVEL": "ERROR",
    "CONN_MAX_AGE": "0",
}
HOLD_SECONDS = 7  # a "timeout" fault's hold: past OPENAI_TIMEOUT, within the ambiguity wait


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- Worker process --------------------------------------------------------------------------


def worker() -> None:
    """One scheduler worker: the flush and poll tasks, over and over, until killed."""
    import django

    django.setup()
    from django.db import connections

    from batches_app import tasks

    while True:
        try:
            tasks.flush()
            tasks.poll()
        except Exception as exc:  # a locked SQLite file, say: the next round retries
            print(f"worker round failed: {exc!r}", file=sys.stderr, flush=True)
            connections.close_all()
        time.sleep(0.2)


# --- Database --------------------------------------------------------------------------------


def fresh_database(tmp: Path) -> tuple[str, callable]:
    """A database URL for this run, and how to drop it afterwards."""
    base = os.environ.get("DATABASE_URL") or os.environ.get("POSTGRES_URL")
    if not base:
        url = f"sqlite:///{tmp / 'soak.sqlite3'}?timeout=30&transaction_mode=IMMEDIATE"
        return url, lambda: None
    import psycopg

    name = f"batchproxy_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{name}", query="")), drop


# --- The run ---------------------------------------------------------------------------------


class Supervisor:
    """Keeps `count` workers running; kills one at random when asked, and restarts it."""

    def __init__(self, count: int, env: dict, *, crash_odds: float):
        self.env, self.procs = env, []
        self.kills = self.crashes = 0
        self.crash_odds = crash_odds
        for _ in range(count):
            self.procs.append(self._start())

    def _start(self) -> subprocess.Popen:
        env = dict(self.env)
        if random.random() < self.crash_odds:
            env["BATCHPROXY_CRASH_AT"] = random.choice(CRASH_POINTS)
        return subprocess.Popen(  # noqa: S603 - our own script, our own arguments
            [sys.executable, __file__, "--worker"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL
        )

    def tend(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                self.crashes += proc.returncode == 137
                self.procs[i] = self._start()

    def kill_one(self) -> None:
        i = random.randrange(len(self.procs))
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()
        self.kills += 1
        self.procs[i] = self._start()

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def soak_body(i: int) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"soak {i}"}]}


def enqueue_direct(numbers: range, secret: str, stop: threading.Event) -> int:
    """Queue calls as the intake stores them, a thousand rows per insert.

    A client round trip costs tens of milliseconds of CPU on a small machine; this keeps a
    5,000-request soak within minutes while the rest still goes through the real intake.
    """
    import orjson

    from requests_app.models import ApiKey, BatchRequest, hash_key
    from requests_app.services import call_parse, request_for_call

    key = ApiKey.objects.get(key_hash=hash_key(secret))
    queued = 0
    for chunk in range(numbers.start, numbers.stop, 1000):
        if stop.is_set():
            break
        rows = []
        for i in range(chunk, min(chunk + 1000, numbers.stop)):
            call = call_parse(endpoint="/v1/chat/completions", raw=orjson.dumps(soak_body(i)))
            rows.append(request_for_call(api_key_id=key.pk, call=call))
        queued += len(BatchRequest.objects.bulk_create(rows))
        time.sleep(2)  # arrivals spread over time, not one burst
    return queued


def send_all(numbers: range, secret: str, stop: threading.Event, threads: int = 4) -> int:
    """POST these calls through the intake; return how many were accepted."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection
    from django.test import Client

    def send(i: int) -> int:
        if stop.is_set():
            return 0
        body = soak_body(i)
        try:
            response = Client().post(
                "/v1/chat/completions",
                data=body,
                content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {secret}",
            )
            return response.status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(threads) as pool:
        statuses = Counter(pool.map(send, numbers))
    statuses.pop(0, None)  # not sent: the deadline came first
    assert set(statuses) <= {422, 200}, statuses
    return sum(statuses.values())


def run(args) -> int:
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="batchproxy-soak-"))
    database_url, drop_database = fresh_database(tmp)
    from batchproxy.fakes.openai import FakeOpenAI

    fake = FakeOpenAI(step_seconds=0.3).start()
    fake._server.handle_error = lambda *args: None  # a killed worker's reset socket: expected
    fake.configure(timeout_sleep=HOLD_SECONDS, retry_after=0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHPROXY_")}
    env.pop("POSTGRES_URL", None)
    env |= WORKER_ENV | {
        "DATABASE_URL": database_url,
        "DATA_DIR": str(tmp),
        "OPENAI_BASE_URL": fake.url,
        "OPENAI_API_KEY": "sk-soak",
        "DJANGO_SETTINGS_MODULE": "batchproxy.settings",
    }
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    from requests_app.models import ApiKey, BatchRequest, hash_key

    log(f"database {database_url.split('?')[0].rsplit('/', 1)[-1]}; fake OpenAI at {fake.url}")
    call_command("migrate", verbosity=0)
    secret = ApiKey.new_secret()
    ApiKey.objects.create(name="soak", prefix=secret[:8], key_hash=hash_key(secret))

    supervisor = Supervisor(args.workers, env, crash_odds=0.2)
    deadline = started + args.minutes * 60
    chaos_until = [deadline]  # set once everything is sent
    faults, stop = Counter(), threading.Event()
    through_http = min(args.through_intake, args.requests)

    def send() -> None:
        faults.update(sent=enqueue_direct(range(through_http, args.requests), secret, stop))

    senders = [
        threading.Thread(target=send),
        threading.Thread(
            target=lambda: faults.update(sent=send_all(range(through_http), secret, stop))
        ),
    ]
    for sender in senders:
        sender.start()
    log(
        f"sending {args.requests} requests ({through_http} through the HTTP intake); "
        f"{args.workers} workers, faults and kills on"
    )
    Status = BatchRequest.Status
    last_report = time.monotonic()
    try:
        while time.monotonic() < deadline:
            time.sleep(0.5)
            supervisor.tend()
            now = time.monotonic()
            if now - last_report > 15:
                last_report = now
                counts = Counter(BatchRequest.objects.values_list("status", flat=True))
                injected = sum(faults.values()) - faults["sent"]
                log(f"{dict(counts)}; {supervisor.kills} kills, {injected} faults")
            if not any(t.is_alive() for t in senders) and chaos_until[0] == deadline:
                chaos_until[0] = now + args.chaos_after_send
            if now < chaos_until[0]:
                if random.random() < 0.5 / args.fault_every:
                    operation, fault = random.choice(OPERATIONS), random.choice(FAULTS)
                    fake.inject(operation, fault, times=random.randint(1, 2))
                    faults[f"{operation}:{fault}"] += 1
                if random.random() < 0.5 / args.kill_every:
                    supervisor.kill_one()
            else:
                if supervisor.crash_odds:
                    supervisor.crash_odds = 0.0
                    with fake._lock:  # faults injected but not yet hit: the storm is over
                        fake._faults.clear()
                pending = BatchRequest.objects.filter(status__in=BatchRequest.PENDING).count()
                if not pending and not any(t.is_alive() for t in senders):
                    break
    finally:
        stop.set()
        supervisor.stop()
        for sender in senders:
            sender.join()

    sent = faults.pop("sent", 0)
    statuses = Counter(BatchRequest.objects.values_list("status", flat=True))
    batches_of = {}
    for line in fake.submitted_lines():
        batches_of.setdefault(line["custom_id"], set()).add(line["batch_id"])
    twice = sum(len(ids) > 1 for ids in batches_of.values())
    answered = statuses[Status.COMPLETED]
    print()
    print(f"database:          {'PostgreSQL' if 'postgres' in database_url else 'SQLite'}")
    print(f"duration:          {time.monotonic() - started:.0f} s")
    print(f"upstream faults:   {sum(faults.values())} injected")
    print(f"worker kills:      {supervisor.kills} SIGKILL, {supervisor.crashes} at crash points")
    print(f"upstream batches:  {len(fake.batches)}; files left upstream: {len(fake.files)}")
    print(f"sent:              {sent}")
    print(f"answered:          {answered}")
    print(f"failed:            {statuses[Status.FAILED]}")
    print(f"lost:              {sent - answered - statuses[Status.FAILED]}")
    print(f"submitted twice:   {twice}")
    fake.stop()
    drop_database()
    return 0 if sent - answered - statuses[Status.FAILED] == 0 and twice == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=5, help="hard deadline for the run")
    parser.add_argument(
        "--chaos-after-send", type=float, default=30, help="seconds of faults after the last send"
    )
    parser.add_argument(
        "--through-intake", type=int, default=1000, help="how many go through the HTTP intake"
    )
    parser.add_argument(
        "--fault-every", type=float, default=2, help="mean seconds between injected faults"
    )
    parser.add_argument(
        "--kill-every", type=float, default=10, help="mean seconds between worker kills"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker()
    sys.exit(run(args))


if __name__ == "__main__":
    main()
