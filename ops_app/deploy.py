"""Start-up steps shared by every process that may start at the same moment as others."""

import fcntl
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor

# Any fixed 64-bit number: PostgreSQL's advisory locks are named by integers.
MIGRATE_LOCK_ID = 0x62617463_6870726F  # "batchpro"


def database_wait(*, seconds: float, say: Callable[[str], None]) -> None:
    """Wait until the database accepts connections (a compose stack starts it alongside us)."""
    deadline = time.monotonic() + seconds
    said = False
    while True:
        try:
            connection.ensure_connection()
            return
        except DatabaseError as exc:
            connection.close()
            if time.monotonic() >= deadline:
                raise
            if not said:
                say(f"Waiting for the database ({type(exc).__name__})…")
                said = True
            time.sleep(1)


@contextmanager
def _migrate_lock(say: Callable[[str], None]):
    """One migrating process at a time, across processes and machines.

    PostgreSQL: a session advisory lock, released when the session ends even if the process
    dies. SQLite: an exclusive lock on a file beside the database (one machine by nature).
    """
    if connection.vendor == "postgresql":
        said = False
        # Asked again every second, never waited for in one statement: a statement waiting
        # holds a snapshot, which the other process's CREATE INDEX CONCURRENTLY waits for,
        # while this one waits for its lock (PostgreSQL ends such a deadlock by failing one).
        while not _try_advisory_lock():
            if not said:
                say("Another process is migrating; waiting for its lock…")
                said = True
            time.sleep(1)
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [MIGRATE_LOCK_ID])
        return
    lock_path = Path(str(settings.DATABASES["default"]["NAME"]) + ".migrate-lock")
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("Another process is migrating; waiting for its lock…")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _try_advisory_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [MIGRATE_LOCK_ID])
        return cursor.fetchone()[0]


def migrations_apply(*, say: Callable[[str], None]) -> int:
    """Apply the missing migrations under the migrate lock; return how many were applied.

    The plan is computed after the lock is taken, so a process that waited for another finds
    nothing left to do.
    """
    with _migrate_lock(say):
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
        call_command("migrate", interactive=False, verbosity=0)
    say(f"Migrations: {len(plan)} applied." if plan else "Migrations: already up to date.")
    return len(plan)
