"""Secrets stay secret: the OpenAI key, proxy keys and the metrics token appear in no log line,
no answer, no admin page and no metric, through a full cycle with faults along the way."""

import logging

import httpx2
import openai
import pytest

from requests_app.models import ApiKey, BatchRequest, hash_key

from .engine import cycle

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ENV_SECRET = "env-proxy-key-7c1d2e9a0b"
METRICS_SECRET = "metrics-token-51f0c3aa"
LOGGERS = [
    None,
    "openai",
    "httpx",
    "httpx2",
    "django",
    "django.request",
    "django.server",
    "django_q",
    "batchproxy",
    "batchproxy.access",
    "batches_app",
    "requests_app",
    "ops_app",
]
CALLS = {
    "responses": lambda c: c.responses.create(model="gpt-4.1-mini", input="hush"),
    "chat": lambda c: c.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hush"}]
    ),
    "completions": lambda c: c.completions.create(model="gpt-3.5-turbo-instruct", prompt="hush"),
    "embeddings": lambda c: c.embeddings.create(model="text-embedding-3-small", input="hush"),
    "moderations": lambda c: c.moderations.create(model="omni-moderation-latest", input="hush"),
}


@pytest.fixture
def seen():
    """Everything the proxy said over HTTP: status lines, headers and bodies."""
    return []


@pytest.fixture
def http(seen):
    def keep(response: httpx2.Response) -> None:
        response.read()
        seen.append(f"{response.status_code} {dict(response.headers)} {response.text}")

    with httpx2.Client(event_hooks={"response": [keep]}) as client:
        yield client


def test_no_secret_in_logs_answers_admin_or_metrics_through_a_full_cycle(
    live_server, api_key, other_key, fake_openai, settings, caplog, http, seen, admin_client
):
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    settings.ENV_API_KEY_HASHES = frozenset({hash_key(ENV_SECRET)})
    settings.METRICS_TOKEN = METRICS_SECRET
    settings.LOG_REQUESTS = True
    upstream_secret = settings.OPENAI_API_KEY
    secrets = [upstream_secret, api_key[1], other_key[1], ENV_SECRET, METRICS_SECRET]

    def sdk(secret: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{live_server.url}/v1", api_key=secret, http_client=http, max_retries=0
        )

    tenants = [sdk(api_key[1]), sdk(other_key[1]), sdk(ENV_SECRET)]
    for client in tenants:
        for call in CALLS.values():
            with pytest.raises(openai.UnprocessableEntityError):
                call(client)
    # The wrong secrets, and bad input: the error answers must not echo what was sent.
    for wrong in (upstream_secret, api_key[1] + "x", "Bearer " + other_key[1]):
        with pytest.raises(openai.AuthenticationError):
            CALLS["chat"](sdk(wrong))
    with pytest.raises(openai.BadRequestError):
        tenants[0].chat.completions.create(model="gpt-4o-mini", messages=api_key[1])

    # A full cycle, with upstream faults on the way, logged as warnings.
    fake_openai.inject("upload", 500)
    fake_openai.inject("retrieve", 401)
    for _ in range(4):
        cycle()
    for client in tenants:
        for call in CALLS.values():
            call(client)
    assert not BatchRequest.objects.exclude(status="completed").exists()
    for client in tenants:
        client.with_raw_response.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hush"}]
        )

    # The operator's views: every admin list, every change page, the dashboard, the metrics.
    pages = []
    for model, pks in (
        ("requests_app/apikey", ApiKey.objects.values_list("pk", flat=True)),
        ("requests_app/batchrequest", BatchRequest.objects.values_list("pk", flat=True)),
        ("batches_app/batch", None),
        ("batches_app/upstreamfile", None),
    ):
        pages.append(admin_client.get(f"/{settings.ADMIN_URL}{model}/"))
        for pk in pks or ():
            pages.append(admin_client.get(f"/{settings.ADMIN_URL}{model}/{pk}/change/"))
    pages.append(admin_client.get(f"/{settings.ADMIN_URL}"))
    pages.append(admin_client.get(f"/{settings.ADMIN_URL}dashboard/"))
    pages.append(admin_client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {METRICS_SECRET}"))
    assert all(page.status_code == 200 for page in pages), [p.status_code for p in pages]

    logged = caplog.text + "\n".join(
        f"{record.__dict__} {record.getMessage()}" for record in caplog.records
    )
    answered = "\n".join(seen)
    shown = "\n".join(page.content.decode() for page in pages)
    # The haystacks hold what they should: this test looks where the secrets would be.
    assert "upstream error" in logged or "refused upstream" in logged, logged[-2000:]
    assert "batch_pending" in answered and "invalid_api_key" in answered
    assert "hush" in shown
    for secret in secrets:
        assert secret not in logged
        assert secret not in answered
        assert secret not in shown
