"""/v1/models and /metrics at 200,000 batches: they read a handful of rows, never every batch
ever made (they took 1.3 s and 3.3 s before). Proven by the query plans, not by a clock: every
query of either view that touches the batch table is EXPLAINed at that scale, and the rows it
reads from the table are counted (PostgreSQL) or its plan must search an index instead of
scanning the table (SQLite)."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from batches_app.models import Batch
from batches_app.spend import spend_tally

pytestmark = pytest.mark.django_db
BATCHES = 200_000
TABLE = Batch._meta.db_table


def batches_make(n: int) -> None:
    """n done batches in one INSERT … SELECT, copies of one made by the ORM with fresh ids."""
    template = Batch.objects.create(
        endpoint="/v1/chat/completions",
        model="gpt-4o-mini",
        state=Batch.State.DONE,
        upstream_status="completed",
        finished_at=timezone.now(),
        usage={"input_tokens": 10, "output_tokens": 5},
        request_counts={"completed": 1},
    )
    spend_tally()  # in production the tally keeps up: done batches are tallied as they end
    columns = [f.column for f in Batch._meta.concrete_fields if f.column != "id"]
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    if connection.vendor == "postgresql":
        fresh, series = "gen_random_uuid()", f"generate_series(2, {n})"
    else:
        fresh = "lower(hex(randomblob(16)))"
        series = (
            "(WITH RECURSIVE s(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM s WHERE i < "  # noqa: S608
            f"{int(n)}) SELECT i FROM s)"
        )
    # Every name here is the model's own or a constant: nothing comes from outside.
    copies = f"INSERT INTO {TABLE} (id, {names}) SELECT {fresh}, {names} FROM {TABLE}, {series} "  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(
            copies + f"AS series WHERE {TABLE}.id = %s",
            [template.pk.hex if connection.vendor == "sqlite" else template.pk],
        )
        if connection.vendor == "postgresql":
            # What autovacuum does soon after such an insert: the planner then knows that
            # nearly every batch is done. (SQLite has no automatic statistics; its planner
            # takes an index on an equality or IN by default.)
            cursor.execute(f"ANALYZE {TABLE}")


def batch_queries(call) -> list[tuple[str, list]]:
    with CaptureQueriesContext(connection) as captured:
        call()
    return [q["sql"] for q in captured.captured_queries if TABLE in q["sql"]]


def rows_read(sql: str) -> int:
    """Rows the plan reads from the batch table (returned and filtered out), from EXPLAIN
    ANALYZE."""
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    total, nodes = 0, [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        nodes.extend(node.get("Plans", []))
        if node.get("Relation Name") == TABLE or node.get("Index Name", "").startswith("batch"):
            loops = node.get("Actual Loops", 1)
            total += (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * loops
    return total


def scans_table(sql: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
        details = [row[-1] for row in cursor.fetchall()]
    return any(d.startswith(f"SCAN {TABLE}") and "INDEX" not in d for d in details)


@pytest.fixture
def many_batches(settings, api_key):
    settings.METRICS_PUBLIC = True
    batches_make(BATCHES)
    assert Batch.objects.count() == BATCHES
    return api_key


def test_models_list_reads_no_batch_at_200k_batches(client, many_batches):
    auth = {"HTTP_AUTHORIZATION": f"Bearer {many_batches[1]}"}
    queries = batch_queries(lambda: client.get("/v1/models", **auth))
    assert queries == []


def test_metrics_read_a_few_batch_rows_at_200k_batches(client, many_batches):
    def scrape():
        assert client.get("/metrics").status_code == 200

    queries = batch_queries(scrape)
    assert queries  # the unfinished batches and the untallied ones are still read
    for sql in queries:
        if connection.vendor == "postgresql":
            assert rows_read(sql) < 1000, sql
        else:
            assert not scans_table(sql), sql
    text = client.get("/metrics").content.decode()
    done = 'batchproxy_batches{state="done",upstream="openai",upstream_status="completed"} 1.0'
    assert done in text  # the template's tally; the copies were made behind the tally's back
