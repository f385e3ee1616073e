"""Completion webhooks: the outbox written where requests finish, signed batched delivery,
back-off, the admin's resend, the operator commands, and the URL safety rules."""

import json
import logging
import socket
from datetime import timedelta
from io import StringIO

import openai
import pytest
import requests
import responses
from django.core.management import CommandError, call_command
from django.utils import timezone
from standardwebhooks import Webhook

from batches_app import services
from requests_app import webhooks
from requests_app.models import (
    BatchRequest,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

from .conftest import make_key
from .engine import cycle
from .webhook_receiver import Receiver

pytestmark = pytest.mark.django_db
HOOK = "https://hooks.example.com/batchproxy"
Status = BatchRequest.Status


def chat(text: str) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


@pytest.fixture
def enqueue(post):
    def _enqueue(text: str, secret: str | None = None) -> str:
        response = post("/v1/chat/completions", chat(text), secret=secret)
        assert response.status_code == 422, response.content
        return response["X-Batch-Request-Id"]

    return _enqueue


@pytest.fixture
def hook_settings(settings):
    """Delivery to a name that does not resolve here: `responses` answers for it."""
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = True
    settings.WEBHOOK_BACKOFF = 10
    settings.WEBHOOK_BACKOFF_CAP = 3600
    return settings


def add_endpoint(url: str = HOOK, **kwargs) -> webhooks.IssuedEndpoint:
    return webhooks.webhook_endpoint_create(url=url, **kwargs)


def verify(call, secret: str) -> dict:
    """Check a POST's signature with the OpenAI SDK's Standard Webhooks verifier."""
    verifier = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    verifier.webhooks.verify_signature(call.request.body, call.request.headers, secret=secret)
    return json.loads(call.request.body)


def deliver_all() -> webhooks.DeliveryReport:
    return webhooks.webhooks_deliver(budget=30)


# --- The outbox ------------------------------------------------------------------------------


def test_finished_requests_get_one_event_per_endpoint_that_covers_their_key(
    enqueue, api_key, other_key, fake_openai, hook_settings
):
    mine = add_endpoint(api_key=api_key[0]).endpoint
    everyone = add_endpoint(url=HOOK + "/all").endpoint
    my_ids = {enqueue(f"mine {i}") for i in range(3)}
    other_ids = {enqueue(f"other {i}", secret=other_key[1]) for i in range(2)}
    assert not WebhookEvent.objects.exists()  # nothing has finished yet

    cycle()

    def requests_of(endpoint):
        return {str(pk) for pk in endpoint.events.values_list("request_id", flat=True)}

    assert requests_of(mine) == my_ids
    assert requests_of(everyone) == my_ids | other_ids
    assert set(WebhookEvent.objects.values_list("type", "response_status")) == {
        ("batch_request.completed", 200)
    }


def test_no_endpoint_no_event(enqueue, fake_openai):
    enqueue("nobody listens")
    cycle()
    assert BatchRequest.objects.get().status == Status.COMPLETED
    assert not WebhookEvent.objects.exists()


def test_requests_failed_for_good_and_cancelled_get_their_own_event_types(
    enqueue, fake_openai, hook_settings
):
    hook_settings.MAX_ATTEMPTS = 1
    endpoint = add_endpoint().endpoint
    failed = enqueue("fails")
    fake_openai.configure(fail_batches=1)
    cycle()
    assert BatchRequest.objects.get(pk=failed).status == Status.FAILED

    cancelled = enqueue("cancelled")
    fake_openai.configure(stall_after_lines=0)
    services.batch_flush(force=True)
    services.batches_advance(force=True)
    batch = BatchRequest.objects.get(pk=cancelled).batch
    assert services.batch_cancel(batch_id=batch.pk, requeue=False)
    services.batches_advance(force=True)

    assert BatchRequest.objects.get(pk=cancelled).status == Status.CANCELLED
    assert set(endpoint.events.values_list("request_id", "type")) == {
        (BatchRequest.objects.get(pk=failed).pk, "batch_request.failed"),
        (BatchRequest.objects.get(pk=cancelled).pk, "batch_request.cancelled"),
    }


def test_requests_over_the_token_limit_get_their_failed_event(enqueue, fake_openai, hook_settings):
    """Both ways a request fails for its size: at the flush (over a configured limit), and
    after the upstream refused it alone (over the limit its refusal states)."""
    from batches_app import capacity

    hook_settings.CAPACITY_CACHE_SECONDS = 0
    capacity._waiting_cache = (0.0, frozenset())
    endpoint = add_endpoint().endpoint
    hook_settings.QUEUE_LIMITS = {"gpt-4o-mini": 50}
    at_flush = enqueue("word " * 400)
    services.batch_flush(force=True)
    hook_settings.QUEUE_LIMITS = {}
    fake_openai.configure(enqueued_token_limits={"gpt-4o-mini": 100})
    refused = enqueue("word " * 1000)
    for _ in range(5):
        BatchRequest.objects.update(not_before=None)
        cycle()

    assert set(BatchRequest.objects.values_list("status", "error_code")) == {
        (Status.FAILED, "token_limit_exceeded")
    }
    assert sorted(endpoint.events.values_list("request_id", "type")) == sorted(
        [
            (BatchRequest.objects.get(pk=at_flush).pk, "batch_request.failed"),
            (BatchRequest.objects.get(pk=refused).pk, "batch_request.failed"),
        ]
    )


def test_a_request_requeued_for_another_attempt_gets_no_event(enqueue, fake_openai, hook_settings):
    endpoint = add_endpoint().endpoint
    enqueue("retried")
    fake_openai.configure(fail_batches=1)
    cycle()
    assert BatchRequest.objects.get().status == Status.QUEUED
    assert not endpoint.events.exists()
    cycle()
    assert list(endpoint.events.values_list("type", flat=True)) == ["batch_request.completed"]


# --- Delivery --------------------------------------------------------------------------------


@responses.activate
def test_many_finished_requests_go_in_few_signed_posts(enqueue, fake_openai, hook_settings):
    hook_settings.WEBHOOK_MAX_EVENTS = 2
    issued = add_endpoint()
    ids = {enqueue(f"q{i}") for i in range(5)}
    cycle()
    responses.post(HOOK, status=204)

    report = deliver_all()

    assert (report.grouped, report.delivered, report.failed) == (3, 3, 0)
    assert len(responses.calls) == 3
    payloads = [verify(call, issued.secret) for call in responses.calls]
    events = [event for payload in payloads for event in payload["data"]]
    assert [len(p["data"]) for p in payloads] == [2, 2, 1]
    assert {e["data"]["id"] for e in events} == ids and len(events) == 5
    event = events[0]
    assert event["type"] == "batch_request.completed"
    assert event["data"]["endpoint"] == "/v1/chat/completions"
    assert event["data"]["model"] == "gpt-4o-mini"
    assert (event["data"]["status"], event["data"]["response_status"]) == ("completed", 200)
    assert "response" not in event["data"]  # bodies only when the endpoint asks for them
    headers = responses.calls[0].request.headers
    assert headers["webhook-id"].startswith("msg_")
    assert headers["webhook-signature"].startswith("v1,")
    # The Standard Webhooks library itself accepts it too.
    Webhook(issued.secret).verify(responses.calls[0].request.body, dict(headers))
    assert WebhookDelivery.objects.filter(status="delivered").count() == 3
    assert deliver_all().delivered == 0  # nothing is sent twice


@responses.activate
def test_endpoint_with_bodies_gets_the_answers_bounded_in_bytes(
    enqueue, fake_openai, hook_settings
):
    issued = add_endpoint(include_body=True)
    for i in range(3):
        enqueue(f"with body {i}")
    cycle()
    body_size = len(BatchRequest.objects.first().response_body)
    # Room for two bodies per POST, not three.
    hook_settings.WEBHOOK_MAX_BYTES = 2 * body_size + 10
    responses.post(HOOK, status=200)

    deliver_all()

    payloads = [verify(call, issued.secret) for call in responses.calls]
    assert [len(p["data"]) for p in payloads] == [2, 1]
    answers = {
        e["data"]["response"]["choices"][0]["message"]["content"]
        for p in payloads
        for e in p["data"]
    }
    assert answers == {f"echo: with body {i}" for i in range(3)}


@responses.activate
def test_failed_delivery_is_retried_with_doubling_back_off_then_delivered(
    enqueue, fake_openai, hook_settings
):
    add_endpoint()
    enqueue("retry me")
    cycle()
    responses.post(HOOK, status=503, body="busy")
    responses.post(HOOK, status=500)
    responses.post(HOOK, status=200)

    before = timezone.now()
    assert deliver_all().failed == 1
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "pending" and delivery.attempts == 1
    first_wait = (delivery.next_attempt_at - before).total_seconds()
    assert 10 <= first_wait < 12
    assert deliver_all().failed == 0  # not due yet: nothing sent

    WebhookDelivery.objects.update(next_attempt_at=timezone.now())
    retry_at = timezone.now()
    assert deliver_all().failed == 1
    delivery.refresh_from_db()
    assert 20 <= (delivery.next_attempt_at - retry_at).total_seconds() < 22

    WebhookDelivery.objects.update(next_attempt_at=timezone.now())
    assert deliver_all().delivered == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("delivered", 3)
    attempts = list(delivery.attempt_log.order_by("started_at"))
    assert [a.response_status for a in attempts] == [503, 500, 200]
    assert attempts[0].response_body == "busy"
    assert attempts[0].error == "The receiver answered HTTP 503."
    # Every attempt carried the same webhook-id, so the receiver can de-duplicate.
    assert len({call.request.headers["webhook-id"] for call in responses.calls}) == 1


@responses.activate
def test_delivery_failing_past_its_retry_window_is_given_up_and_can_be_resent(
    enqueue, fake_openai, hook_settings
):
    add_endpoint()
    enqueue("never heard")
    cycle()
    responses.post(HOOK, status=500)
    deliver_all()
    WebhookDelivery.objects.update(
        next_attempt_at=timezone.now(), give_up_at=timezone.now() - timedelta(seconds=1)
    )
    deliver_all()
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == "failed"
    assert deliver_all().failed == 0  # given up: not tried again

    responses.replace(responses.POST, HOOK, status=200)
    assert webhooks.webhook_deliveries_resend(delivery_ids=[delivery.pk]) == 1
    assert deliver_all().delivered == 1
    delivery.refresh_from_db()
    assert delivery.status == "delivered" and delivery.give_up_at > timezone.now()


@responses.activate
def test_a_redirect_is_not_followed(enqueue, fake_openai, hook_settings):
    add_endpoint()
    enqueue("redirected")
    cycle()
    responses.post(HOOK, status=302, headers={"Location": "http://169.254.169.254/latest"})
    elsewhere = responses.post("http://169.254.169.254/latest", status=200)

    assert deliver_all().failed == 1

    assert elsewhere.call_count == 0
    attempt = WebhookAttempt.objects.get()
    assert attempt.response_status == 302 and "Redirects are not followed" in attempt.error


@responses.activate
def test_only_a_2xx_counts_as_delivered(enqueue, fake_openai, hook_settings):
    add_endpoint()
    enqueue("not modified")
    cycle()
    responses.post(HOOK, status=304)
    assert deliver_all().failed == 1
    assert WebhookDelivery.objects.get().status == "pending"


@responses.activate
def test_a_down_endpoint_costs_one_attempt_per_run_and_never_blocks_ingest(
    enqueue, fake_openai, hook_settings
):
    hook_settings.WEBHOOK_MAX_EVENTS = 1
    add_endpoint()
    for i in range(3):
        enqueue(f"down {i}")
    responses.post(HOOK, body=requests.ConnectionError("refused"))
    cycle()  # ingest only writes rows: nothing is sent from here
    assert len(responses.calls) == 0

    report = deliver_all()

    assert (report.grouped, report.failed, len(responses.calls)) == (3, 1, 1)


def test_the_secret_is_never_logged(enqueue, fake_openai, settings, caplog):
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = True
    settings.WEBHOOK_ALLOW_HTTP_HOSTS = ["127.0.0.1"]
    issued = add_endpoint(url="http://127.0.0.1:9/closed")  # nothing listens on port 9
    enqueue("logged?")
    cycle()
    with caplog.at_level(logging.DEBUG):
        assert deliver_all().failed == 1
    assert "failed" in caplog.text
    assert issued.secret not in caplog.text
    assert issued.secret[len("whsec_") :] not in caplog.text
    assert issued.secret not in WebhookAttempt.objects.get().error


# --- Where it may send -----------------------------------------------------------------------


def test_plain_http_needs_an_allowed_host(settings):
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = True
    with pytest.raises(webhooks.WebhookURLError, match="use https"):
        add_endpoint(url="http://hooks.example.com/x")
    settings.WEBHOOK_ALLOW_HTTP_HOSTS = ["hooks.example.com"]
    assert add_endpoint(url="http://hooks.example.com/x").endpoint.pk
    with pytest.raises(webhooks.WebhookURLError):
        add_endpoint(url="ftp://hooks.example.com/x")


def test_plain_http_to_loopback_is_allowed_by_default_but_loopback_itself_is_not(settings):
    with pytest.raises(webhooks.WebhookURLError, match="private address"):
        add_endpoint(url="http://127.0.0.1:8000/hook")
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = True
    assert add_endpoint(url="http://127.0.0.1:8000/hook").endpoint.pk
    assert add_endpoint(url="http://[::1]:8000/hook").endpoint.pk
    with pytest.raises(webhooks.WebhookURLError, match="use https"):
        add_endpoint(url="http://10.0.0.1:8000/hook")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.10",
        "169.254.169.254",
        "::1",
        "fd00:ec2::254",
        "100.64.0.1",
    ],
)
def test_private_loopback_link_local_and_metadata_addresses_are_refused(settings, address):
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(webhooks.WebhookURLError, match="private address"):
        add_endpoint(url=f"https://{host}/hook")
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = True
    assert add_endpoint(url=f"https://{host}/hook").endpoint.pk


@pytest.fixture
def dns(monkeypatch):
    """A resolver under the test's control: name -> address, everything else as usual."""
    table: dict[str, str] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in table:
            return real(table[host], port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


def test_a_name_that_resolves_to_a_private_address_later_is_refused_at_delivery(
    enqueue, fake_openai, settings, dns
):
    """DNS can change after registration: the check runs again, on the address connected to."""
    receiver = Receiver().start()
    try:
        settings.WEBHOOK_ALLOW_HTTP_HOSTS = ["hooks.example.com"]
        dns["hooks.example.com"] = "93.184.216.34"  # public when registered
        issued = add_endpoint(url=f"http://hooks.example.com:{receiver.port}/hook")
        receiver.secret = issued.secret
        enqueue("rebound")
        cycle()
        dns["hooks.example.com"] = "127.0.0.1"  # and now it points inside

        assert deliver_all().failed == 1

        assert "private address" in WebhookAttempt.objects.get().error
        assert receiver.posts == []
        # The operator allows private addresses: the same delivery now arrives.
        settings.WEBHOOK_ALLOW_PRIVATE_URLS = True
        WebhookDelivery.objects.update(next_attempt_at=timezone.now())
        assert deliver_all().delivered == 1
        assert [e["data"]["status"] for e in receiver.events()] == ["completed"]
    finally:
        receiver.stop()


# --- Operator commands -----------------------------------------------------------------------


def test_add_webhook_prints_the_secret_once_and_remove_webhook_removes_it(settings, api_key):
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = True
    out, err = StringIO(), StringIO()
    call_command("add_webhook", HOOK, "--key", api_key[0].name, stdout=out, stderr=err)
    secret = out.getvalue().strip()
    endpoint = WebhookEndpoint.objects.get()
    assert secret.startswith("whsec_") and secret == endpoint.secret
    assert endpoint.api_key == api_key[0] and not endpoint.include_body
    assert secret not in err.getvalue()
    Webhook(secret)  # a valid Standard Webhooks secret

    call_command("add_webhook", HOOK + "/2", "--key", api_key[1][:8], "--include-body", stdout=out)
    assert WebhookEndpoint.objects.get(url=HOOK + "/2").include_body

    removed = StringIO()
    call_command("remove_webhook", str(endpoint.pk), stdout=removed)
    assert f"Removed webhook {endpoint.pk}" in removed.getvalue()
    assert list(WebhookEndpoint.objects.values_list("url", flat=True)) == [HOOK + "/2"]


def test_add_webhook_refuses_a_private_url_and_an_unknown_key(db):
    with pytest.raises(CommandError, match="private address"):
        call_command("add_webhook", "https://127.0.0.1/hook", stdout=StringIO())
    with pytest.raises(CommandError, match="No single key"):
        call_command("add_webhook", HOOK, "--key", "nobody", stdout=StringIO())
    assert not WebhookEndpoint.objects.exists()


def test_webhook_for_every_key_when_no_key_is_given(settings, db):
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = True
    call_command("add_webhook", HOOK, stdout=StringIO(), stderr=StringIO())
    assert WebhookEndpoint.objects.get().api_key is None
    make_key("later")  # a key made afterwards is covered too: nothing to add per key


# --- The admin -------------------------------------------------------------------------------


@responses.activate
def test_admin_shows_attempts_and_resends(admin_client, enqueue, fake_openai, hook_settings):
    add_endpoint()
    enqueue("admin")
    cycle()
    responses.post(HOOK, status=500, body="receiver bug")
    deliver_all()
    delivery = WebhookDelivery.objects.get()

    page = admin_client.get(f"/admin/requests_app/webhookdelivery/{delivery.pk}/change/")
    assert page.status_code == 200
    assert b"receiver bug" in page.content and b"The receiver answered HTTP 500." in page.content

    listing = admin_client.get(f"/admin/requests_app/webhookdelivery/?q={delivery.message_id}")
    assert delivery.message_id.encode() in listing.content

    WebhookDelivery.objects.update(next_attempt_at=timezone.now() + timedelta(hours=1))
    response = admin_client.post(
        "/admin/requests_app/webhookdelivery/",
        {"action": "resend", "_selected_action": [str(delivery.pk)]},
        follow=True,
    )
    assert b"1 deliveries will be sent again" in response.content
    responses.replace(responses.POST, HOOK, status=200)
    assert deliver_all().delivered == 1


def test_admin_adds_an_endpoint_and_shows_its_secret_once(admin_client, settings, api_key):
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = True
    response = admin_client.post(
        "/admin/requests_app/webhookendpoint/add/",
        {"url": HOOK, "api_key": api_key[0].pk, "include_body": "on", "is_active": "on"},
    )
    endpoint = WebhookEndpoint.objects.get()
    assert response.status_code == 200
    assert endpoint.secret.encode() in response.content
    assert "no-store" in response["Cache-Control"]
    change = admin_client.get(f"/admin/requests_app/webhookendpoint/{endpoint.pk}/change/")
    assert endpoint.secret.encode() not in change.content

    settings.WEBHOOK_ALLOW_PRIVATE_URLS = False
    refused = admin_client.post(
        "/admin/requests_app/webhookendpoint/add/", {"url": "https://10.0.0.1/x"}
    )
    assert b"private address" in refused.content
    assert WebhookEndpoint.objects.count() == 1


@responses.activate
def test_purging_answers_leaves_their_events_alone_and_they_are_skipped(
    enqueue, fake_openai, hook_settings
):
    from django.db import connection
    from django.db.models.deletion import Collector

    add_endpoint()
    enqueue("purged before told")
    cycle()
    assert WebhookEvent.objects.count() == 1

    # Events must not make the purge load every request it deletes (bodies and all).
    assert Collector(using=connection.alias).can_fast_delete(BatchRequest.objects.all())

    assert services.requests_purge(now=timezone.now() + timedelta(days=30)) == 1
    assert WebhookEvent.objects.count() == 1  # no cascade: the purge did not look for it
    responses.post(HOOK, status=200)

    assert deliver_all().delivered == 1
    assert len(responses.calls) == 0  # nothing left to tell
    assert WebhookDelivery.objects.get().status == "delivered"


@responses.activate
def test_old_finished_deliveries_are_purged_with_their_events_and_attempts(
    enqueue, fake_openai, hook_settings
):
    from requests_app import tasks

    add_endpoint()
    enqueue("old news")
    cycle()
    responses.post(HOOK, status=200)
    deliver_all()
    assert tasks.webhooks_purge() == "0 webhook rows purged"  # delivered just now: kept

    WebhookDelivery.objects.update(delivered_at=timezone.now() - timedelta(days=8))
    assert tasks.webhooks_purge() != "0 webhook rows purged"
    assert not WebhookDelivery.objects.exists()
    assert not WebhookEvent.objects.exists() and not WebhookAttempt.objects.exists()


def test_nonsense_webhook_settings_fail_the_system_check(settings):
    from requests_app.checks import webhook_settings_check

    assert webhook_settings_check(None) == []
    settings.WEBHOOK_MAX_EVENTS = 0
    settings.WEBHOOK_BACKOFF_CAP = 1
    settings.WEBHOOK_RUN_SECONDS = 2000
    assert {e.id for e in webhook_settings_check(None)} == {
        "requests_app.E001",
        "requests_app.E002",
        "requests_app.E003",
    }


@responses.activate
def test_metrics_count_deliveries_by_status(client, enqueue, fake_openai, hook_settings):
    hook_settings.METRICS_PUBLIC = True
    add_endpoint()
    enqueue("measured")
    cycle()
    assert 'batchproxy_webhook_deliveries{status="new"} 1.0' in client.get("/metrics").text
    responses.post(HOOK, status=500)
    deliver_all()
    text = client.get("/metrics").text
    assert 'batchproxy_webhook_deliveries{status="pending"} 1.0' in text
    assert 'batchproxy_webhook_deliveries{status="new"} 0.0' in text


@responses.activate
def test_a_large_answer_kept_in_pieces_is_not_inlined_in_the_event(
    enqueue, fake_openai, hook_settings, monkeypatch
):
    from batches_app import outcomes

    hook_settings.RESPONSE_INLINE_BYTES = 100  # every answer is "large"
    monkeypatch.setattr(outcomes, "RESPONSE_CHUNK_CHARS", 64)
    issued = add_endpoint(include_body=True)
    enqueue("a big one")
    cycle()
    assert BatchRequest.objects.get().response_chunks > 0
    responses.post(HOOK, status=200)

    deliver_all()

    [event] = verify(responses.calls[0], issued.secret)["data"]
    assert event["data"]["response"] is None and event["data"]["response_omitted"] is True
    assert event["data"]["response_status"] == 200
