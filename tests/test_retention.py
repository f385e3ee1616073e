"""Retention (CONTRACT.md §2): the scheduled purge deletes old answers; asked again, a purged
call starts afresh."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import Schedule

from batches_app import tasks
from batches_app.schedules import schedules_ensure
from requests_app.models import BatchRequest

from .engine import cycle

pytestmark = pytest.mark.django_db


def chat(text: str) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


def test_purge_runs_on_a_schedule():
    # What every `migrate` runs; called here because transactional tests flush the table.
    schedules_ensure()
    schedule = Schedule.objects.get(name="batchproxy.purge")
    assert (schedule.func, schedule.repeats) == ("batches_app.tasks.purge", -1)


def test_scheduled_purge_deletes_only_answers_past_retention(post, fake_openai, settings):
    for text in ("old", "recent"):
        assert post("/v1/chat/completions", chat(text)).status_code == 422
    assert post("/v1/chat/completions", chat("pending")).status_code == 422
    cycle()
    assert post("/v1/chat/completions", chat("still queued")).status_code == 422
    old = BatchRequest.objects.get(body__contains='"old"')
    past = timezone.now() - timedelta(seconds=settings.RESULT_RETENTION + 60)
    BatchRequest.objects.filter(pk=old.pk).update(finished_at=past)  # time moved

    assert tasks.purge().startswith("1 answers purged;")

    assert not BatchRequest.objects.filter(pk=old.pk).exists()
    assert post("/v1/chat/completions", chat("recent")).status_code == 200
    again = post("/v1/chat/completions", chat("old"))
    assert again.status_code == 422  # afresh: queued again, under a new id
    assert again["X-Batch-Request-Id"] != str(old.pk)
    assert BatchRequest.objects.get(pk=again["X-Batch-Request-Id"]).attempts == 0
    assert BatchRequest.objects.filter(status=BatchRequest.Status.QUEUED).count() == 2
