"""Upstream faults on every kind of call (CONTRACT.md §2): retried on later ticks with back-off,
nothing lost, nothing submitted twice; for every kind of upstream, and for each of the engine's
calls that kind makes (tests/kinds.py)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from batches_app import services
from batches_app.models import Batch
from requests_app.models import BatchRequest

from .kinds import assert_each_answered_once, cases
from .workers import wait_for

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status
FAULTS = [429, 500, "timeout", "disconnect"]


@pytest.fixture
def upstream(kind, settings):
    """Three queued requests of the kind under test; its fake quick to time out, the SDK's own
    retries off, so a fault fails a tick."""
    settings.OPENAI_TIMEOUT = 1.0  # 0.5 s: moto's S3, on a loaded machine, timed out unasked
    settings.OPENAI_MAX_RETRIES = 0
    kind.hold_timeouts(1.5)
    for i in range(3):
        assert kind.queue(f"fault {i}").status_code == 422
    return kind


def tick() -> services.AdvanceReport:
    """One forced scheduler tick: back-off is checked apart, in its own tests."""
    services.batch_flush(force=True)
    return services.batches_advance(force=True)


def ticks_until_done(*, limit: int = 12) -> int:
    """Tick until no request or batch is pending; return how many ticks failed upstream."""
    failed = 0
    for _ in range(limit):
        failed += bool(tick().failures)
        pending = BatchRequest.objects.filter(status__in=BatchRequest.PENDING)
        if not pending.exists() and not Batch.objects.filter(state__in=Batch.ACTIVE).exists():
            return failed
    raise AssertionError("requests or batches still pending after the ticks")


def wait_for_held_call(kind, operation: str, fault) -> int:
    """A "timeout" fault holds the call, then does it: let an upload or create land upstream.

    In production the back-off after an ambiguous failure (services.AMBIGUOUS) waits for that.
    Return how many ticks failed meanwhile.
    """
    if fault != "timeout" or operation not in ("upload", "create"):
        return 0
    assert tick().failures
    if operation == "upload":
        wait_for(kind.files, what="the held upload")
    else:
        wait_for(kind.upstream_batches, what="the held create")
    return 1


SETUPS = {
    # the engine's call (tests/kinds.py): faults to inject first so that it is called at all
    "upload": [],
    "create": [],
    "retrieve": [],
    "read": [],
    "delete": [],
    "find_batch": [("create", "lost_response")],
    "find_files": [("upload", "lost_response")],
}
CALLS = cases(
    [(operation, fault) for operation in SETUPS for fault in FAULTS],
    needs=lambda row: [row[0], *(call for call, _ in SETUPS[row[0]])],
)


@pytest.mark.parametrize(("kind", "operation", "fault"), CALLS, indirect=["kind"])
def test_failing_call_is_retried_later_and_nothing_is_lost_or_doubled(upstream, operation, fault):
    for setup in SETUPS[operation]:
        upstream.inject(*setup)
    held = fault == "timeout" and operation in ("upload", "create")
    upstream.inject(operation, fault, times=1 if held else 2)
    failed = wait_for_held_call(upstream, operation, fault)

    failed += ticks_until_done()

    assert failed >= 1
    calls = len(upstream.calls(operation))
    if (operation, fault) == ("create", "timeout"):
        assert calls == 1  # the held create landed and was adopted, not made again
    else:
        assert calls >= 2
    assert len(upstream.upstream_batches()) == 1
    assert_each_answered_once(upstream)
    assert Batch.objects.get().state == Batch.State.DONE


@pytest.mark.parametrize("fault", FAULTS)
def test_failing_cancel_is_retried_and_the_requests_requeued_once(upstream, fault):
    upstream.run_for(3600)
    tick()
    first = Batch.objects.get()
    assert first.state == Batch.State.RUNNING
    upstream.inject("cancel", fault, times=2)

    services.batch_cancel(batch_id=first.pk, requeue=True)
    upstream.run_for(0)
    failed = ticks_until_done()

    # A timed-out cancel is held, then done upstream: the next tick may find the batch
    # cancelled already, with nothing left to retry. Any other fault is seen and retried.
    assert failed >= 1 or fault == "timeout"
    statuses = upstream.upstream_batches()
    assert statuses[first.upstream_id] == "cancelled"
    completed = {batch_id for batch_id, status in statuses.items() if status == "completed"}
    assert len(completed) == 1
    for request in BatchRequest.objects.all():
        assert request.status == Status.COMPLETED
        assert request.attempts == 1  # the operator's cancel spent none
        batches = {
            batch_id
            for custom_id, batch_id in upstream.submissions()
            if custom_id == str(request.pk)
        }
        assert batches == {first.upstream_id, *completed}
    assert not upstream.left_upstream()


@pytest.mark.parametrize(
    ("kind", "operation"),
    cases([("upload",), ("create",)], needs=lambda row: row),
    indirect=["kind"],
)
def test_lost_response_never_makes_a_second_file_or_batch(upstream, operation):
    upstream.inject(operation, "lost_response")

    ticks_until_done()

    assert len(upstream.upstream_batches()) == 1
    assert len(upstream.calls("create")) == 1
    assert_each_answered_once(upstream)  # also: the orphaned upload was deleted


def test_backoff_doubles_per_failure_up_to_an_hour(upstream, settings):
    settings.UPSTREAM_BACKOFF = 5
    # A batch's first upstream call: its upload, or its create where requests go inline.
    upstream.inject("upload" if "upload" in upstream.operations else "create", 500, times=12)
    [batch] = services.batch_flush(force=True)

    delays = []
    for _ in range(12):
        assert services.batch_step(batch_id=batch.pk, force=True)  # its back-off aside
        batch.refresh_from_db()
        delays.append((batch.next_attempt_at - timezone.now()).total_seconds())

    expected = [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
    assert [round(d / 5) * 5 for d in delays] == expected
    assert batch.upstream_failures == 12


def test_a_failed_batch_waits_for_its_backoff(upstream, settings):
    settings.UPSTREAM_BACKOFF = 60
    services.batch_flush(force=True)
    upstream.inject("retrieve", 503)
    services.batches_advance()  # upload and create
    assert services.batches_advance().failures  # the poll fails

    assert services.batches_advance().stepped == 0  # backing off
    Batch.objects.update(next_attempt_at=timezone.now() - timedelta(seconds=1))  # time moved
    assert services.batches_advance().stepped == 1
    assert_each_answered_once(upstream)


@pytest.mark.parametrize("fault", ["timeout", "disconnect"])
def test_ambiguous_create_waits_for_a_late_batch_before_looking_for_it(upstream, fault):
    upstream.inject("create", fault)
    services.batch_flush(force=True)
    services.batches_advance()
    batch = Batch.objects.get()

    assert batch.state == Batch.State.UPLOADED
    assert batch.create_attempted_at is not None
    assert batch.next_attempt_at >= timezone.now() + timedelta(seconds=0.5)


def test_permanent_refusal_splits_the_batch_and_deletes_the_file(upstream):
    upstream.inject("create", 400)
    tick()

    refused = Batch.objects.get(state=Batch.State.DONE)
    halves = Batch.objects.filter(state=Batch.State.BUILDING)
    assert sorted(halves.values_list("request_count", flat=True)) == [1, 2]
    assert set(BatchRequest.objects.values_list("status", "batch__state", "attempts")) == {
        (Status.SUBMITTED, Batch.State.BUILDING, 1)  # no attempt spent: nothing ran
    }
    assert "400" in refused.last_error
    from batches_app import tasks

    tasks.poll()  # sweeps the refused batch's input file, if it had one
    assert not upstream.files()
    ticks_until_done()
    assert len(upstream.upstream_batches()) == 2
    assert_each_answered_once(upstream)


def test_batch_stuck_past_its_window_is_cancelled_and_treated_as_expired(upstream, settings):
    upstream.run_for(3600)
    tick()
    batch = Batch.objects.get()
    assert batch.state == Batch.State.RUNNING
    services.batches_advance(force=True)
    assert Batch.objects.get().state == Batch.State.RUNNING  # not stuck yet

    late = timezone.now() - timedelta(seconds=settings.BATCH_STUCK_AFTER + 60)
    Batch.objects.update(upstream_created_at=late)  # time moved, not slept
    services.batches_advance(force=True)

    batch.refresh_from_db()
    assert (batch.state, batch.upstream_status) == (Batch.State.DONE, "expired")
    assert upstream.called("cancel", batch.upstream_id)
    assert set(BatchRequest.objects.values_list("status", "batch", "error_code")) == {
        (Status.QUEUED, None, "batch_expired")
    }


def test_an_expired_batch_delivers_what_finished_and_resubmits_the_rest(kind):
    kind.expire_after(1)
    for text in ("a", "b", "c"):
        assert kind.queue(text).status_code == 422
    tick()
    tick()
    assert BatchRequest.objects.filter(status=Status.COMPLETED).count() == 1
    requeued = BatchRequest.objects.filter(status=Status.QUEUED, error_code="batch_expired")
    assert requeued.count() == 2

    kind.expire_after(None)
    ticks_until_done()

    assert BatchRequest.objects.filter(status=Status.COMPLETED).count() == 3
    assert len(kind.sent()) == 3 + 2  # the finished one was not sent again
