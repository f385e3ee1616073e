"""/metrics: Prometheus figures, read from the database, that move when requests move."""

from decimal import Decimal

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from batches_app.models import Batch, ModelPrice

from .engine import cycle

CHAT = "/v1/chat/completions"


@pytest.fixture(autouse=True)
def _metrics_open(settings):
    """Most tests here read the figures: open /metrics as METRICS_PUBLIC does."""
    settings.METRICS_PUBLIC = True


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
    ModelPrice.objects.get_or_create(model="gpt-4.1-mini", defaults={"input_per_million": 1})
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
    mini = {"upstream": "openai", "model": "gpt-4o-mini"}
    assert value(done, "batchproxy_tokens_total", **mini, direction="input") > 0
    assert value(done, "batchproxy_tokens_total", **mini, direction="output") > 0
    assert value(done, "batchproxy_saved_usd_total", **mini) > 0
    assert value(done, "batchproxy_saved_usd_total", **mini) == pytest.approx(
        value(done, "batchproxy_spent_usd_total", **mini)
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


def test_metrics_are_closed_without_a_token_by_default(client, db, settings):
    settings.METRICS_TOKEN, settings.METRICS_PUBLIC = "", False
    closed = client.get("/metrics")
    assert closed.status_code == 403
    assert closed.json()["error"]["code"] == "metrics_closed"
    assert "METRICS_TOKEN" in closed.json()["error"]["message"]
    assert b"batchproxy_" not in closed.content


def test_metrics_open_only_when_the_operator_says_so(client, db, settings):
    settings.METRICS_TOKEN, settings.METRICS_PUBLIC = "", True
    assert ("batchproxy_requests", frozenset({"status": "queued"}.items())) in scrape(client)


def test_a_try_out_serves_metrics_to_this_machine_only(client, db, settings):
    settings.METRICS_TOKEN, settings.METRICS_PUBLIC = "", False
    settings.TRY_OUT = {"fakes": {}}
    assert scrape(client, REMOTE_ADDR="127.0.0.1")
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 403


def test_caller_chosen_model_names_fold_into_other(client, post, settings):
    """A key sending a thousand invented model names adds one label, not a thousand."""
    for n in range(30):
        assert ask(post, "hi", model=f"ft:invented-{n}").status_code == 422
    assert ask(post, "hi", model="gpt-4o-mini-2024-07-18").status_code == 422  # priced

    samples = scrape(client)
    models = {
        dict(labels)["model"]
        for name, labels in samples
        if name == "batchproxy_queue_depth" and dict(labels)["status"] == "queued"
    }
    assert models == {"other", "gpt-4o-mini"}
    other = value(
        samples,
        "batchproxy_queue_depth",
        upstream="openai",
        endpoint=CHAT,
        model="other",
        status="queued",
    )
    assert other == 30
    text = client.get("/metrics").content.decode()
    assert "invented" not in text


@pytest.mark.django_db
def test_spend_and_queue_limits_of_each_upstream_are_labelled_apart(client, settings):
    """The same model on two OpenAI organisations: two sets of figures, never summed."""
    settings.QUEUE_LIMITS = {"openai:gpt-4o-mini": 1000, "openai-2:gpt-4o-mini": 5000}
    second = {"name": "openai-2", "kind": "openai", "base_url": "http://b", "key_env": "B"}
    settings.UPSTREAMS = [second | {"models": ["gpt-4o-mini"]}]
    for upstream, tokens_in in (("openai", 1_000_000), ("openai-2", 3_000_000)):
        Batch.objects.create(
            upstream=upstream,
            endpoint=CHAT,
            model="gpt-4o-mini",
            state=Batch.State.DONE,
            finished_at=timezone.now(),
            usage={"input_tokens": tokens_in, "output_tokens": 0},
        )
    Batch.objects.create(upstream="openai-2", endpoint=CHAT, model="gpt-4o-mini", counted_tokens=7)

    samples = scrape(client)

    def of(name: str, upstream: str, **labels) -> float:
        return value(samples, name, upstream=upstream, model="gpt-4o-mini", **labels)

    tokens = "batchproxy_tokens_total"
    assert of(tokens, "openai", direction="input") == 1_000_000
    assert of(tokens, "openai-2", direction="input") == 3_000_000
    # gpt-4o-mini costs $0.15 per 1M input tokens synchronously, half of it as a batch.
    assert of("batchproxy_spent_usd_total", "openai") == pytest.approx(0.075)
    assert of("batchproxy_spent_usd_total", "openai-2") == pytest.approx(0.225)
    assert of("batchproxy_queue_limit_tokens", "openai") == 1000
    assert of("batchproxy_queue_limit_tokens", "openai-2") == 5000
    assert of("batchproxy_queue_upstream_tokens", "openai") == 0
    assert of("batchproxy_queue_upstream_tokens", "openai-2") == 7
    assert of("batchproxy_waiting_for_capacity", "openai-2") == 0


@pytest.mark.django_db
def test_calls_and_errors_of_a_second_upstream_are_labelled_with_its_name(
    client, post, second_org, fake_openai
):
    assert ask(post, "to the second organisation", model="gpt-4o").status_code == 422
    assert ask(post, "to the first", model="gpt-4o-mini").status_code == 422
    second_org.inject("create", 500)
    cycle()  # the second organisation's create fails once; the next cycle creates it
    cycle()

    samples = scrape(client)

    calls = "batchproxy_upstream_call_seconds_count"
    for upstream in ("openai", "openai-2"):
        assert (
            value(samples, calls, upstream=upstream, operation="batches.create", outcome="ok") == 1
        )
        done = {"state": "done", "upstream_status": "completed"}
        assert value(samples, "batchproxy_batches", upstream=upstream, **done) == 1
    errors = {
        dict(labels)["upstream"]: count
        for (name, labels), count in samples.items()
        if name == "batchproxy_upstream_errors_total"
    }
    assert errors == {"openai-2": 1}


@pytest.mark.django_db
def test_each_done_batch_is_added_to_the_totals_once(client):
    def done_batch(tokens_in: int) -> None:
        Batch.objects.create(
            endpoint=CHAT,
            model="gpt-4o-mini",
            state=Batch.State.DONE,
            upstream_status="completed",
            finished_at=timezone.now(),
            usage={"input_tokens": tokens_in, "output_tokens": 0},
        )

    done_batch(100)
    done_batch(20)
    tokens = {"upstream": "openai", "model": "gpt-4o-mini", "direction": "input"}
    assert value(scrape(client), "batchproxy_tokens_total", **tokens) == 120
    assert value(scrape(client), "batchproxy_tokens_total", **tokens) == 120  # not again
    done_batch(3)
    samples = scrape(client)
    assert value(samples, "batchproxy_tokens_total", **tokens) == 123
    batches = {"upstream": "openai", "state": "done", "upstream_status": "completed"}
    assert value(samples, "batchproxy_batches", **batches) == 3
    assert not Batch.objects.filter(tallied=False).exists()
