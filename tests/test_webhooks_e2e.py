"""Completion webhooks over real HTTP: the official SDK -> a live proxy -> the fake OpenAI, and
the proxy -> a real receiver on loopback that is down for part of the job."""

import time
from concurrent.futures import ThreadPoolExecutor
from io import StringIO

import openai
import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import Q

from requests_app import webhooks
from requests_app.models import BatchRequest, WebhookDelivery, WebhookEvent

from .engine import cycle
from .webhook_receiver import Receiver

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def ask_pending(sdk, texts) -> set[str]:
    def ask(text: str) -> str:
        with pytest.raises(openai.UnprocessableEntityError) as pending:
            sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
            )
        return pending.value.response.headers["x-batch-request-id"]

    with ThreadPoolExecutor(8) as pool:
        return set(pool.map(ask, texts))


def deliver_until_done(seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    undelivered = WebhookEvent.objects.filter(Q(delivery=None) | ~Q(delivery__status="delivered"))
    while undelivered.exists():
        assert time.monotonic() < deadline, "deliveries still pending"
        webhooks.webhooks_deliver(budget=10)
        time.sleep(0.05)


def test_every_request_of_a_500_request_job_reaches_a_receiver_that_was_down_mid_job(
    sdk, api_key, settings
):
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = True
    settings.WEBHOOK_ALLOW_HTTP_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_BACKOFF = 0.05
    settings.WEBHOOK_BACKOFF_CAP = 0.2
    settings.WEBHOOK_MAX_EVENTS = 50
    receiver = Receiver().start()
    out = StringIO()
    call_command(
        "add_webhook", receiver.url, "--key", api_key[0].name, stdout=out, stderr=StringIO()
    )
    receiver.secret = out.getvalue().strip()
    try:
        first = ask_pending(sdk, [f"first half {i}" for i in range(250)])
        cycle()
        deliver_until_done()
        assert {e["data"]["id"] for e in receiver.events()} == first

        # The receiver goes down; the second half of the job finishes meanwhile.
        port = receiver.port
        receiver.stop()
        second = ask_pending(sdk, [f"second half {i}" for i in range(250)])
        cycle()
        for _ in range(3):
            report = webhooks.webhooks_deliver(budget=10)
            # One failed try per run for a down endpoint, whatever is waiting for it.
            assert (report.delivered, report.failed) == (0, 1)
            time.sleep(0.25)  # past the (test-short) back-off
        waiting = WebhookDelivery.objects.filter(status="pending")
        assert waiting.count() == 5
        assert sum(d.attempts for d in waiting) == 3

        restarted = Receiver(secret=receiver.secret, port=port).start()
        try:
            deliver_until_done()
        finally:
            restarted.stop()
    finally:
        receiver.stop()

    assert receiver.rejected == [] and restarted.rejected == []
    got = [e["data"] for e in receiver.events() + restarted.events()]
    assert {d["id"] for d in got} == first | second
    assert all(d["status"] == "completed" and d["response_status"] == 200 for d in got)
    assert BatchRequest.objects.filter(status="completed").count() == 500
    # Each POST held a bounded list of events, not one each.
    assert len(receiver.posts) + len(restarted.posts) == 10


def test_two_delivery_runs_at_once_send_each_delivery_once(sdk, api_key, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = True
    settings.WEBHOOK_ALLOW_HTTP_HOSTS = ["127.0.0.1"]
    settings.WEBHOOK_MAX_EVENTS = 2
    receiver = Receiver(delay=0.2).start()
    try:
        receiver.secret = webhooks.webhook_endpoint_create(url=receiver.url).secret
        asked = ask_pending(sdk, [f"raced {i}" for i in range(12)])
        cycle()
        webhooks.webhook_deliveries_group()

        def run(_):
            webhooks.webhooks_deliver(budget=20)
            connection.close()

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(run, range(2)))
    finally:
        receiver.stop()

    ids = [headers["webhook-id"] for headers, _ in receiver.posts]
    assert len(ids) == 6 and len(set(ids)) == 6
    assert {e["data"]["id"] for e in receiver.events()} == asked
