"""Flush: 50,000 queued requests (about 1 KB each) claimed into a batch, written as one JSONL
file and uploaded to the fake OpenAI.

    python -m bench.bench_flush [--requests 50000] [--deadline SECONDS]

With `--deadline`, every request has that deadline (seconds after its call), and the child first
runs one tick's deadline work (`tiers.deadlines_tick`: defaults, the tier choice, escalations,
the dispatch of synchronous sends, which are counted, not sent): the cost deadlines add to a
flush. A long deadline leaves every request to its batch; one shorter than the batch forecast
routes every request to a synchronous tier, and the flush then has nothing to batch.

The flush runs in a child process of its own, so that its peak memory (ru_maxrss) is only the
flush's; the fake OpenAI runs in this process.
"""

import argparse
import json
import os
import sys
import time
from datetime import timedelta

from bench.common import bench_env, django_setup, machine, peak_rss_mb, run_child, truncate


def child() -> None:
    """Claim, then upload: what the flush schedule and the next tick do."""
    django_setup(migrate=False)
    from batches_app import services, tiers
    from batches_app.models import Batch
    from requests_app.models import BatchRequest

    start_mb = peak_rss_mb()
    tick_began = time.perf_counter()
    report = tiers.deadlines_tick(send=lambda request_id, token: None)
    began = time.perf_counter()
    # What the flush does first for requests it has not seen: count their input tokens.
    for group in BatchRequest.objects.values("endpoint", "model").distinct():
        services.tokens_fill(**group)
    counted = time.perf_counter()
    batches = services.batch_flush(force=True)
    claimed = time.perf_counter()
    for batch in batches:
        services._upload(batch)  # the step under test: JSONL written and uploaded
    uploaded = time.perf_counter()
    states = sorted(Batch.objects.values_list("state", flat=True))
    print(
        "JSON "
        + json.dumps(
            {
                "deadline_tick_s": began - tick_began,
                "routed": report.routed,
                "sends_started": len(report.sent),
                "batches": len(batches),
                "requests": sum(b.request_count for b in batches),
                "count_s": counted - began,
                "claim_s": claimed - counted,
                "upload_s": uploaded - claimed,
                "total_s": uploaded - began,
                "start_mb": start_mb,
                "peak_mb": peak_rss_mb(),
                "states": states,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--deadline", type=int, default=None, help="seconds after each call")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child()
    django_setup()
    from batchproxy.fakes.openai import FakeOpenAI
    from bench.engine_data import requests_fill
    from requests_app.models import ApiKey

    print(machine())
    truncate("requests_app_batchrequest", "batches_app_batch", "batches_app_upstreamfile")
    key, _ = ApiKey.objects.get_or_create(key_hash="bench-flush", defaults={"name": "bench"})
    requests_fill(api_key_id=key.pk, count=args.requests, status="queued")
    if args.deadline is not None:
        from django.db.models import F

        from requests_app.models import BatchRequest

        BatchRequest.objects.update(deadline=F("created_at") + timedelta(seconds=args.deadline))
    fake = FakeOpenAI().start()
    try:
        env = bench_env() | {"OPENAI_BASE_URL": fake.url, "OPENAI_API_KEY": "sk-bench"}
        out = run_child("bench.bench_flush", "--child", env=env)
        result = json.loads(out.split("JSON ", 1)[1])
        files = [f["object"] for f in fake.files.values() if f["object"]["purpose"] == "batch"]
    finally:
        fake.stop()
    lines = sum(f["bytes"] for f in files)
    print(
        f"deadline work of the tick: {result['deadline_tick_s']:.2f} s, "
        f"{result['routed']:,} routed to a synchronous tier, "
        f"{result['sends_started']} sends started"
    )
    print(
        f"flush of {result['requests']:,} requests into {result['batches']} batch(es): "
        f"token count {result['count_s']:.2f} s + claim {result['claim_s']:.2f} s + JSONL and "
        f"upload {result['upload_s']:.2f} s = "
        f"{result['total_s']:.2f} s (target < 20 s); peak memory {result['peak_mb']:.0f} MB "
        f"(of which {result['start_mb']:.0f} MB is Django at rest; target < 300 MB); "
        f"uploaded {len(files)} file(s), {lines / 1e6:.1f} MB"
    )
    print("JSON " + json.dumps(result | {"uploaded_bytes": lines}))
    batched = result["requests"] + result["routed"]
    if batched != args.requests or len(files) != result["batches"]:
        sys.exit("the flush did not upload every request")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
