"""At scale: with 1,000,000 requests in the table, the time and plan of every selection the
engine and the dashboard make.

    python -m bench.bench_scale [--rows 1000000] [--refill]

The rows are made by PostgreSQL (generate_series) once, and kept for later runs. A realistic mix:
a week of answered history, a few percent queued, submitted, failed; 2,000 finished batches and
20 running ones. Each query runs 7 times; the median is reported, with its EXPLAIN plan.
"""

import argparse
import statistics
import time
from datetime import timedelta

from bench.common import django_setup, machine

FILL_SQL = """
INSERT INTO batches_app_batch
    (id, endpoint, model, state, request_count, input_bytes, upstream_id, upstream_status,
     input_file_id, output_file_id, error_file_id, cancel_mode, next_attempt_at,
     upstream_failures, last_error, created_at, updated_at, finished_at, counted_tokens, upstream)
SELECT gen_random_uuid(), '/v1/chat/completions', 'gpt-4o-mini',
       CASE WHEN i <= 20 THEN 'running' ELSE 'done' END, 500, 0, 'batch_' || i,
       CASE WHEN i <= 20 THEN 'in_progress' ELSE 'completed' END, '', '', '', '',
       now() + (i %% 120) * interval '1 second', 0, '',
       now() - i * interval '5 minutes', now(),
       CASE WHEN i <= 20 THEN NULL ELSE now() - i * interval '5 minutes' END, 0, 'default'
FROM generate_series(1, 2020) AS i;

INSERT INTO requests_app_batchrequest
    (id, api_key_id, endpoint, model, body, body_bytes, embedding_inputs, fingerprint, status,
     attempts, deferrals, batch_id, response_status, response_body, error_code, error_message,
     created_at, updated_at, finished_at)
SELECT gen_random_uuid(), %(key)s,
       CASE WHEN i %% 10 = 0 THEN '/v1/embeddings' WHEN i %% 10 = 1 THEN '/v1/responses'
            ELSE '/v1/chat/completions' END,
       (ARRAY['gpt-4o-mini', 'gpt-4o', 'gpt-4.1-mini', 'text-embedding-3-small'])[1 + i %% 4],
       body, octet_length(body), CASE WHEN i %% 10 = 0 THEN 1 ELSE 0 END,
       md5(i::text) || md5(body), status,
       CASE WHEN status = 'queued' THEN 0 ELSE 1 END, 0,
       CASE WHEN status = 'submitted' THEN running[1 + i %% 20] END,
       CASE WHEN status = 'completed' THEN 200 END,
       CASE WHEN status = 'completed' THEN '{"object":"chat.completion","choices":[{"message":'
            || '{"role":"assistant","content":"' || repeat('An answer. ', 50) || '"}]}' END,
       CASE WHEN status = 'failed' THEN 'server_error' ELSE '' END, '',
       CASE WHEN status IN ('queued', 'submitted') THEN now() - (i %% 600) * interval '1 second'
            ELSE now() - (i %% 604800) * interval '1 second' - interval '1 hour' END,
       now(),
       CASE WHEN status IN ('completed', 'failed')
            THEN now() - (i %% 604800) * interval '1 second' END
FROM (
    SELECT i,
           '{"messages":[{"content":"Question ' || i || ': ' || repeat('some words ', 25)
               || '","role":"user"}],"model":"gpt-4o-mini"}' AS body,
           CASE WHEN i %% 100 < 6 THEN 'queued' WHEN i %% 100 < 8 THEN 'submitted'
                WHEN i %% 100 < 10 THEN 'failed' ELSE 'completed' END AS status
    FROM generate_series(1, %(rows)s) AS i
) AS gen,
(SELECT array_agg(id) AS running FROM batches_app_batch WHERE state = 'running') AS r;
"""


# The same mix on SQLite, which has no generate_series, arrays or md5: counted by a recursive
# CTE, ids and fingerprints from randomblob, times as Django stores them (UTC text).
FILL_SQLITE = (
    """
INSERT INTO batches_app_batch
    (id, endpoint, model, state, request_count, input_bytes, upstream_id, upstream_status,
     input_file_id, output_file_id, error_file_id, cancel_mode, next_attempt_at,
     upstream_failures, last_error, created_at, updated_at, finished_at, counted_tokens, upstream)
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2020)
SELECT lower(hex(randomblob(16))), '/v1/chat/completions', 'gpt-4o-mini',
       CASE WHEN i <= 20 THEN 'running' ELSE 'done' END, 500, 0, 'batch_' || i,
       CASE WHEN i <= 20 THEN 'in_progress' ELSE 'completed' END, '', '', '', '',
       datetime('now', '+' || (i %% 120) || ' seconds'), 0, '',
       datetime('now', '-' || (i * 300) || ' seconds'), datetime('now'),
       CASE WHEN i > 20 THEN datetime('now', '-' || (i * 300) || ' seconds') END, 0, 'default'
FROM n
""",
    """
INSERT INTO requests_app_batchrequest
    (id, api_key_id, endpoint, model, body, body_bytes, embedding_inputs, fingerprint, status,
     attempts, deferrals, batch_id, response_status, response_body, error_code, error_message,
     created_at, updated_at, finished_at)
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < %(rows)s),
gen AS (
    SELECT i,
           '{"messages":[{"content":"Question ' || i || ': '
               || replace(hex(zeroblob(25)), '00', 'some words ')
               || '","role":"user"}],"model":"gpt-4o-mini"}' AS body,
           CASE WHEN i %% 100 < 6 THEN 'queued' WHEN i %% 100 < 8 THEN 'submitted'
                WHEN i %% 100 < 10 THEN 'failed' ELSE 'completed' END AS status
    FROM n
),
running AS (
    SELECT id, row_number() OVER (ORDER BY id) - 1 AS k
    FROM batches_app_batch WHERE state = 'running'
)
SELECT lower(hex(randomblob(16))), %(key)s,
       CASE WHEN i %% 10 = 0 THEN '/v1/embeddings' WHEN i %% 10 = 1 THEN '/v1/responses'
            ELSE '/v1/chat/completions' END,
       CASE i %% 4 WHEN 0 THEN 'gpt-4o-mini' WHEN 1 THEN 'gpt-4o' WHEN 2 THEN 'gpt-4.1-mini'
            ELSE 'text-embedding-3-small' END,
       body, length(body), CASE WHEN i %% 10 = 0 THEN 1 ELSE 0 END,
       lower(hex(randomblob(32))), status,
       CASE WHEN status = 'queued' THEN 0 ELSE 1 END, 0,
       CASE WHEN status = 'submitted' THEN (SELECT id FROM running WHERE k = i %% 20) END,
       CASE WHEN status = 'completed' THEN 200 END,
       CASE WHEN status = 'completed' THEN '{"object":"chat.completion","choices":[{"message":'
            || '{"role":"assistant","content":"'
            || replace(hex(zeroblob(50)), '00', 'An answer. ') || '"}}]}' END,
       CASE WHEN status = 'failed' THEN 'server_error' ELSE '' END, '',
       CASE WHEN status IN ('queued', 'submitted')
            THEN datetime('now', '-' || (i %% 600) || ' seconds')
            ELSE datetime('now', '-' || (i %% 604800 + 3600) || ' seconds') END,
       datetime('now'),
       CASE WHEN status IN ('completed', 'failed')
            THEN datetime('now', '-' || (i %% 604800) || ' seconds') END
FROM gen
""",
)


def fill(rows: int) -> None:
    from django.db import connection

    from bench.common import truncate
    from requests_app.models import ApiKey

    truncate("requests_app_batchrequest", "batches_app_batch", "batches_app_upstreamfile")
    key, _ = ApiKey.objects.get_or_create(key_hash="bench-scale", defaults={"name": "bench"})
    began = time.perf_counter()
    params = {"key": key.pk, "rows": rows}
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            for sql in FILL_SQLITE:
                cursor.execute(sql, params)
            cursor.execute("ANALYZE")
        else:
            cursor.execute(FILL_SQL, params)
            cursor.execute("VACUUM ANALYZE requests_app_batchrequest")
            cursor.execute("VACUUM ANALYZE batches_app_batch")
    print(f"filled {rows:,} requests in {time.perf_counter() - began:.0f} s")


def timed(name: str, run, explain) -> float:
    """Median milliseconds of 7 runs; prints the plan of the query."""
    run()  # warm
    times = []
    for _ in range(7):
        began = time.perf_counter()
        run()
        times.append((time.perf_counter() - began) * 1000)
    median = statistics.median(times)
    verdict = "ok" if median < 100 else "OVER 100 ms"
    print(f"\n{name}: {median:.1f} ms median, {min(times):.1f} ms best ({verdict})")
    for line in explain().splitlines():
        print("    " + line)
    return median


def queries(key_hash: str, fingerprint: str) -> dict:
    """(run, explain) per selection, built from the code's own querysets where they exist."""
    from django.db import transaction
    from django.db.models import Count, Min, Sum
    from django.utils import timezone

    from batches_app import services
    from batches_app.models import Batch
    from requests_app.models import BatchRequest
    from requests_app.views import ANSWER_LOOKUP

    now = timezone.now()
    ready = services._ready(now)
    groups = ready.values("endpoint", "model").annotate(
        n=Count("pk"),
        bytes=Sum("body_bytes"),
        inputs=Sum("embedding_inputs"),
        oldest=Min("created_at"),
    )
    claim = (
        ready.filter(endpoint="/v1/chat/completions", model="gpt-4o-mini")
        .order_by("created_at", "pk")
        .values_list("pk", "body_bytes", "embedding_inputs", "created_at")[:50_000]
    )

    def claim_locked():
        with transaction.atomic():
            list(claim.select_for_update(skip_locked=True))
            transaction.set_rollback(True)

    def explain_locked(queryset) -> str:
        with transaction.atomic():
            return queryset.select_for_update(skip_locked=True).explain()

    due = (
        Batch.objects.filter(state__in=Batch.ACTIVE, next_attempt_at__lte=now)
        .order_by("created_at")
        .values_list("pk", flat=True)
    )
    answer = BatchRequest.objects.filter(api_key__key_hash=key_hash, fingerprint=fingerprint)
    found = {
        "intake lookup (repeat ask: request joined with its key)": (
            lambda: ANSWER_LOOKUP.first(key_hash, fingerprint),
            lambda: answer.values("id", "status", "api_key__revoked_at")[:1].explain(),
        ),
        "flush selection: due groups (batch_flush)": (lambda: list(groups.all()), groups.explain),
        f"flush selection: one batch's claim, FOR UPDATE SKIP LOCKED ({claim.count():,} rows)": (
            claim_locked,
            lambda: explain_locked(claim),
        ),
        "poll selection: batches due (batches_advance)": (lambda: list(due.all()), due.explain),
    }
    day = now - timedelta(days=1)
    queued = BatchRequest.objects.filter(status=BatchRequest.Status.QUEUED)
    by_state = Batch.objects.values("state").annotate(n=Count("pk")).order_by("state")
    try:  # the dashboard's own queries, when the dashboard is there
        from batches_app import dashboard
    except ImportError:
        dashboard = None
    if dashboard is not None and hasattr(dashboard, "queue_depth"):
        depth_qs = (
            BatchRequest.objects.filter(status__in=BatchRequest.PENDING)
            .values("endpoint", "model")
            .annotate(n=Count("pk"))
        )
        found["dashboard: queue depth per endpoint and model (dashboard.queue_depth)"] = (
            lambda: dashboard.queue_depth(now=now),
            depth_qs.explain,
        )
        finished = BatchRequest.objects.filter(finished_at__gte=day)
        found["dashboard: completed and failed in the last day (dashboard.finished_counts)"] = (
            lambda: dashboard.finished_counts(since=day),
            finished.values("status").annotate(n=Count("pk")).explain,
        )
    else:
        depth_qs = queued.values("endpoint", "model").annotate(n=Count("pk"))
        found["dashboard: queue depth per endpoint and model"] = (
            lambda: list(depth_qs.all()),
            depth_qs.explain,
        )
        done_day = (
            BatchRequest.objects.filter(status__in=("completed", "failed"), finished_at__gte=day)
            .values("status")
            .annotate(n=Count("pk"))
        )
        found["dashboard: completed and failed in the last day"] = (
            lambda: list(done_day.all()),
            done_day.explain,
        )
    oldest = queued.order_by("created_at").values_list("created_at", flat=True)[:1]
    found["dashboard: oldest waiting request"] = (
        lambda: queued.aggregate(m=Min("created_at")),
        oldest.explain,
    )
    found["dashboard: batches by state"] = (lambda: list(by_state.all()), by_state.explain)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--refill", action="store_true", help="make the rows again")
    args = parser.parse_args()
    django_setup()
    from requests_app.models import BatchRequest

    print(machine())
    if args.refill or BatchRequest.objects.count() != args.rows:
        fill(args.rows)
    key_hash, fingerprint = BatchRequest.objects.filter(status="queued").values_list(
        "api_key__key_hash", "fingerprint"
    )[0]
    print(f"{BatchRequest.objects.count():,} requests in the table")
    results = {
        name: timed(name, run, explain)
        for name, (run, explain) in queries(key_hash, fingerprint).items()
    }
    print("\nsummary (median ms, target < 100 ms each):")
    for name, ms in results.items():
        print(f"  {ms:8.1f}  {'ok  ' if ms < 100 else 'OVER'}  {name}")


if __name__ == "__main__":
    main()
