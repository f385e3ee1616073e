"""Operator commands and schedules: thin callers of the same services the scheduler runs."""

from io import StringIO

import pytest
from django.core.management import call_command, get_commands
from django_q.models import Schedule

from batches_app.models import Batch
from requests_app.models import BatchRequest

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_schedules_exist_after_migrate():
    schedules = {s.name: s for s in Schedule.objects.all()}
    assert set(schedules) == {
        "batchproxy.tick",
        "batchproxy.purge",
        "batchproxy.webhooks",
        "batchproxy.webhooks_purge",
    }
    assert schedules["batchproxy.tick"].func == "batches_app.tasks.tick"
    assert schedules["batchproxy.tick"].minutes == 1


def test_no_command_is_named_flush_but_djangos_own():
    assert get_commands()["flush"] == "django.core"


def test_flush_batches_flushes_a_young_group_and_submits_it(post, fake_openai, settings):
    settings.BATCH_MAX_WAIT = 3600
    post("/v1/chat/completions", {"model": "a", "messages": []})
    post("/v1/embeddings", {"model": "e", "input": "x"})

    out = run("flush_batches", "--endpoint", "embeddings")

    assert "1 batches flushed with 1 requests; 1 submitted" in out
    assert Batch.objects.get().endpoint == "/v1/embeddings"
    assert BatchRequest.objects.filter(status="queued").count() == 1
    assert len(fake_openai.batches) == 1


def test_poll_batches_polls_now_whatever_the_interval(post, fake_openai, settings):
    settings.POLL_INTERVAL = 3600
    fake_openai.configure(step_seconds=0)
    post("/v1/chat/completions", {"model": "a", "messages": []})
    run("flush_batches")
    batch = Batch.objects.get()
    assert batch.state == Batch.State.RUNNING

    assert "1 batches polled, 0 upstream errors" in run("poll_batches")
    assert BatchRequest.objects.get().status == "completed"


def test_scheduled_tasks_run_the_same_services(post, fake_openai, settings):
    from batches_app import tasks

    settings.BATCH_MAX_WAIT = 0
    post("/v1/chat/completions", {"model": "a", "messages": []})
    assert tasks.flush().startswith("1 batches flushed")
    assert Batch.objects.get().state == Batch.State.RUNNING
    assert tasks.poll() == "1 batches polled, 0 upstream errors"
    assert BatchRequest.objects.get().status == "completed"
