"""A worker killed at every step of a batch's life (CONTRACT.md §2): restarted, it loses no
request and submits none twice, for every kind of upstream (tests/kinds.py).

Each test runs the scheduler's flush and poll tasks in a subprocess on the test database;
BATCHPROXY_CRASH_AT makes that process `os._exit` at the named point, as `kill -9` would, leaving
its lease and half-done step behind for the next run to finish.
"""

import pytest

from batches_app.leases import batch_lease
from batches_app.models import Batch, UpstreamFile
from requests_app.models import BatchRequest

from .kinds import assert_each_answered_once, cases
from .workers import CRASHED, run, wait_for

pytestmark = pytest.mark.django_db(transaction=True)
Status = BatchRequest.Status
TEXTS = [f"crash {i}" for i in range(5)]


@pytest.fixture
def queued(kind):
    """Five queued requests of the kind under test."""
    for text in TEXTS:
        assert kind.queue(text).status_code == 422
    return kind


@pytest.fixture
def tick(fake_openai):
    def tick(crash_at: str = "") -> None:
        """One scheduler tick (flush, then poll) in a worker process of its own."""
        done = run(fake_openai, "tick", crash_at=crash_at, INGEST_CHUNK_LINES=2)
        assert done.returncode == (CRASHED if crash_at else 0), done.stderr[-3000:]

    return tick


def lease_free() -> bool:
    with batch_lease(Batch.objects.get().pk) as got:
        return got


def restart(tick) -> None:
    """Tick again at once: the dead worker's lease died with it (within moments, not minutes)."""
    wait_for(lease_free, timeout=2, what="the dead worker's lease to be released")
    tick()


SUBMIT_POINTS = [
    # where the worker dies, the state it leaves the batch in
    ("after_claim", Batch.State.BUILDING),
    ("after_upload", Batch.State.BUILDING),  # only where a batch is uploaded
    ("before_create", Batch.State.UPLOADED),
    ("after_create", Batch.State.UPLOADED),
]


@pytest.mark.parametrize(
    ("kind", "point", "left_in"),
    cases(SUBMIT_POINTS, needs=lambda row: ["upload"] if row[0] == "after_upload" else []),
    indirect=["kind"],
)
def test_crash_while_submitting_is_finished_by_the_next_run(queued, tick, point, left_in):
    tick(crash_at=point)

    batch = Batch.objects.get()
    assert batch.state == left_in
    assert BatchRequest.objects.filter(status=Status.SUBMITTED, batch=batch).count() == 5
    if point == "after_upload":
        [orphan] = queued.files()  # uploaded, never recorded
        assert not UpstreamFile.objects.exists()
    upstream_before = len(queued.upstream_batches())
    assert upstream_before == (1 if point == "after_create" else 0)

    restart(tick)

    assert len(queued.upstream_batches()) == 1  # adopted (found again), not created again
    assert Batch.objects.get().state == Batch.State.DONE
    assert_each_answered_once(queued)
    if point == "after_upload":
        assert queued.called("delete", orphan)


@pytest.mark.parametrize("point", ["mid_ingest", "after_ingest_file"])
def test_crash_while_ingesting_is_finished_by_the_next_run(queued, tick, point):
    tick(crash_at=point)

    batch = Batch.objects.get()
    assert batch.state == Batch.State.INGESTING
    completed = BatchRequest.objects.filter(status=Status.COMPLETED).count()
    # INGEST_CHUNK_LINES=2: the first chunk is committed, the rest not yet.
    assert completed == (2 if point == "mid_ingest" else 5)
    assert not UpstreamFile.objects.filter(ingested_at__isnull=False).exists()

    restart(tick)

    assert Batch.objects.get().state == Batch.State.DONE
    assert_each_answered_once(queued)
