"""Second ticks under django-q2, leases that die with their worker, SIGTERM between steps."""

import signal
import threading
import time

import pytest

from batches_app import tasks
from batches_app.leases import batch_lease
from batches_app.models import Batch
from batches_app.schedules import SCHEDULES
from requests_app.models import BatchRequest

from .workers import assert_each_answered_once, spawn, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def chat(text: str) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


@pytest.fixture
def queued_links(monkeypatch) -> list[tuple]:
    """The links a tick queues for its successor, instead of the broker."""
    links = []
    monkeypatch.setattr(tasks, "async_task", lambda func, *args, **kw: links.append(args))
    return links


def test_the_minute_schedule_starts_a_chain_of_ticks():
    assert SCHEDULES["batchproxy.tick"] == ("batches_app.tasks.tick", 1)


def test_a_tick_queues_the_next_one_a_tick_later_until_its_minute_is_over(
    settings, queued_links, fake_openai
):
    settings.TICK_SECONDS = 5
    now = time.time()

    tasks.tick()

    [(until, following)] = queued_links
    assert until == pytest.approx(now + 60 + tasks.CHAIN_OVERLAP, abs=1)
    assert following == pytest.approx(now + 5, abs=1)
    # The last link of the minute queues nothing; one found in the broker after it, neither.
    queued_links.clear()
    tasks.tick(now + 3, now)
    assert not queued_links
    assert tasks.tick(now - 1, now - 2) == "chain over"


def test_a_group_due_by_size_is_flushed_by_the_next_tick(post, settings, fake_openai, queued_links):
    settings.BATCH_MAX_WAIT, settings.BATCH_MAX_REQUESTS = 3600, 3
    for i in range(3):
        assert post("/v1/chat/completions", chat(f"full {i}")).status_code == 422

    tasks.tick()

    assert len(fake_openai.batches) == 1  # created upstream, not an hour later
    assert BatchRequest.objects.filter(status=BatchRequest.Status.SUBMITTED).count() == 3


def try_lease_in_a_thread(batch_id) -> bool:
    """Another thread: its own database connection, as in a threaded web worker."""
    from django.db import connection

    got = []

    def attempt():
        try:
            with batch_lease(batch_id) as held:
                got.append(held)
        finally:
            connection.close()

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join(10)
    return got[0]


def test_a_lease_excludes_a_second_holder_even_in_the_same_process():
    batch = Batch.objects.create(endpoint="/v1/chat/completions", model="m")
    with batch_lease(batch.pk) as first:
        assert first
        with batch_lease(batch.pk) as nested:  # the same thread, the same connection
            assert not nested
        assert not try_lease_in_a_thread(batch.pk)  # another thread, its own connection
    assert try_lease_in_a_thread(batch.pk)


def test_a_lease_is_free_the_moment_its_holder_is_killed(fake_openai):
    batch = Batch.objects.create(endpoint="/v1/chat/completions", model="m")
    holder = spawn(fake_openai, "hold", str(batch.pk))
    try:
        assert holder.stdout.readline().strip() == "held"
        with batch_lease(batch.pk) as got:
            assert not got
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)

        def free() -> bool:
            with batch_lease(batch.pk) as got:
                return got

        started = time.monotonic()
        wait_for(free, timeout=2, what="the killed holder's lease")
        assert time.monotonic() - started < 2  # a tick at most, not BATCH_LEASE_SECONDS
    finally:
        holder.kill()
        holder.wait()


def test_sigterm_ends_the_step_under_way_cleanly_then_the_worker(post, fake_openai):
    for i in range(3):
        assert post("/v1/chat/completions", chat(f"deploy {i}")).status_code == 422
    # The download of the results hangs a while: SIGTERM arrives in the middle of the ingest.
    fake_openai.configure(timeout_sleep=2)
    fake_openai.inject("content", "timeout")
    worker = spawn(fake_openai, "tick", "3")
    try:
        wait_for(
            lambda: any(op == "content" for op, _ in fake_openai.calls),
            what="the download to start",
        )
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    finally:
        worker.kill()
    assert worker.returncode == 128 + signal.SIGTERM
    # The step it was in ran to its end; the worker took no further round.
    assert Batch.objects.get().state == Batch.State.DONE
    assert_each_answered_once(fake_openai)
    assert worker.stdout.read() == ""  # its first round never got to report: it stopped there


def test_retry_after_counts_the_flush_tick_and_the_poll(post, settings):
    settings.BATCH_MAX_WAIT, settings.POLL_INTERVAL, settings.TICK_SECONDS = 300, 60, 5
    response = post("/v1/chat/completions", chat("estimate"))
    assert 365 <= int(response["Retry-After"]) <= 370


def test_retry_after_with_webhooks_asks_again_within_half_a_minute(post, settings):
    settings.BATCH_MAX_WAIT, settings.POLL_INTERVAL, settings.TICK_SECONDS = 0, 3600, 5
    settings.OPENAI_WEBHOOK_SECRET = "whsec_c2VjcmV0"
    response = post("/v1/chat/completions", chat("estimate"))
    assert int(response["Retry-After"]) == 40  # flushed within a tick, then 30 s + a tick


@pytest.mark.parametrize(
    "tick, secret, found",
    [
        (5, "whsec_c2VjcmV0", set()),
        (0, "", {"ops_app.E005"}),
        (120, "", {"ops_app.E005"}),
        (5, "not-a-webhook-secret", {"ops_app.W002"}),
    ],
)
def test_nonsense_tick_or_webhook_settings_fail_the_system_check(settings, tick, secret, found):
    from ops_app.checks import ticks_and_webhooks_check

    settings.TICK_SECONDS, settings.OPENAI_WEBHOOK_SECRET = tick, secret
    assert {problem.id for problem in ticks_and_webhooks_check(None)} == found
