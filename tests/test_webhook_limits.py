"""Completion webhooks against hostile receivers: a delivery is bounded in time and in bytes
read, a URL's token never shows, and slow receivers hold at most one scheduler worker."""

import logging

import pytest

from batches_app.leases import run_lease
from requests_app import webhooks
from requests_app.models import WebhookAttempt, WebhookDelivery

from .engine import cycle
from .webhook_receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True)
TOKEN = "tok-8c1f7e2a9d"


@pytest.fixture
def loopback_hooks(settings, fake_openai):
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = True
    settings.WEBHOOK_ALLOW_HTTP_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_TIMEOUT = 1.0  # per read: a drip of a byte every 0.2 s never trips it
    settings.WEBHOOK_DELIVERY_SECONDS = 2.0
    return settings


@pytest.fixture
def one_event(post):
    """Register `receiver` for every key, and finish one request for it to hear about."""

    def _make(receiver: Receiver, query: str = "") -> webhooks.IssuedEndpoint:
        issued = webhooks.webhook_endpoint_create(url=receiver.url + query)
        receiver.secret = issued.secret
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        assert post("/v1/chat/completions", body).status_code == 422
        cycle()
        return issued

    return _make


@pytest.mark.parametrize("drip_from", ["status", "body"])
def test_a_dripping_receiver_is_cut_off_at_the_delivery_deadline(
    loopback_hooks, one_event, drip_from
):
    receiver = Receiver(drip=0.2, drip_from=drip_from).start()
    try:
        one_event(receiver)
        webhooks.webhooks_deliver(budget=30)
    finally:
        receiver.stop()
    attempt = WebhookAttempt.objects.get()
    # The drip would take 100,000 * 0.2 s; the delivery stops at WEBHOOK_DELIVERY_SECONDS.
    assert attempt.duration_ms < 2000 + 3000
    assert receiver.sent < 100
    delivery = WebhookDelivery.objects.get()
    if drip_from == "status":
        assert "WEBHOOK_DELIVERY_SECONDS" in attempt.error
        assert delivery.status == WebhookDelivery.Status.PENDING  # retried later
    else:
        # The status came in time: delivered, whatever the body does after it.
        assert (attempt.response_status, attempt.error) == (200, "")
        assert delivery.status == WebhookDelivery.Status.DELIVERED


def test_a_huge_error_answer_is_not_read_beyond_its_start(loopback_hooks, one_event):
    receiver = Receiver(status=500, answer_bytes=400_000_000).start()
    try:
        one_event(receiver)
        webhooks.webhooks_deliver(budget=30)
    finally:
        receiver.stop()
    attempt = WebhookAttempt.objects.get()
    assert attempt.response_status == 500
    assert attempt.response_body == "e" * 1000
    assert attempt.error == "The receiver answered HTTP 500."
    # What the kernel's buffers took before the proxy closed the connection, not 400 MB.
    assert receiver.sent < 50_000_000


def test_a_urls_query_string_shows_nowhere(loopback_hooks, one_event, admin_client, caplog):
    receiver = Receiver().start()
    receiver.stop()  # nothing listens there any more: the error names the URL
    issued = one_event(receiver, query=f"?token={TOKEN}")
    with caplog.at_level(logging.DEBUG):
        report = webhooks.webhooks_deliver(budget=30)
    assert report.failed == 1
    attempt = WebhookAttempt.objects.get()
    assert "ConnectionError" in attempt.error and TOKEN not in attempt.error
    assert "failed" in caplog.text and TOKEN not in caplog.text
    delivery = WebhookDelivery.objects.get()
    pages = [
        admin_client.get("/admin/requests_app/webhookendpoint/"),
        admin_client.get(f"/admin/requests_app/webhookendpoint/{issued.endpoint.pk}/change/"),
        admin_client.get("/admin/requests_app/webhookdelivery/"),
        admin_client.get(f"/admin/requests_app/webhookdelivery/{delivery.pk}/change/"),
    ]
    for page in pages:
        assert page.status_code == 200
        assert TOKEN not in page.content.decode()
    assert "/hook?…" in pages[0].content.decode()


def test_one_delivery_run_at_a_time_so_receivers_hold_one_worker_at_most(loopback_hooks, one_event):
    receiver = Receiver().start()
    try:
        one_event(receiver)
        with run_lease("webhooks") as got:
            assert got
            assert webhooks.webhooks_deliver(budget=30) is None  # another run is sending
        assert WebhookAttempt.objects.count() == 0
        assert webhooks.webhooks_deliver(budget=30).delivered == 1
    finally:
        receiver.stop()
