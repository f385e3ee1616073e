"""A job four times a model's enqueued-token limit, through the engine and the fake OpenAI.

    python -m bench.bench_queue_limit [--requests 240] [--step 1.0]

The fake refuses, as OpenAI does, a batch whose tokens with those of the model's unfinished
batches exceed its limit; each of its batches takes 3 x `--step` seconds. The flush and poll
tasks run back to back (what the scheduler's ticks do), once with the limit configured in the
proxy and once with none, and the time to the last answer, the batches and the refusals are
reported for each.
"""

import argparse
import json
import os
import time
import uuid

from bench.common import django_setup, machine, truncate

MODEL = "gpt-4o"


def prompt(n: int) -> str:
    return f"{n}: " + uuid.uuid5(uuid.NAMESPACE_OID, str(n)).hex * 5


def run(*, requests: int, limit: int, configured: bool, step: float) -> dict:
    from django.conf import settings

    from batches_app import tasks
    from batchproxy.fakes.openai import FakeOpenAI
    from requests_app.models import ApiKey, BatchRequest
    from requests_app.services import call_parse, requests_enqueue

    truncate(
        "requests_app_batchrequest",
        "batches_app_batch",
        "batches_app_upstreamfile",
        "batches_app_queuelimit",
    )
    fake = FakeOpenAI(step_seconds=step).start()
    fake.configure(enqueued_token_limits={MODEL: limit})
    settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY = fake.url, "sk-bench"
    settings.QUEUE_LIMITS = {MODEL: limit} if configured else {}
    settings.POLL_INTERVAL = settings.BATCH_MAX_WAIT = settings.UPSTREAM_BACKOFF = 0
    key, _ = ApiKey.objects.get_or_create(key_hash="bench-queue", defaults={"name": "bench"})
    for n in range(requests):
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": prompt(n)}]})
        call = call_parse(endpoint="/v1/chat/completions", raw=body.encode())
        requests_enqueue(api_key_id=key.pk, call=call)
    began = time.perf_counter()
    try:
        while BatchRequest.objects.filter(status__in=BatchRequest.PENDING).exists():
            tasks.flush()
            tasks.poll()
            time.sleep(0.05)
        elapsed = time.perf_counter() - began
        batches = fake.batches.values()
    finally:
        fake.stop()
    refused = [b for b in batches if b["errors"] and b["errors"]["data"][0]["code"]]
    done = BatchRequest.objects.filter(status=BatchRequest.Status.COMPLETED).count()
    return {
        "configured": configured,
        "seconds": round(elapsed, 1),
        "batches": len(batches),
        "refusals": len(refused),
        "answered": done,
        "fake_tokens": sum(len(prompt(n)) // 4 + 2 for n in range(requests)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--limit", type=int, default=3_000)
    parser.add_argument("--step", type=float, default=1.0)
    args = parser.parse_args()
    django_setup()
    print(machine())
    for configured in (True, False):
        result = run(
            requests=args.requests, limit=args.limit, configured=configured, step=args.step
        )
        print(
            f"limit {'configured' if configured else 'not set'}: {result['answered']} of "
            f"{args.requests} answered in {result['seconds']} s, {result['batches']} batches, "
            f"{result['refusals']} refused ({result['fake_tokens'] / args.limit:.1f} x the limit, "
            f"batches of {3 * args.step:.0f} s upstream)"
        )
        print("JSON " + json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
