"""Ingest: a completed batch of 50,000 results (about 2 KB each) downloaded from the fake OpenAI
and written back to its requests.

    python -m bench.bench_ingest [--requests 50000] [--webhooks N]

`--webhooks N` registers N completion-webhook endpoints (for every key) first, so that the
ingest also writes N outbox events per request.

The ingest runs in a child process of its own, so that its peak memory (ru_maxrss) is only the
ingest's; the fake OpenAI, which holds the output file, runs in this process.
"""

import argparse
import json
import os
import sys
import time

from bench.common import bench_env, django_setup, machine, peak_rss_mb, run_child, truncate

# An answer of about 2 KB: a chat completion with a long reply.
REPLY = "The compact drawer unit fits a small kitchen best, because it is narrow. " * 24


def output_file(request_ids: list[str]) -> bytes:
    lines = []
    for n, request_id in enumerate(request_ids):
        body = {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion",
            "created": 1767000000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"{n}: {REPLY}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 230, "completion_tokens": 410, "total_tokens": 640},
        }
        line = {
            "id": f"batch_req_{n}",
            "custom_id": request_id,
            "response": {"status_code": 200, "request_id": f"req_{n}", "body": body},
            "error": None,
        }
        lines.append(json.dumps(line))
    return ("\n".join(lines) + "\n").encode()


def child(batch_id: str) -> None:
    """One tick of the poll schedule for a batch whose results are in: ingest, settle, finish."""
    django_setup(migrate=False)
    from batches_app import services, upstream
    from batches_app.models import Batch
    from batches_app.outcomes import LineOutcome
    from requests_app.models import BatchRequest, WebhookEvent

    start_mb = peak_rss_mb()
    # The download and parsing alone, to tell them from the database's share of the time.
    began = time.perf_counter()
    file_id = Batch.objects.get(pk=batch_id).output_file_id
    for line in upstream.iter_file_lines(file_id):
        LineOutcome.parse(line)
    download_s = time.perf_counter() - began
    began = time.perf_counter()
    error = services.batch_step(batch_id=batch_id)
    took = time.perf_counter() - began
    counts = dict(
        BatchRequest.objects.filter(batch_id=batch_id)
        .values_list("status")
        .annotate(n=__import__("django.db.models", fromlist=["Count"]).Count("pk"))
    )
    print(
        "JSON "
        + json.dumps(
            {
                "error": error,
                "seconds": took,
                "download_parse_s": download_s,
                "start_mb": start_mb,
                "peak_mb": peak_rss_mb(),
                "state": Batch.objects.get(pk=batch_id).state,
                "webhook_events": WebhookEvent.objects.count(),
                "statuses": counts,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--webhooks", type=int, default=0, help="webhook endpoints to register")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    django_setup()
    from django.utils import timezone

    from batches_app.models import Batch
    from batchproxy.fakes.openai import FakeOpenAI
    from bench.engine_data import requests_fill
    from requests_app.models import ApiKey, BatchRequest, WebhookEndpoint

    print(machine())
    truncate(
        "requests_app_batchrequest",
        "batches_app_batch",
        "batches_app_upstreamfile",
        "requests_app_webhookendpoint",
        "requests_app_webhookevent",
    )
    for n in range(args.webhooks):
        WebhookEndpoint.objects.create(
            url=f"https://hooks.example.com/{n}", secret=WebhookEndpoint.new_secret()
        )
    key, _ = ApiKey.objects.get_or_create(key_hash="bench-ingest", defaults={"name": "bench"})
    batch = Batch.objects.create(
        endpoint="/v1/chat/completions",
        model="gpt-4o-mini",
        state=Batch.State.INGESTING,
        upstream_id="batch_bench",
        upstream_status="completed",
        upstream_created_at=timezone.now(),
        request_count=args.requests,
    )
    requests_fill(
        api_key_id=key.pk, count=args.requests, status="submitted", batch_id=batch.pk, attempts=1
    )
    ids = [str(pk) for pk in BatchRequest.objects.filter(batch=batch).values_list("pk", flat=True)]
    content = output_file(ids[::-1])  # not in input order, like OpenAI's
    fake = FakeOpenAI().start()
    try:
        with fake._lock:
            stored = fake._store_file(content, "batch_bench_output.jsonl", "batch_output")
        Batch.objects.filter(pk=batch.pk).update(output_file_id=stored["id"])
        del content
        env = bench_env() | {"OPENAI_BASE_URL": fake.url, "OPENAI_API_KEY": "sk-bench"}
        out = run_child("bench.bench_ingest", "--child", str(batch.pk), env=env)
        result = json.loads(out.split("JSON ", 1)[1])
    finally:
        fake.stop()
    print(
        f"ingest of {args.requests:,} results ({stored['bytes'] / 1e6:.1f} MB output file): "
        f"{result['seconds']:.2f} s (target < 20 s; downloading and parsing alone: "
        f"{result['download_parse_s']:.2f} s); peak memory {result['peak_mb']:.0f} MB "
        f"(of which {result['start_mb']:.0f} MB is Django at rest; target < 300 MB); "
        f"batch {result['state']}, requests {result['statuses']}, "
        f"webhook events {result['webhook_events']:,}"
    )
    print("JSON " + json.dumps(result | {"output_bytes": stored["bytes"]}))
    if result["statuses"].get("completed") != args.requests:
        sys.exit("the ingest did not deliver every result")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
