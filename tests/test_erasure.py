"""Data that can be erased: one key purged on request (command and admin action), and every
table pruned by age."""

import time
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.utils import timezone
from django_q.models import OrmQ, Task

from batches_app import tasks
from batches_app.models import Batch, KeyModel, UpstreamFile
from batches_app.retention import retention_prune
from requests_app import webhooks
from requests_app.models import (
    ApiKey,
    BatchRequest,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

from .engine import cycle

pytestmark = pytest.mark.django_db
CHAT = "/v1/chat/completions"


def chat(text: str) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


@pytest.fixture
def two_tenants(post, api_key, other_key, fake_openai, settings):
    """Both keys with answered and queued requests, webhook records, and the batches' files
    still upstream (kept by DELETE_UPSTREAM_FILES=false)."""
    settings.DELETE_UPSTREAM_FILES = False
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = True
    webhooks.webhook_endpoint_create(url="https://hooks.example.com/all")
    webhooks.webhook_endpoint_create(url="https://hooks.example.com/mine?t=1", api_key=api_key[0])
    for secret in (api_key[1], other_key[1]):
        for text in ("answered one", "answered two"):
            assert post(CHAT, chat(text), secret=secret).status_code == 422
    cycle()
    webhooks.webhook_deliveries_group()
    WebhookAttempt.objects.create(delivery=WebhookDelivery.objects.first(), error="x")
    for secret in (api_key[1], other_key[1]):
        assert post(CHAT, chat("still queued"), secret=secret).status_code == 422
    assert len(fake_openai.files) == 2  # one batch: its input and output files
    return api_key[0], other_key[0]


def test_purge_key_leaves_nothing_of_the_key_behind(two_tenants, fake_openai, post, other_key):
    mine, theirs = two_tenants
    out = StringIO()

    call_command("purge_key", str(mine.pk), "--yes", stdout=out)

    said = out.getvalue()
    assert "3 requests deleted, 2 of them with an answer." in said
    assert "2 upstream files holding its lines deleted upstream." in said
    assert not ApiKey.objects.filter(pk=mine.pk).exists()
    assert not BatchRequest.objects.filter(api_key_id=mine.pk).exists()
    assert not KeyModel.objects.filter(api_key_id=mine.pk).exists()
    assert not WebhookEndpoint.objects.filter(url__contains="mine").exists()
    assert not WebhookEvent.objects.filter(request__api_key_id=mine.pk).exists()
    assert not fake_openai.files  # the shared batch's files held its lines
    assert UpstreamFile.objects.filter(deleted_at=None).count() == 0
    # The other tenant keeps everything of its own, and still gets its answers.
    assert BatchRequest.objects.filter(api_key=theirs).count() == 3
    assert WebhookEvent.objects.filter(request__api_key_id=theirs.pk).count() == 2
    assert post(CHAT, chat("answered one"), secret=other_key[1]).status_code == 200


def test_purge_key_asks_first(two_tenants, monkeypatch):
    mine, _ = two_tenants
    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    with pytest.raises(Exception, match="Nothing erased"):
        call_command("purge_key", str(mine.pk))
    assert ApiKey.objects.filter(pk=mine.pk).exists()


def test_a_purged_keys_lines_in_a_running_batch_are_ignored_when_it_ends(
    post, api_key, other_key, fake_openai
):
    fake_openai.configure(step_seconds=0.5)  # the batch stays in progress for 1.5 s
    for secret in (api_key[1], other_key[1]):
        assert post(CHAT, chat("in flight"), secret=secret).status_code == 422
    cycle()
    assert Batch.objects.get().state == Batch.State.RUNNING
    out = StringIO()
    call_command("purge_key", str(api_key[0].pk), "--yes", stdout=out)
    assert "of batches still running hold some of its lines" in out.getvalue()
    time.sleep(1.6)
    cycle()
    assert BatchRequest.objects.get().status == BatchRequest.Status.COMPLETED  # the other's
    assert not BatchRequest.objects.filter(api_key_id=api_key[0].pk).exists()


def test_erasing_from_the_admin_needs_the_delete_permission_and_is_logged(
    two_tenants, client, admin_client
):
    mine, theirs = two_tenants
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_apikey"))
    client.force_login(viewer)
    action = {"action": "purge", "_selected_action": [mine.pk], "confirmed": "yes"}
    refused = client.post("/admin/requests_app/apikey/", action)
    assert refused.status_code in (200, 302)
    assert ApiKey.objects.filter(pk=mine.pk).exists()  # a viewer cannot erase

    asked = admin_client.post("/admin/requests_app/apikey/", {**action, "confirmed": ""})
    assert b"cannot be undone" in asked.content
    assert ApiKey.objects.filter(pk=mine.pk).exists()  # not before it is confirmed
    done = admin_client.post("/admin/requests_app/apikey/", action, follow=True)
    assert b"3 requests deleted" in done.content
    assert not ApiKey.objects.filter(pk=mine.pk).exists()
    entry = LogEntry.objects.get(action_flag=DELETION, object_id=str(mine.pk))
    assert entry.user.username == "admin" and "Erased" in entry.get_change_message()
    assert ApiKey.objects.filter(pk=theirs.pk).exists()


# --- Pruning by age --------------------------------------------------------------------------


def test_prune_deletes_each_kind_of_row_only_past_its_retention(two_tenants, settings):
    mine, theirs = two_tenants
    settings.TASK_RETENTION = 2 * settings.RESULT_RETENTION
    now = timezone.now()
    later = now + timedelta(seconds=settings.RESULT_RETENTION + 60)
    # A key revoked long ago: its queued request goes; a recent revocation keeps its own.
    ApiKey.objects.filter(pk=mine.pk).update(revoked_at=now)
    ApiKey.objects.filter(pk=theirs.pk).update(revoked_at=later - timedelta(seconds=60))
    WebhookEndpoint.objects.update(is_active=False)  # paused: its events wait
    Task.objects.create(id="a" * 32, name="old", func="x", started=now, stopped=now, success=True)
    OrmQ.objects.create(key="batchproxy", payload="x", lock=now)

    report = retention_prune(now=later)

    assert report.revoked_requests == 1
    assert not BatchRequest.objects.filter(api_key=mine, status="queued").exists()
    assert BatchRequest.objects.filter(api_key=theirs, status="queued").exists()
    assert not WebhookEvent.objects.exists() and not WebhookDelivery.objects.exists()
    assert report.tasks == 0  # TASK_RETENTION is not over yet for either
    assert Batch.objects.count() == 1

    much_later = now + timedelta(seconds=settings.BATCH_RETENTION + settings.TASK_RETENTION)
    report = retention_prune(now=much_later)
    assert report.batches == 1 and not Batch.objects.exists()
    assert not UpstreamFile.objects.exists()
    assert not Task.objects.filter(name="old").exists() and not OrmQ.objects.exists()
    # The answers keep their own retention (requests_purge) and lose only the batch link.
    assert BatchRequest.objects.filter(status="completed", batch=None).count() == 4


def test_pruned_batches_still_count_in_metrics(two_tenants, settings, client):
    settings.METRICS_PUBLIC = True
    much_later = timezone.now() + timedelta(seconds=settings.BATCH_RETENTION + 60)
    retention_prune(now=much_later)
    assert not Batch.objects.exists()
    text = client.get("/metrics").content.decode()
    done = 'batchproxy_batches{state="done",upstream="openai",upstream_status="completed"} 1.0'
    assert done in text
    tokens = 'batchproxy_tokens_total{direction="input",model="gpt-4o-mini",upstream="openai"}'
    assert tokens in text


def test_the_hourly_purge_runs_the_prune(two_tenants):
    assert "task rows pruned" in tasks.purge()
