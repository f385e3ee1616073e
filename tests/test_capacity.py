"""The upstream's enqueued-token limit (issue 11): counted tokens, a budget per model, learning
from refusals, and big jobs that finish under it."""

import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from io import StringIO

import openai
import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from batches_app import capacity, services
from batches_app.models import Batch, QueueLimit
from batchproxy import tokens
from requests_app.models import BatchRequest

from .engine import cycle
from .workers import (
    ROOT,
    assert_each_answered_once,
    claim_beside_a_held_claim,
    finish,
    start_together,
)

Status = BatchRequest.Status
CHAT = "/v1/chat/completions"
# The fake counts four characters a token; tiktoken finds fewer characters per token in hex, so
# the proxy's count of these prompts is the larger one, as a safe count should be.
LIMIT = 1_000


def prompt(n: int) -> str:
    return f"{n}: " + uuid.uuid5(uuid.NAMESPACE_OID, str(n)).hex * 5


def chat(text: str, model: str = "gpt-4o") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


@pytest.fixture(autouse=True)
def fresh_capacity_cache(settings):
    settings.CAPACITY_CACHE_SECONDS = 0
    capacity._waiting_cache = (0.0, frozenset())


def refusals(fake) -> int:
    return sum(
        1
        for batch in fake.batches.values()
        if any(e["code"] == "token_limit_exceeded" for e in (batch["errors"] or {}).get("data", []))
    )


def drain(*, rounds: int = 40) -> None:
    """Run scheduler cycles until nothing is pending (bounded)."""
    for _ in range(rounds):
        if not BatchRequest.objects.filter(status__in=BatchRequest.PENDING).exists():
            return
        BatchRequest.objects.update(not_before=None)
        cycle()
    raise AssertionError(f"still pending after {rounds} cycles")


# --- Counting ---------------------------------------------------------------------------------


def test_tokens_are_counted_with_the_models_real_encoding_and_no_network(tmp_path):
    """A fresh cache, every socket refused: tiktoken's vocabularies come from the package."""
    script = """
import socket, django
def refuse(*args, **kwargs):
    raise OSError("no network in this test")
socket.socket.connect = refuse
socket.create_connection = refuse
django.setup()
from batchproxy.tokens import encoding_for, tokens_count
print(encoding_for("gpt-4").name, encoding_for("gpt-4").encode("hello world"))
print(encoding_for("gpt-4o-mini-2024-07-18").name, encoding_for("gpt-4o").encode("hello world"))
print(tokens_count(model="gpt-4o", body={"model": "gpt-4o", "input": "hello world"}))
"""
    env = os.environ | {"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-cache")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        "cl100k_base [15339, 1917]",
        "o200k_base [24912, 2375]",
        "2",
    ]


def test_a_conversation_counts_its_text_framing_and_images():
    text = tokens.tokens_count(model="gpt-4o", body=chat("hello world"))
    assert text == tokens.MESSAGE_TOKENS + 1 + 2  # framing, "user", "hello world"
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with_image = chat([{"type": "text", "text": "hello world"}, image])
    # The parts' types are no tokens; the image is the flat estimate.
    assert tokens.tokens_count(model="gpt-4o", body=with_image) == text + tokens.IMAGE_TOKENS
    token_array = {"model": "text-embedding-3-small", "input": [[1, 2, 3], [4, 5]]}
    assert tokens.tokens_count(model="text-embedding-3-small", body=token_array) == 5


def test_a_model_tiktoken_does_not_know_gets_four_bytes_a_token():
    body = {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "x" * 400}]}
    assert tokens.encoding_for("claude-sonnet-4") is None
    assert tokens.tokens_count(model="claude-sonnet-4", body=body) == (
        tokens.MESSAGE_TOKENS + (4 + 400 + 3) // 4
    )


@pytest.mark.django_db
def test_the_flush_counts_each_queued_request_once_and_the_batch_sums_them(post, fake_openai):
    for n in range(3):
        assert post(f"/v1/{CHAT[4:]}", chat(prompt(n))).status_code == 422
    assert not BatchRequest.objects.exclude(counted_tokens=None).exists()  # not at intake

    [batch] = services.batch_flush(force=True)

    counts = dict(BatchRequest.objects.values_list("body", "counted_tokens"))
    for body, counted in counts.items():
        assert counted == tokens.tokens_count(model="gpt-4o", body=orjson.loads(body))
    assert batch.counted_tokens == sum(counts.values())
    assert services.tokens_fill(endpoint=CHAT, model="gpt-4o") == 0


# --- A budget per model ---------------------------------------------------------------------


@pytest.mark.django_db
def test_a_group_larger_than_the_budget_takes_what_fits_and_the_rest_waits(
    post, client, api_key, fake_openai, settings
):
    settings.QUEUE_LIMITS = {"gpt-4o": LIMIT}
    fake_openai.configure(step_seconds=60)  # batches stay in progress upstream
    ids = []
    for n in range(30):
        response = post("/v1/chat/completions", chat(prompt(n), model="gpt-4o-2024-08-06"))
        ids.append(response["X-Batch-Request-Id"])

    [batch] = services.batch_flush(force=True)
    services.batches_advance(force=True)
    assert services.batch_flush(force=True) == []  # no room while the first one runs

    budget = LIMIT * (1 - settings.QUEUE_LIMIT_MARGIN)
    assert 0 < batch.counted_tokens <= budget
    assert batch.request_count < 30
    assert Batch.objects.get(pk=batch.pk).upstream_status == "validating"
    assert QueueLimit.objects.get(model="gpt-4o").waiting_since is not None

    waiting_id = BatchRequest.objects.filter(status=Status.QUEUED).values_list("pk", flat=True)[0]
    again = post("/v1/chat/completions", orjson.loads(BatchRequest.objects.get(pk=waiting_id).body))
    assert again.status_code == 422
    assert "waiting for queue capacity" in again.json()["error"]["message"]
    assert int(again["Retry-After"]) >= capacity.CAPACITY_RETRY_AFTER
    shown = client.get(
        f"/v1/batch_requests/{waiting_id}", HTTP_AUTHORIZATION=f"Bearer {api_key[1]}"
    )
    assert shown.json()["waiting_for"] == "queue_capacity"
    submitted = client.get(
        f"/v1/batch_requests/{batch.requests.first().pk}", HTTP_AUTHORIZATION=f"Bearer {api_key[1]}"
    )
    assert submitted.json()["waiting_for"] is None


@pytest.mark.django_db
def test_a_request_alone_over_the_limit_fails_for_good_at_once(post, fake_openai, settings):
    settings.QUEUE_LIMITS = {"gpt-4o": 50}
    huge = post("/v1/chat/completions", chat("word " * 400))
    small = post("/v1/chat/completions", chat("hello"))

    services.batch_flush(force=True)

    failed = BatchRequest.objects.get(pk=huge["X-Batch-Request-Id"])
    assert failed.status == Status.FAILED
    assert failed.error_code == "token_limit_exceeded"
    assert "limit of 50" in failed.error_message
    assert BatchRequest.objects.get(pk=small["X-Batch-Request-Id"]).status == Status.SUBMITTED
    answer = post("/v1/chat/completions", chat("word " * 400))
    assert answer.status_code == 502 and answer.json()["error"]["code"] == "token_limit_exceeded"


@pytest.mark.django_db
def test_limits_come_from_the_admin_table_before_the_environment(settings):
    settings.QUEUE_LIMITS = {"gpt-4o": 90_000}
    assert capacity.limits_of("gpt-4o-2024-05-13")[0] == 81_000  # the margin is kept free
    QueueLimit.objects.create(model="gpt-4o", enqueued_tokens=10_000, queued_requests=7)
    row = QueueLimit.objects.get()
    assert capacity.limits_of("gpt-4o", row) == (9_000, 7, 10_000)
    assert capacity.limits_of("gpt-4.1") == (float("inf"), float("inf"), None)


# --- Whole jobs of several times the limit -------------------------------------------------


def ask_all(client, texts) -> None:
    def ask(text):
        with pytest.raises(openai.UnprocessableEntityError):
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": text}]
            )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(ask, texts))


def answers(client, texts) -> list[str]:
    return [
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": t}])
        .choices[0]
        .message.content
        for t in texts
    ]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("configured", [True, False], ids=["limit-configured", "no-limit-set"])
def test_a_job_four_times_the_queue_limit_finishes_through_the_sdk(
    sdk, fake_openai, settings, configured
):
    fake_openai.configure(enqueued_token_limits={"gpt-4o": LIMIT})
    if configured:
        settings.QUEUE_LIMITS = {"gpt-4o": LIMIT}
    texts = [prompt(n) for n in range(80)]
    fake_tokens = sum((len(t) + 3) // 4 + 1 for t in texts)  # as the fake counts: text, "user"
    assert 3 * LIMIT < fake_tokens < 4 * LIMIT

    ask_all(sdk, texts)
    drain()

    assert answers(sdk, texts) == [f"echo: {t}" for t in texts]
    assert refusals(fake_openai) == (0 if configured else 1)
    assert len(fake_openai.batches) > 4


@pytest.mark.django_db(transaction=True)
def test_a_refusal_that_names_no_limit_halves_the_budget_until_batches_fit(
    post, fake_openai, settings
):
    """Someone else's batches fill the organisation's queue: the refusal's limit is no help."""
    fake_openai.configure(token_limit_failures=2)
    for n in range(16):
        post("/v1/chat/completions", chat(prompt(n)))

    drain()

    assert refusals(fake_openai) == 2
    row = QueueLimit.objects.get(model="gpt-4o")
    assert row.stated_tokens == 90_000  # what the fake's refusals say
    assert BatchRequest.objects.filter(status=Status.COMPLETED).count() == 16
    assert BatchRequest.objects.filter(attempts__gt=1).count() == 0  # refusals spend no attempt


@pytest.mark.django_db(transaction=True)
def test_a_single_request_over_the_stated_limit_fails_for_good_after_one_refusal(post, fake_openai):
    fake_openai.configure(enqueued_token_limits={"gpt-4o": 100})
    huge = post("/v1/chat/completions", chat("word " * 1000))["X-Batch-Request-Id"]

    drain()

    request = BatchRequest.objects.get(pk=huge)
    assert (request.status, request.error_code) == (Status.FAILED, "token_limit_exceeded")
    assert "limit of 100" in request.error_message
    assert refusals(fake_openai) == 1


# --- Several schedulers ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_claims_at_once_never_take_more_than_the_budget(post, fake_openai, settings):
    settings.QUEUE_LIMITS = {"gpt-4o": LIMIT}
    for n in range(30):
        post("/v1/chat/completions", chat(prompt(n)))
    services.tokens_fill(endpoint=CHAT, model="gpt-4o")
    claims, waited_for_the_first = claim_beside_a_held_claim(
        lambda: services._claim_one_batch(CHAT, "gpt-4o", force=True), wait=1
    )

    assert waited_for_the_first  # the budget is taken under a lock
    assert claims["first"].batch is not None
    assert claims["second"].batch is None and claims["second"].waiting
    budget = LIMIT * (1 - settings.QUEUE_LIMIT_MARGIN)
    assert sum(Batch.objects.values_list("counted_tokens", flat=True)) <= budget


@pytest.mark.django_db(transaction=True)
def test_two_flushing_schedulers_finish_a_big_job_with_no_batch_refused(
    post, fake_openai, tmp_path
):
    fake_openai.configure(enqueued_token_limits={"gpt-4o": LIMIT}, step_seconds=0.3)
    for n in range(60):
        post("/v1/chat/completions", chat(prompt(n)))

    commands = [("flush-loop",), ("flush-loop",), ("poll-loop",)]
    extra = {"QUEUE_LIMITS": f"gpt-4o={LIMIT}", "POLL_INTERVAL": 0}
    finish(start_together(fake_openai, commands, tmp_path / "go", **extra), timeout=240)

    assert refusals(fake_openai) == 0
    assert_each_answered_once(fake_openai)
    assert len(fake_openai.batches) >= 4


# --- What operators see ----------------------------------------------------------------------


@pytest.mark.django_db
def test_operators_see_limits_budget_and_waiting_everywhere(
    post, admin_client, client, fake_openai, settings
):
    fake_openai.configure(step_seconds=60)
    out = StringIO()
    call_command("set_queue_limit", "gpt-4o-2024-08-06", "--tokens", str(LIMIT), stdout=out)
    assert "gpt-4o: 1000 enqueued-token limit" in out.getvalue()
    for n in range(30):
        post("/v1/chat/completions", chat(prompt(n)))
    [batch] = services.batch_flush(force=True)

    listing = admin_client.get("/admin/batches_app/queuelimit/").content.decode()
    assert "waiting for queue capacity" in listing
    assert f"{batch.counted_tokens:,}" in listing  # tokens upstream
    page = admin_client.get(f"/admin/batches_app/batch/{batch.pk}/change/").content.decode()
    assert str(batch.counted_tokens) in page
    board = admin_client.get("/admin/dashboard/").content.decode()
    assert "waiting for queue capacity" in board
    assert '<td class="bp-num">900</td>' in board  # the budget: the limit less 10%
    settings.METRICS_PUBLIC = True
    metrics = client.get("/metrics").content.decode()
    openai_4o = 'model="gpt-4o",upstream="openai"'  # labels come sorted
    assert f"batchproxy_waiting_for_capacity{{{openai_4o}}} 1.0" in metrics
    assert f"batchproxy_queue_limit_tokens{{{openai_4o}}} 1000.0" in metrics
    assert f"batchproxy_queue_upstream_tokens{{{openai_4o}}} {batch.counted_tokens}.0" in metrics

    out = StringIO()
    call_command("set_queue_limit", stdout=out)
    assert "openai:gpt-4o: limit 1000, budget 900" in out.getvalue()
    assert "waiting for queue capacity" in out.getvalue()


@pytest.mark.django_db
def test_an_operator_can_forget_a_learned_budget(admin_client):
    row = QueueLimit.objects.create(
        model="gpt-4o", learned_tokens=500, stated_tokens=1000, learned_at=timezone.now()
    )
    assert capacity.limits_of("gpt-4o", row)[0] == 500

    admin_client.post(
        "/admin/batches_app/queuelimit/",
        {"action": "forget_learned", "_selected_action": [row.pk]},
    )

    row.refresh_from_db()
    assert (row.learned_tokens, row.stated_tokens, row.learned_at) == (None, None, None)
    assert capacity.limits_of("gpt-4o", row)[0] == float("inf")


def test_nonsense_queue_settings_fail_the_system_check(settings):
    from ops_app.checks import queue_limits_check

    settings.QUEUE_LIMIT_MARGIN = 1.5
    settings.QUEUE_REQUEST_LIMITS = {"text-embedding-3-small": 0}
    assert {e.id for e in queue_limits_check(None)} == {"ops_app.E003", "ops_app.E004"}


@pytest.mark.django_db
def test_embeddings_also_keep_to_a_limit_of_queued_requests(post, fake_openai, settings):
    settings.QUEUE_REQUEST_LIMITS = {"text-embedding-3-small": 4}
    fake_openai.configure(step_seconds=60)
    for n in range(10):
        post("/v1/embeddings", {"model": "text-embedding-3-small", "input": f"text {n}"})

    first = services.batch_flush(force=True)
    services.batches_advance(force=True)
    second = services.batch_flush(force=True)

    assert [batch.request_count for batch in first] == [4]
    assert second == []
    assert BatchRequest.objects.filter(status=Status.QUEUED).count() == 6


# --- A budget per upstream and model --------------------------------------------------------


def test_limits_in_the_environment_name_an_upstream_or_go_where_the_model_routes(settings):
    second = {"name": "openai-2", "kind": "openai", "base_url": "http://b", "key_env": "B_KEY"}
    settings.UPSTREAMS = [second | {"models": ["gpt-4.1*"]}]
    limits = {
        "gpt-4o": 100,  # routes to the default upstream
        "openai-2:gpt-4o": 200,
        "gpt-4.1-2025-04-14": 300,  # routes to openai-2; a snapshot counts as its model
        "gpt-4o-mini": 400,
        "openai:gpt-4o-mini": 450,  # named both ways: the explicit one wins
        "ft:gpt-4o-mini:acme::x1": 5,  # a fine-tuned model's colons are its own
    }
    assert capacity.env_limits(limits) == {
        ("openai", "gpt-4o"): 100,
        ("openai-2", "gpt-4o"): 200,
        ("openai-2", "gpt-4.1"): 300,
        ("openai", "gpt-4o-mini"): 450,
        ("openai", "ft:gpt-4o-mini:acme::x1"): 5,
    }
    settings.QUEUE_LIMITS = limits
    assert capacity.limits_of("gpt-4o", upstream="openai-2")[2] == 200
    assert capacity.limits_of("gpt-4.1", upstream="openai")[2] is None


@pytest.mark.django_db
def test_the_same_model_on_a_second_organisation_has_a_budget_of_its_own(
    post, second_org, fake_openai, settings
):
    """The first organisation's gpt-4o queue is full; the operator adds a second one, whose
    own budget takes the next batch while the first stays full."""
    settings.QUEUE_LIMITS = {"openai:gpt-4o": LIMIT, "openai-2:gpt-4o": LIMIT}
    budget = LIMIT * (1 - settings.QUEUE_LIMIT_MARGIN)
    two_orgs, settings.UPSTREAMS = settings.UPSTREAMS, []
    for fake in (fake_openai, second_org):
        fake.configure(step_seconds=60)  # batches stay in progress upstream
    for n in range(40):
        post("/v1/chat/completions", chat(prompt(n)))
    [first] = services.batch_flush(force=True)
    services.batches_advance(force=True)
    assert services.batch_flush(force=True) == []  # the first organisation is full
    assert capacity.is_waiting("gpt-4o") and capacity.is_waiting("gpt-4o", CHAT)

    settings.UPSTREAMS = two_orgs  # gpt-4o now routes to openai-2
    assert not capacity.is_waiting("gpt-4o")  # nothing waits on openai-2 yet
    [second] = services.batch_flush(force=True)
    services.batches_advance(force=True)

    assert (first.upstream, second.upstream) == ("openai", "openai-2")
    assert 0 < second.counted_tokens <= budget
    assert len(second_org.batches) == len(fake_openai.batches) == 1
    assert capacity.queued_upstream("gpt-4o", "openai") == (
        first.counted_tokens,
        first.request_count,
    )
    assert capacity.queued_upstream("gpt-4o", "openai-2")[0] == second.counted_tokens
    waiting = dict(QueueLimit.objects.values_list("upstream", "waiting_since"))
    assert waiting["openai"] is None  # nothing routes there any more
    assert waiting["openai-2"] is not None  # the rest waits for the second organisation
    assert capacity.is_waiting("gpt-4o")
    rows = {(r["upstream"], r["model"]): r for r in capacity.capacity_rows()}
    assert rows["openai", "gpt-4o"]["waiting_tokens"] == 0
    assert rows["openai-2", "gpt-4o"]["waiting_tokens"] > 0


@pytest.mark.django_db
def test_a_refusal_teaches_the_budget_of_the_batchs_own_upstream(second_org):
    QueueLimit.objects.create(upstream="openai", model="gpt-4o", enqueued_tokens=5_000)
    refused = Batch.objects.create(
        upstream="openai-2", endpoint=CHAT, model="gpt-4o-2024-08-06", counted_tokens=2_000
    )

    capacity.budget_learn(batch=refused, message="Limit: 1,000 enqueued tokens.")

    learned = QueueLimit.objects.get(upstream="openai-2", model="gpt-4o")
    assert (learned.learned_tokens, learned.stated_tokens) == (900, 1_000)
    untouched = QueueLimit.objects.get(upstream="openai", model="gpt-4o")
    assert untouched.learned_tokens is None
    assert capacity.limits_of("gpt-4o", untouched)[0] == 4_500


@pytest.mark.django_db
def test_set_queue_limit_takes_an_upstream_and_defaults_to_where_the_model_routes(second_org):
    out = StringIO()
    call_command("set_queue_limit", "gpt-4o", "--tokens", "500", stdout=out)
    call_command("set_queue_limit", "gpt-4o", "--upstream", "openai", "--tokens", "700", stdout=out)
    assert "openai-2:gpt-4o: 500 enqueued-token limit" in out.getvalue()
    assert "openai:gpt-4o: 700 enqueued-token limit" in out.getvalue()
    assert dict(QueueLimit.objects.values_list("upstream", "enqueued_tokens")) == {
        "openai-2": 500,
        "openai": 700,
    }
    with pytest.raises(CommandError, match="No upstream 'opneai'"):
        call_command("set_queue_limit", "gpt-4o", "--upstream", "opneai", "--tokens", "1")


@pytest.mark.django_db(transaction=True)
def test_the_migration_gives_existing_limits_to_the_default_upstream():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = [("batches_app", "0011_webhook_event_renamed_openai_webhook")]
    after = [("batches_app", "0012_queue_limit_per_upstream")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps.get_model("batches_app", "QueueLimit")
    old.objects.create(model="gpt-4o", enqueued_tokens=90_000, learned_tokens=4_000)

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(after)
    # The later migrations back, so the rest of this worker's tests find today's tables.
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    row = QueueLimit.objects.get()
    assert (row.upstream, row.model, row.enqueued_tokens) == ("openai", "gpt-4o", 90_000)
    assert row.learned_tokens == 4_000
    QueueLimit.objects.create(upstream="openai-2", model="gpt-4o")  # a second one may exist
