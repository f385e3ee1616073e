"""/metrics: Prometheus figures, read from the database, that move when requests move."""

from decimal import Decimal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from batches_app.models import ModelPrice

from .engine import cycle

CHAT = "/v1/chat/completions"


def scrape(client, **headers) -> dict:
    """{(sample name, frozen labels): value} of one scrape."""
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def ask(post, text: str, model: str = "gpt-4o-mini"):
    return post(CHAT, {"model": model, "messages": [{"role": "user", "content": text}]})


@pytest.mark.django_db(transaction=True)
def test_queue_figures_follow_requests_through_a_batch(client, post, fake_openai):
    # Transactional tests empty every table, the migrated default prices included.
    ModelPrice.objects.update_or_create(
        model="gpt-4o-mini",
        defaults={"input_per_million": Decimal("0.15"), "output_per_million": Decimal("0.60")},
    )
    before = scrape(client)
    assert (
        value(
            before,
            "batchproxy_queue_depth",
            upstream="openai",
            endpoint=CHAT,
            model="gpt-4o-mini",
            status="queued",
        )
        == 0
    )
    for text in ("one", "two", "three"):
        assert ask(post, text).status_code == 422
    assert ask(post, "other model", model="gpt-4.1-mini").status_code == 422

    queued = scrape(client)
    assert (
        value(
            queued,
            "batchproxy_queue_depth",
            upstream="openai",
            endpoint=CHAT,
            model="gpt-4o-mini",
            status="queued",
        )
        == 3
    )
    assert (
        value(
            queued,
            "batchproxy_queue_depth",
            upstream="openai",
            endpoint=CHAT,
            model="gpt-4.1-mini",
            status="queued",
        )
        == 1
    )
    assert (
        value(
            queued,
            "batchproxy_queue_oldest_age_seconds",
            upstream="openai",
            endpoint=CHAT,
            model="gpt-4o-mini",
        )
        >= 0
    )
    assert (
        "batchproxy_queue_oldest_age_seconds",
        frozenset({"upstream": "openai", "endpoint": CHAT, "model": "gpt-4o-mini"}.items()),
    ) in queued
    assert value(queued, "batchproxy_requests", status="queued") == 4
    assert value(queued, "batchproxy_requests", status="completed") == 0

    cycle()
    done = scrape(client)
    assert (
        value(
            done,
            "batchproxy_queue_depth",
            upstream="openai",
            endpoint=CHAT,
            model="gpt-4o-mini",
            status="queued",
        )
        == 0
    )
    assert (
        "batchproxy_queue_oldest_age_seconds",
        frozenset({"upstream": "openai", "endpoint": CHAT, "model": "gpt-4o-mini"}.items()),
    ) not in done
    assert value(done, "batchproxy_requests", status="completed") == 4
    assert (
        value(
            done, "batchproxy_batches", upstream="openai", state="done", upstream_status="completed"
        )
        == 2
    )
    # Upstream calls: every batch uploaded and created once, with its latency recorded.
    assert (
        value(
            done,
            "batchproxy_upstream_call_seconds_count",
            upstream="openai",
            operation="batches.create",
            outcome="ok",
        )
        == 2
    )
    assert (
        value(
            done,
            "batchproxy_upstream_call_seconds_bucket",
            upstream="openai",
            operation="files.create",
            outcome="ok",
            le="+Inf",
        )
        == 2
    )
    assert (
        value(
            done,
            "batchproxy_upstream_call_seconds_sum",
            upstream="openai",
            operation="files.create",
            outcome="ok",
        )
        > 0
    )
    # Downloads (until the last line) and deletions too: two output files read, and the input
    # and output files of both batches deleted.
    calls = "batchproxy_upstream_call_seconds_count"
    assert value(done, calls, upstream="openai", operation="files.content", outcome="ok") == 2
    assert value(done, calls, upstream="openai", operation="files.delete", outcome="ok") == 4
    # Tokens and savings from the batches' usage and the price table.
    assert value(done, "batchproxy_tokens_total", model="gpt-4o-mini", direction="input") > 0
    assert value(done, "batchproxy_tokens_total", model="gpt-4o-mini", direction="output") > 0
    assert value(done, "batchproxy_saved_usd_total", model="gpt-4o-mini") > 0
    assert value(done, "batchproxy_saved_usd_total", model="gpt-4o-mini") == pytest.approx(
        value(done, "batchproxy_spent_usd_total", model="gpt-4o-mini")
    )


@pytest.mark.django_db(transaction=True)
def test_failed_answers_and_upstream_errors_are_counted(client, post, fake_openai, settings):
    settings.MAX_ATTEMPTS = 1
    assert ask(post, "fine").status_code == 422
    assert ask(post, "broken [[error:server_error]]").status_code == 422
    fake_openai.inject("create", 500)
    cycle()  # the create fails once; the next cycle creates the batch and finishes it
    cycle()
    samples = scrape(client)
    assert value(samples, "batchproxy_requests", status="completed") == 1
    assert value(samples, "batchproxy_requests", status="failed") == 1
    errors = {
        dict(labels)["code"]: count
        for (name, labels), count in samples.items()
        if name == "batchproxy_upstream_errors_total"
        and dict(labels)["operation"] == "batches.create"
    }
    assert sum(errors.values()) == 1, errors
    assert (
        value(
            samples,
            "batchproxy_upstream_call_seconds_count",
            upstream="openai",
            operation="batches.create",
            outcome="ok",
        )
        == 1
    )


def test_metrics_ask_for_the_token_when_one_is_set(client, db, settings):
    settings.METRICS_TOKEN = "metrics-token-0123456789"
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token-wrong-0000")
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_metrics_token"
    assert scrape(client, HTTP_AUTHORIZATION="Bearer metrics-token-0123456789")


def test_metrics_are_open_without_a_token(client, db, settings):
    settings.METRICS_TOKEN = ""
    assert ("batchproxy_requests", frozenset({"status": "queued"}.items())) in scrape(client)
