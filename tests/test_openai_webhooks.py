"""OpenAI's webhooks (`POST /webhooks/openai`): verified, never replayed, acted on at once."""

import json
import pydoc
import threading
import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django_q.models import OrmQ

from batches_app import tasks
from batches_app.leases import batch_lease
from batches_app.models import Batch, OpenAIWebhook
from batchproxy.fakes.openai import new_webhook_secret, sign_webhook
from requests_app.models import BatchRequest

from .workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hooked"}]}


@pytest.fixture
def secret(settings):
    settings.OPENAI_WEBHOOK_SECRET = new_webhook_secret()
    settings.POLL_INTERVAL = 3600  # only a webhook can find the result soon
    settings.BATCH_MAX_WAIT = 0
    return settings.OPENAI_WEBHOOK_SECRET


@pytest.fixture
def running(post, fake_openai, secret):
    """One request in a batch that the fake has finished, and that the proxy has not polled."""
    assert post("/v1/chat/completions", CHAT).status_code == 422
    tasks.flush()
    batch = Batch.objects.get()
    assert batch.state == Batch.State.RUNNING
    Batch.objects.filter(pk=batch.pk).update(next_attempt_at=batch.created_at.replace(year=2999))
    return Batch.objects.get()


def event(upstream_id: str, type: str = "batch.completed", event_id: str = "evt_1") -> bytes:
    body = {"id": event_id, "object": "event", "type": type, "created_at": int(time.time())}
    return json.dumps(body | {"data": {"id": upstream_id}}).encode()


def deliver(client, body: bytes, secret: str, *, timestamp=None, webhook_id="msg_1", **extra):
    headers = sign_webhook(body, secret, webhook_id=webhook_id, timestamp=timestamp)
    meta = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
    return client.post(
        "/webhooks/openai", data=body, content_type="application/json", **(meta | extra)
    )


def queued_tasks() -> list[tuple[str, tuple]]:
    return [(queued.task["func"], tuple(queued.task["args"])) for queued in OrmQ.objects.all()]


def run_queued() -> None:
    """What a django-q2 worker does with the queued tasks."""
    for func, args in queued_tasks():
        pydoc.locate(func)(*args)
    OrmQ.objects.all().delete()


def test_a_verified_event_queues_a_refresh_that_ingests_the_batch_at_once(client, running, secret):
    response = deliver(client, event(running.upstream_id), secret)

    assert response.status_code == 200
    assert queued_tasks() == [("batches_app.tasks.batch_refresh", (running.upstream_id,))]
    assert OpenAIWebhook.objects.get().upstream_id == running.upstream_id
    run_queued()
    assert Batch.objects.get().state == Batch.State.DONE
    assert BatchRequest.objects.get().status == BatchRequest.Status.COMPLETED


@pytest.mark.parametrize(
    "forge",
    ["wrong secret", "stale", "from the future", "no signature", "body changed"],
)
def test_a_forged_or_stale_webhook_is_400_and_changes_nothing(client, running, secret, forge):
    body = event(running.upstream_id)
    if forge == "wrong secret":
        response = deliver(client, body, new_webhook_secret())
    elif forge == "stale":
        response = deliver(client, body, secret, timestamp=int(time.time()) - 600)
    elif forge == "from the future":
        response = deliver(client, body, secret, timestamp=int(time.time()) + 600)
    elif forge == "no signature":
        response = client.post("/webhooks/openai", data=body, content_type="application/json")
    else:
        headers = sign_webhook(body, secret, webhook_id="msg_1")
        meta = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()}
        forged = body.replace(b"batch.completed", b"batch.cancelled")
        response = client.post(
            "/webhooks/openai", data=forged, content_type="application/json", **meta
        )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_webhook"
    assert not OpenAIWebhook.objects.exists()
    assert not queued_tasks()
    assert Batch.objects.get().state == Batch.State.RUNNING


def test_a_replayed_event_is_400_and_queues_nothing_more(client, running, secret):
    body = event(running.upstream_id)
    assert deliver(client, body, secret).status_code == 200

    replayed = deliver(client, body, secret, webhook_id="msg_2")

    assert replayed.status_code == 400
    assert "already received" in replayed.json()["error"]["message"]
    assert len(queued_tasks()) == 1
    assert OpenAIWebhook.objects.count() == 1


def test_an_unknown_batch_is_acknowledged_and_ignored(client, running, secret):
    response = deliver(client, event("batch_not_ours"), secret)

    assert response.status_code == 200
    assert "ignored" in response.json()["done"]
    assert not queued_tasks()
    assert Batch.objects.get().state == Batch.State.RUNNING


def test_without_a_secret_webhooks_are_refused(client, running, secret, settings):
    settings.OPENAI_WEBHOOK_SECRET = ""
    assert deliver(client, event(running.upstream_id), secret).status_code == 400
    assert not OpenAIWebhook.objects.exists()


def test_a_refresh_waits_for_the_worker_holding_the_batch(running):
    held, release = threading.Event(), threading.Event()

    def hold():
        with batch_lease(running.pk) as got:
            assert got
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    threading.Timer(0.5, release.set).start()

    tasks.batch_refresh(running.upstream_id)  # does not give up while the other holds it

    holder.join()
    assert Batch.objects.get().state == Batch.State.DONE


def test_the_fake_sends_signed_webhooks_that_the_proxy_accepts(
    live_server, running, secret, fake_openai
):
    fake_openai.configure(webhook_url=f"{live_server.url}/webhooks/openai", webhook_secret=secret)

    wait_for(lambda: fake_openai.webhooks, timeout=10, what="the fake's webhook")

    [delivery] = fake_openai.webhooks
    assert (delivery["event"], delivery["status"]) == ("batch.completed", 200)
    run_queued()
    assert BatchRequest.objects.get().status == BatchRequest.Status.COMPLETED


def test_purge_forgets_webhook_ids_after_a_day(running):
    from datetime import timedelta

    from django.utils import timezone

    OpenAIWebhook.objects.create(event_id="evt_old", type="batch.completed")
    OpenAIWebhook.objects.filter(pk="evt_old").update(
        received_at=timezone.now() - timedelta(days=2)
    )
    OpenAIWebhook.objects.create(event_id="evt_new", type="batch.completed")

    assert "1 old webhook ids pruned" in tasks.purge()
    assert list(OpenAIWebhook.objects.values_list("pk", flat=True)) == ["evt_new"]


def test_the_admin_shows_when_the_last_webhook_came(admin_client, client, running, secret):
    assert "No webhook yet" in admin_client.get("/admin/batches_app/batch/").content.decode()
    deliver(client, event(running.upstream_id), secret)
    page = admin_client.get("/admin/batches_app/batch/").content.decode()
    assert "Last webhook from OpenAI: 0s ago" in page


def test_register_webhook_prints_the_secret_once_and_openai_then_signs_with_it(
    live_server, post, fake_openai, settings, caplog
):
    out, err = StringIO(), StringIO()
    url = f"{live_server.url}/webhooks/openai"

    call_command("register_webhook", url, stdout=out, stderr=err)

    secret = out.getvalue().strip()
    assert secret.startswith("whsec_")
    assert secret not in err.getvalue() and secret not in caplog.text
    settings.OPENAI_WEBHOOK_SECRET = secret
    settings.POLL_INTERVAL, settings.BATCH_MAX_WAIT = 3600, 0
    assert post("/v1/chat/completions", CHAT).status_code == 422
    tasks.flush()
    wait_for(lambda: fake_openai.webhooks, timeout=10, what="the fake's webhook")
    assert fake_openai.webhooks[0]["status"] == 200
    assert queued_tasks() == [
        ("batches_app.tasks.batch_refresh", (Batch.objects.get().upstream_id,))
    ]


def test_register_webhook_wants_the_proxys_endpoint(fake_openai):
    with pytest.raises(CommandError, match="/webhooks/openai"):
        call_command("register_webhook", "https://proxy.example.com/hooks")
