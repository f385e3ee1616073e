"""Proxy keys made by operators: shown once, stored hashed, revoked and rotated at once."""

import hashlib
import html
import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.urls import reverse

from requests_app.keys import api_key_create, api_key_revoke, api_key_rotate
from requests_app.models import ApiKey, BatchRequest
from requests_app.operators import superuser_ensure

from .cockpit import chat, send

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status


def status_with(client, secret: str) -> int:
    response = client.post(
        "/v1/chat/completions",
        data='{"model": "gpt-4o-mini", "input": "ping"}',
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    return response.status_code


def test_created_key_works_and_only_its_hash_is_stored(client):
    issued = api_key_create(name="data team")
    assert status_with(client, issued.secret) == 422
    row = ApiKey.objects.get(pk=issued.key.pk)
    assert row.key_hash == hashlib.sha256(issued.secret.encode()).hexdigest()
    stored = " ".join(str(v) for v in ApiKey.objects.values_list().get(pk=row.pk))
    assert issued.secret not in stored
    assert row.prefix == issued.secret[:8]


def test_revoked_key_gets_401_and_revoking_twice_is_harmless(client):
    issued = api_key_create(name="leaver")
    assert api_key_revoke(key_id=issued.key.pk).revoked is True
    assert api_key_revoke(key_id=issued.key.pk).revoked is False
    assert status_with(client, issued.secret) == 401


def test_rotated_key_keeps_its_requests_and_drops_its_old_secret(client):
    issued = api_key_create(name="rotating")
    request_id = send(client, issued.secret, chat("mine"))

    rotated = api_key_rotate(key_id=issued.key.pk)

    assert rotated.key.pk == issued.key.pk
    assert status_with(client, issued.secret) == 401
    again = client.post(
        "/v1/chat/completions",
        data='{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "mine"}]}',
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {rotated.secret}",
    )
    assert again["X-Batch-Request-Id"] == request_id  # same tenant, same request


def test_environment_key_keeps_working_and_cannot_be_rotated(client, settings):
    secret = "env-proxy-key-for-tests"
    settings.ENV_API_KEY_HASHES = frozenset({hashlib.sha256(secret.encode()).hexdigest()})
    assert status_with(client, secret) == 422
    key = ApiKey.objects.get(from_env=True)
    with pytest.raises(ValueError, match="environment"):
        api_key_rotate(key_id=key.pk)
    assert status_with(client, secret) == 422
    api_key_revoke(key_id=key.pk)
    assert status_with(client, secret) == 401


def test_create_api_key_command_prints_the_secret_once(client):
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_key", "cli team", stdout=out, stderr=err)
    secret = out.getvalue().strip()
    assert secret.startswith("bp-")
    assert "shown only now" in err.getvalue()
    assert status_with(client, secret) == 422
    assert (
        ApiKey.objects.get(name="cli team").key_hash == hashlib.sha256(secret.encode()).hexdigest()
    )


def test_rotate_and_revoke_commands(client):
    issued = api_key_create(name="ops")
    out = io.StringIO()
    call_command("rotate_api_key", str(issued.key.pk), stdout=out, stderr=io.StringIO())
    new_secret = out.getvalue().strip()
    assert status_with(client, new_secret) == 422
    assert status_with(client, issued.secret) == 401

    out = io.StringIO()
    call_command("revoke_api_key", new_secret[:8], stdout=out)
    assert "revoked; 1 queued requests cancelled." in out.getvalue()
    assert status_with(client, new_secret) == 401
    with pytest.raises(CommandError):
        call_command("revoke_api_key", "no-such-key")


def test_admin_add_shows_the_secret_once(admin_client, client):
    response = admin_client.post(reverse("admin:requests_app_apikey_add"), {"name": "web team"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    page = html.unescape(response.content.decode())
    key = ApiKey.objects.get(name="web team")
    secret = page.split('id="api-key-secret"')[1].split(">", 1)[1].split("<", 1)[0]
    assert hashlib.sha256(secret.encode()).hexdigest() == key.key_hash
    assert status_with(client, secret) == 422

    change = admin_client.get(reverse("admin:requests_app_apikey_change", args=[key.pk]))
    assert secret not in change.content.decode()


def test_admin_rotate_and_revoke_actions(admin_client, client):
    issued = api_key_create(name="acted on")
    changelist = reverse("admin:requests_app_apikey_changelist")
    rotated = admin_client.post(
        changelist, {"action": "rotate", "_selected_action": [issued.key.pk]}
    )
    page = rotated.content.decode()
    secret = page.split('id="api-key-secret"')[1].split(">", 1)[1].split("<", 1)[0]
    assert status_with(client, secret) == 422
    assert status_with(client, issued.secret) == 401

    for expected in (
        # The call above left a request queued: it is never sent.
        "1 keys revoked; 0 were already revoked. 1 queued requests cancelled.",
        "0 keys revoked; 1 were already revoked. 0 queued requests cancelled.",
    ):
        response = admin_client.post(
            changelist, {"action": "revoke", "_selected_action": [issued.key.pk]}, follow=True
        )
        assert [str(m) for m in response.context["messages"]] == [expected]
    assert status_with(client, secret) == 401


def test_key_page_shows_its_usage(admin_client, client, fake_openai):
    from .engine import cycle

    issued = api_key_create(name="measured")
    send(client, issued.secret, chat("a" * 4000))  # 1000 in, 1002 out
    cycle()
    page = admin_client.get(
        reverse("admin:requests_app_apikey_change", args=[issued.key.pk])
    ).content.decode()
    assert "1 request stored" in page
    assert "1000 tokens in, 1002 tokens out" in page
    # (1000 * 0.15 + 1002 * 0.60) / 1M / 2
    assert "$0.00038 spent" in page


def test_superuser_from_environment_is_created_once(monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "root")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "s3cret-pass")
    monkeypatch.setenv("DJANGO_SUPERUSER_EMAIL", "root@example.com")
    assert superuser_ensure() is True
    user = get_user_model().objects.get(username="root")
    assert user.is_superuser and user.check_password("s3cret-pass")
    user.set_password("changed-later")
    user.save()
    assert superuser_ensure() is False
    assert get_user_model().objects.get(username="root").check_password("changed-later")


def test_no_superuser_without_the_environment(monkeypatch):
    monkeypatch.delenv("DJANGO_SUPERUSER_USERNAME", raising=False)
    monkeypatch.delenv("DJANGO_SUPERUSER_PASSWORD", raising=False)
    assert superuser_ensure() is False
    assert not get_user_model().objects.exists()


def test_a_key_from_the_environment_shows_its_name_and_last_four_only(
    settings, client, admin_client
):
    from requests_app.models import hash_key

    secret = "my-proxy-key-9z8y"
    settings.ENV_API_KEY_HASHES = frozenset({hash_key(secret)})
    response = client.post(
        "/v1/embeddings",
        data='{"model": "e", "input": "x"}',
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 422
    page = admin_client.get("/admin/requests_app/apikey/").content.decode()
    assert "BATCH_SERVER_API_KEY" in page and "…9z8y" in page
    for shown in range(5, len(secret)):  # no longer piece of the secret is anywhere
        assert secret[:shown] not in page and secret[-shown:] not in page


# --- What revoking does to a key's requests ------------------------------------------------


def test_revoking_a_key_cancels_its_queued_requests_and_they_are_never_sent(
    client, api_key, other_key, fake_openai
):
    from batches_app.models import Batch

    from .engine import cycle

    mine = send(client, api_key[1], chat("mine, queued"))
    theirs = send(client, other_key[1], chat("theirs, queued"))
    done = api_key_revoke(key_id=api_key[0].pk)
    assert (done.revoked, done.cancelled) == (True, 1)
    request = BatchRequest.objects.get(pk=mine)
    assert (request.status, request.error_code) == (Status.CANCELLED, "key_revoked")
    assert request.finished_at is not None

    cycle()
    sent = [line["custom_id"] for line in fake_openai.submitted_lines()]
    assert sent == [theirs]
    assert Batch.objects.count() == 1
    # An operator's requeue does not send them either.
    call = reverse("admin:requests_app_batchrequest_changelist")
    admin = get_user_model().objects.create_superuser("boss", "b@example.com", "pw")
    client.force_login(admin)
    client.post(call, {"action": "requeue", "_selected_action": [mine]})
    assert BatchRequest.objects.get(pk=mine).status == Status.CANCELLED


def test_a_revoked_keys_sent_requests_end_upstream_and_are_served_to_no_one(
    client, api_key, fake_openai
):
    """Already in a batch upstream: left to end there (their batch may hold other keys'
    requests), stored, but neither its callers (401) nor its webhook receivers ever get them;
    the operator's webhook of every key hears of them as of any request."""
    from batches_app import services
    from requests_app.models import WebhookEndpoint, WebhookEvent

    from .engine import cycle

    own = WebhookEndpoint.objects.create(url="https://tenant.example/h", api_key=api_key[0])
    everyone = WebhookEndpoint.objects.create(url="https://ops.example/h")
    sent = send(client, api_key[1], chat("claimed into a batch before the revocation"))
    services.batch_flush(force=True)
    assert BatchRequest.objects.get(pk=sent).status == Status.SUBMITTED

    done = api_key_revoke(key_id=api_key[0].pk)
    assert (done.revoked, done.cancelled) == (True, 0)
    assert BatchRequest.objects.get(pk=sent).status == Status.SUBMITTED
    own.refresh_from_db()
    assert own.is_active is False

    cycle()
    assert BatchRequest.objects.get(pk=sent).status == Status.COMPLETED
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api_key[1]}"}
    assert client.get(f"/v1/batch_requests/{sent}", **auth).status_code == 401
    assert status_with(client, api_key[1]) == 401
    events = WebhookEvent.objects.filter(request_id=sent)
    assert set(events.values_list("endpoint_id", flat=True)) == {everyone.pk}


def test_revoking_again_cancels_requests_queued_since(client, api_key):
    assert api_key_revoke(key_id=api_key[0].pk).revoked
    straggler = BatchRequest.objects.create(
        api_key=api_key[0],
        endpoint="/v1/chat/completions",
        model="gpt-4o-mini",
        body='{"model": "gpt-4o-mini"}',
        body_bytes=24,
        fingerprint="inserted by a call racing the revocation",
    )
    done = api_key_revoke(key_id=api_key[0].pk)
    assert (done.revoked, done.cancelled) == (False, 1)
    assert BatchRequest.objects.get(pk=straggler.pk).status == Status.CANCELLED
