"""Races between processes on one database (CONTRACT.md §2): intake, flush and poll.

Every test here uses separate connections (other processes, or threads outside the test's
transaction), since a race inside one wrapping transaction proves nothing. SQLite serialises
writers, so there the tests show the weaker promise that serialised workers do no harm; only
PostgreSQL can show SKIP LOCKED letting flushers claim side by side.
"""

from collections import Counter

import orjson
import pytest
from django.conf import settings
from django.db import connection

from batches_app import services
from batches_app.models import Batch
from requests_app.models import BatchRequest

from .workers import (
    assert_each_answered_once,
    claim_beside_a_held_claim,
    finish,
    start_together,
)

pytestmark = pytest.mark.django_db(transaction=True)


def chat(text: str) -> str:
    return orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})


def test_32_clients_in_4_processes_make_one_row_per_identical_call(api_key, fake_openai, tmp_path):
    commands = []
    for p in range(4):
        bodies = [chat("same"), chat("same")]
        bodies += [chat(f"shared {k}") for k in range(3)]
        bodies += [chat(f"own {p}-{k}") for k in range(3)]
        path = tmp_path / f"bodies{p}.jsonl"
        path.write_bytes(b"\n".join(bodies))
        commands.append(("intake", api_key[1], "8", str(path)))

    lines = finish(start_together(fake_openai, commands, tmp_path / "go"))

    assert len(lines) == 32
    assert {line.split()[0] for line in lines} == {"422"}
    rows = BatchRequest.objects.values_list("pk", "body")
    assert len(rows) == 1 + 3 + 12
    ids = Counter(line.split()[1] for line in lines)
    by_body = {orjson.loads(body)["messages"][0]["content"]: str(pk) for pk, body in rows}
    assert ids[by_body["same"]] == 8  # every client got the one row's id
    assert all(ids[by_body[f"shared {k}"]] == 4 for k in range(3))


def test_two_flushers_and_two_pollers_submit_and_ingest_everything_once(
    post, fake_openai, tmp_path
):
    for i in range(40):
        assert post("/v1/chat/completions", orjson.loads(chat(f"race {i}"))).status_code == 422
    commands = [("flush-loop",), ("flush-loop",), ("poll-loop",), ("poll-loop",)]

    # The leases last as long as their step, however slow the machine: nothing is downloaded twice.
    extra = {"BATCH_MAX_REQUESTS": 6}
    finish(start_together(fake_openai, commands, tmp_path / "go", **extra))

    assert_each_answered_once(fake_openai)  # no request in two batches
    downloads = Counter(path for op, path in fake_openai.calls if op == "content")
    assert downloads and set(downloads.values()) == {1}  # no file ingested twice
    assert Batch.objects.filter(state=Batch.State.DONE).count() == len(fake_openai.batches)


def test_queue_timeout_is_well_below_retry():
    """django-q2's ORM broker hands a task that outlives `retry` to a second worker."""
    assert settings.Q_CLUSTER["timeout"] * 1.2 <= settings.Q_CLUSTER["retry"]


@pytest.mark.skipif(
    connection.vendor == "sqlite", reason="SQLite serialises writers: no SKIP LOCKED to show"
)
def test_concurrent_claims_skip_each_others_locked_rows(post, fake_openai, settings):
    settings.BATCH_MAX_REQUESTS = 5
    for i in range(10):
        assert post("/v1/chat/completions", orjson.loads(chat(f"lock {i}"))).status_code == 422
    services.tokens_fill(endpoint="/v1/chat/completions", model="gpt-4o-mini")
    claims, held_back = claim_beside_a_held_claim(
        lambda: services._claim_one_batch("/v1/chat/completions", "gpt-4o-mini", force=True),
        wait=30,
    )
    finished_while_held = not held_back

    assert finished_while_held  # not blocked by the first claimer's locks
    assert claims["first"].batch.request_count == claims["second"].batch.request_count == 5
    per_batch = Counter(BatchRequest.objects.values_list("batch", flat=True))
    assert sorted(per_batch.values()) == [5, 5]
