"""Worker processes for crash and race tests: real processes on the test database.

A test that wants to see a process die, or several processes race, runs `manage.py` commands
(or `python -m tests.driver`) against the database the test itself uses, so the test process
and its workers see each other's committed rows through separate connections.
"""

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
CRASHED = 137  # what crash_point's os._exit returns, as a kill -9 would


def database_url() -> str:
    """The URL of the live test database (not the one settings name outside tests)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}?timeout=30&transaction_mode=IMMEDIATE"
    auth = quote(db["USER"] or "", safe="")
    if db.get("PASSWORD"):
        auth += ":" + quote(db["PASSWORD"], safe="")
    return f"postgresql://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def worker_env(fake, **extra) -> dict:
    from .kinds import OpenAI

    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHPROXY_", "PYTEST"))}
    env.pop("POSTGRES_URL", None)
    return (
        env
        | {
            "DATABASE_URL": database_url(),
            "DATA_DIR": str(settings.DATA_DIR),
            "OPENAI_BASE_URL": fake.url,
            "OPENAI_API_KEY": OpenAI.key,
            "UPSTREAM_BACKOFF": "0",
            "BATCH_MAX_WAIT": "0",
            "LOG_LEVEL": "WARNING",
            "CONN_MAX_AGE": "0",
        }
        | {k: str(v) for k, v in extra.items()}
    )


def run(fake, *args: str, crash_at: str = "", **extra) -> subprocess.CompletedProcess:
    """Run `python -m tests.driver <args>` to its end (or its crash)."""
    env = worker_env(fake, BATCHPROXY_CRASH_AT=crash_at, **extra)
    return subprocess.run(
        [sys.executable, "-m", "tests.driver", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def spawn(fake, *args: str, **extra) -> subprocess.Popen:
    """Start `python -m tests.driver <args>` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.driver", *args],
        cwd=ROOT,
        env=worker_env(fake, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, *, timeout: float = 60, what: str = "condition") -> None:
    """Poll `condition` until it holds: the machine is slow and shared, so no fixed sleeps."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def assert_each_answered_once(fake) -> None:
    """Every request answered once, and nothing left upstream, by the fake OpenAI
    (tests/kinds.py says it for every kind)."""
    from .kinds import OpenAI, assert_each_answered_once

    assert_each_answered_once(OpenAI(fake))


def start_together(fake, commands: list[tuple[str, ...]], go: Path, **extra) -> list:
    """Start one driver process per command, released at the same instant once all are up."""
    procs = [spawn(fake, *command, BATCHPROXY_GO=go, **extra) for command in commands]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-3000:]
    go.touch()
    return procs


def finish(procs: list, timeout: float = 150) -> list[str]:
    """Wait for every process to end well; return their output lines."""
    lines = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err[-3000:]
        lines += out.splitlines()
    return lines


def claim_beside_a_held_claim(claim, *, wait: float) -> tuple[dict, bool]:
    """Run `claim()` in one thread holding its transaction open, then `claim()` in another.

    Returns both results and whether the second was still running after `wait` seconds, i.e.
    whether the first's locks held it back. Each thread has its own connection, as two
    schedulers would.
    """
    import threading

    from django.db import connections, transaction

    holding, released = threading.Event(), threading.Event()
    claims = {}

    def first():
        try:
            with transaction.atomic():  # holds its locks until released
                claims["first"] = claim()
                holding.set()
                released.wait(30)
        finally:
            connections.close_all()

    def second():
        try:
            claims["second"] = claim()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=first)]
    threads[0].start()
    assert holding.wait(30)
    threads.append(threading.Thread(target=second))
    threads[1].start()
    threads[1].join(wait)
    held_back = threads[1].is_alive()
    released.set()
    for thread in threads:
        thread.join(30)
    return claims, held_back
