"""A create lost with its worker's database (issue 20, item 10): the worker's connection is
killed while the upstream holds its create, so its lease goes with it; the next scheduler must
not create the batch a second time, but wait for that create and adopt it. For every kind of
upstream (tests/kinds.py), with real worker processes on the test database.

PostgreSQL: the worker's session is ended by `pg_terminate_backend`, which releases its
advisory lease at once. SQLite's lease is the worker process's own file lock: the equivalent
is the worker killed mid-create.
"""

import os
import signal

import pytest
from django.db import connection

from batches_app.models import Batch
from requests_app.models import BatchRequest

from .kinds import assert_each_answered_once
from .workers import run, spawn, wait_for

pytestmark = pytest.mark.django_db(transaction=True)
HOLD = 8.0  # how long the upstream holds the create, then makes it
# The workers' client outlives the held create: the create is lost with the database only.
WORKER = {"OPENAI_TIMEOUT": 10.0, "OPENAI_MAX_RETRIES": 0}


def _drop_the_workers_database(worker) -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # The session that holds a batch's lease: the worker's.
            cursor.execute(
                "SELECT pg_terminate_backend(l.pid) FROM pg_locks l "
                "JOIN pg_database d ON d.oid = l.database AND d.datname = current_database() "
                "WHERE l.locktype = 'advisory' AND l.pid <> pg_backend_pid()"
            )
            assert cursor.fetchall() == [(True,)]
    else:
        os.kill(worker.pid, signal.SIGKILL)


def test_a_create_whose_worker_lost_the_database_is_made_once(kind, fake_openai, tmp_path):
    for text in ("lost 0", "lost 1", "lost 2"):
        assert kind.queue(text).status_code == 422
    kind.hold_timeouts(HOLD)
    kind.inject("create", "timeout")  # held, then made: the worker is gone by then
    go = tmp_path / "go"
    # Another scheduler, started now and released the moment the first loses its database.
    other = spawn(fake_openai, "tick", BATCHPROXY_GO=go, **WORKER)
    assert other.stdout.readline().strip() == "ready", other.stderr.read()[-3000:]
    worker = spawn(fake_openai, "tick", **WORKER)
    wait_for(lambda: kind.calls("create"), timeout=60, what="the create to reach upstream")
    batch = Batch.objects.get()
    assert batch.create_started_at is not None  # the intent, recorded before the call

    _drop_the_workers_database(worker)
    go.touch()  # the lease is free, the create not landed yet
    out, err = other.communicate(timeout=60)
    assert other.returncode == 0, err[-3000:]
    assert len(kind.calls("create")) == 1  # it made no second
    worker.communicate(timeout=60)  # its create answered, it could not record it

    batch.refresh_from_db()
    assert batch.state == Batch.State.UPLOADED, (out, batch.last_error)  # waiting for it
    wait_for(lambda: kind.upstream_batches(), timeout=30, what="the held create to land")

    def finished() -> bool:
        run(fake_openai, "tick", **WORKER)
        return not BatchRequest.objects.filter(status__in=BatchRequest.PENDING).exists()

    wait_for(finished, timeout=90, what="the batch to be adopted and answered")
    assert len(kind.upstream_batches()) == 1
    assert len(kind.calls("create")) == 1
    assert_each_answered_once(kind)
