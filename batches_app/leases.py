"""Leases on batches that die with their worker: no two workers step one batch at once.

PostgreSQL: a session advisory lock per batch, which the server releases the moment the
holder's connection drops (a SIGKILLed worker, a lost node). SQLite (one machine by nature): an
exclusive `flock` on a file beside the database, which the kernel releases when the holding
process dies. Either way a dead worker delays its batch by at most the next tick, never by a
lease timeout, and a live one holds the batch for as long as its step takes, however long a
download or upload runs.
"""

import fcntl
import os
import signal
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.db import connection

# The first key of the two-key advisory lock form: a namespace of our own, so a batch's lock
# never collides with the migrate lock (ops_app.deploy) or anyone else's.
ADVISORY_NAMESPACE = 0x42504258  # "BPBX"
# SQLite: lock files are never deleted (deleting one under a waiting process lets two hold
# "the" lock), so batches share a fixed set of them; two batches in one slot only take turns.
SLOTS = 1024
# Set by SIGTERM (a deploy): the step in progress ends cleanly, then the worker exits.
stopping = threading.Event()
_held = 0  # leases this process holds now


@contextmanager
def batch_lease(batch_id) -> Iterator[bool]:
    """Try to hold the batch for this worker; yield whether it was got (never waits).

    After SIGTERM (`exit_between_steps`) no lease is given, and the process exits as soon as
    the step it is in has ended and its lease is released.
    """
    global _held
    lock = _advisory_lock if connection.vendor == "postgresql" else _file_lock
    with lock(batch_id) as got:
        got = got and not stopping.is_set()
        _held += got
        try:
            yield got
        finally:
            _held -= got
    if stopping.is_set() and not _held:
        raise SystemExit(128 + signal.SIGTERM)


def exit_between_steps() -> None:
    """Make SIGTERM end this process between batch steps, never in the middle of one.

    Installed in django-q2's worker processes and in the crash tests' workers. Idle, the
    process exits at once; inside a step, when the step is over.
    """

    def on_sigterm(signum, frame):
        stopping.set()
        if not _held:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def _key(batch_id) -> int:
    # A stable signed 32-bit key per batch (the two-key form takes two int4).
    return zlib.crc32(str(batch_id).encode()) - 2**31


# The advisory locks this thread's connection holds. A session advisory lock is reentrant (the
# same session gets it again and again), so the session must not ask for one it holds.
_session = threading.local()


@contextmanager
def _advisory_lock(batch_id, filename: str = "") -> Iterator[bool]:
    key = _key(batch_id)
    held = _session.__dict__.setdefault("keys", set())
    if key in held:
        yield False
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [ADVISORY_NAMESPACE, key])
        got = cursor.fetchone()[0]
    if got:
        held.add(key)
    try:
        yield got
    finally:
        if got:
            held.discard(key)
            if connection.is_usable():
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [ADVISORY_NAMESPACE, key])


@contextmanager
def run_lease(name: str) -> Iterator[bool]:
    """Try to be the one process running the task `name`; yield whether this one is (never
    waits). Released when the block ends, or when the process or its connection dies."""
    lock = _advisory_lock if connection.vendor == "postgresql" else _file_lock
    with lock(f"run:{name}", filename=f"run-{name}") as got:
        yield got


def _lock_dir() -> Path:
    path = Path(str(connection.settings_dict["NAME"]) + ".locks")
    path.mkdir(exist_ok=True)
    return path


@contextmanager
def _file_lock(batch_id, filename: str = "") -> Iterator[bool]:
    slot = zlib.crc32(str(batch_id).encode()) % SLOTS
    path = _lock_dir() / (filename or f"batch-{slot:04d}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            # flock, not lockf: flock locks belong to this open file, so two threads of one
            # process exclude each other too; POSIX record locks would let both in.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
