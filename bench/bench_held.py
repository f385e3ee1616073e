"""Thousands of held callers (streams and `Prefer: wait`) on the proxy as deployed.

    python -m bench.bench_held [--callers 10000] [--workers 2] [--stream-share 0.5]

The proxy runs as deployed (gunicorn with uvicorn's worker, batchproxy/gunicorn.conf.py) on
PostgreSQL, in front of the fake OpenAI. One asyncio client opens --callers connections, each a
new chat call with its own text: a share of them `stream: true`, the rest `Prefer: wait=900`.
Once every call is queued (and held) it measures what a held crowd costs and whether the web
tier still serves others: the web processes' memory (RSS, master and workers), new calls that
are not held and /healthz, timed. Then this process runs the engine (flush, submit, poll,
ingest: what the scheduler does) and times each caller from the end of the ingest to the end
of its answer, checking that each got its own.
"""

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.bench_web import free_port
from bench.common import ROOT, bench_env, django_setup, load, machine, truncate

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
CALL = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"held %s"}]%s}'  # %s: stream


def request_bytes(secret: str, text: str, *, stream: bool) -> bytes:
    body = (CALL % (text, ',"stream":true' if stream else "")).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        + ("" if stream else "Prefer: wait=900\r\n")
        + "Connection: close\r\n\r\n"
    )
    return head.encode() + body


async def call(port: int, payload: bytes) -> tuple[int, bytes, float]:
    """One request on a connection of its own; the status, the whole answer, when it ended."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    writer.write(payload)
    await writer.drain()
    data = await reader.read()  # Connection: close: the answer ends with the connection
    ended = time.monotonic()
    writer.close()
    status = int(data.split(b" ", 2)[1]) if data else 0
    return status, data, ended


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB."""
    pids = [pid] + [
        int(child)
        for child in subprocess.run(  # noqa: S603 (pgrep, fixed arguments)
            ["pgrep", "-P", str(pid)],  # noqa: S607
            capture_output=True,
            text=True,
        ).stdout.split()
    ]
    total = 0
    for each in pids:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def start_proxy(port: int, workers: int, fake_url: str, log: Path) -> subprocess.Popen:
    env = bench_env() | {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": str(workers),
        "WEB_MAX_REQUESTS": "0",
        "WEB_KEEPALIVE": "900",
        "WEB_TIMEOUT": "900",
        "OPENAI_BASE_URL": fake_url,
        "OPENAI_API_KEY": "sk-fake",
        "MAX_HOLD_SECONDS": "900",
        "DJANGO_SETTINGS_MODULE": "batchproxy.settings",
    }
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    proxy = subprocess.Popen(  # noqa: S603 (the venv's gunicorn, fixed arguments)
        [gunicorn, "-c", "batchproxy/gunicorn.conf.py"],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    return proxy


async def wait_http(port: int) -> None:
    for _ in range(300):
        try:
            status, _, _ = await call(port, HEALTHZ)
            if status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("the proxy did not start")


async def timed(port: int, payload: bytes) -> tuple[int, float]:
    started = time.monotonic()
    status, _, ended = await call(port, payload)
    return status, (ended - started) * 1000


async def run(args, secret: str, port: int, proxy: subprocess.Popen) -> None:
    from asgiref.sync import sync_to_async

    from batches_app import services
    from requests_app.models import BatchRequest

    def cycle() -> None:
        services.batch_flush(force=True)
        services.batches_advance(force=True)
        services.batches_advance(force=True)

    await wait_http(port)
    streams = int(args.callers * args.stream_share)
    texts = [f"{uuid.uuid4().hex[:12]}-{i}" for i in range(args.callers)]
    idle_rss = rss_mb(proxy.pid)
    started = time.monotonic()
    tasks = []
    for i, text in enumerate(texts):
        payload = request_bytes(secret, text, stream=i < streams)
        tasks.append(asyncio.create_task(call(port, payload)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)  # a ramp, as callers arrive
    count = sync_to_async(BatchRequest.objects.count)
    while (queued := await count()) < args.callers:
        if time.monotonic() - started > 600:
            raise SystemExit(f"only {queued} of {args.callers} calls queued")
        await asyncio.sleep(0.5)
    print(
        f"{args.callers} callers held ({streams} streams) after {time.monotonic() - started:.1f} s"
    )
    await asyncio.sleep(2)
    held_rss = rss_mb(proxy.pid)
    print(f"web processes' memory: {idle_rss:.0f} MB idle, {held_rss:.0f} MB holding them")
    others = []
    for i in range(50):
        new = request_bytes(secret, f"not held {uuid.uuid4().hex}-{i}", stream=False)
        new = new.replace(b"Prefer: wait=900\r\n", b"")
        others.append(await timed(port, new))
        others.append(await timed(port, HEALTHZ))
    statuses = sorted({status for status, _ in others})
    times = sorted(ms for _, ms in others)
    print(
        f"meanwhile 50 new calls (422) and 50 /healthz: statuses {statuses}, "
        f"median {statistics.median(times):.1f} ms, max {times[-1]:.1f} ms"
    )
    # The engine, as the scheduler runs it; the callers are answered from its ingest on, while
    # /healthz is asked every 50 ms.
    probes = []

    async def probe() -> None:
        while True:
            probes.append(await timed(port, HEALTHZ))
            await asyncio.sleep(0.05)

    probing = asyncio.create_task(probe())
    cycle_started = time.monotonic()
    await sync_to_async(cycle, thread_sensitive=True)()
    landed = time.monotonic()
    print(
        f"flush, submit, poll and ingest of {args.callers} requests: {landed - cycle_started:.1f} s"
    )
    results = await asyncio.gather(*tasks)
    probing.cancel()
    slowest = max(ms for _, ms in probes)
    statuses = sorted({status for status, _ in probes})
    print(
        f"/healthz during the release: {len(probes)} asked, statuses {statuses}, "
        f"slowest {slowest:.0f} ms"
    )
    delays = sorted(ended - landed for _, _, ended in results)
    own = sum(
        (f"echo: held {text}".encode() in data) and status == 200
        for text, (status, data, _) in zip(texts, results, strict=True)
    )
    print(
        f"answered: {own} of {args.callers} with their own answer; from the end of the engine's "
        f"cycle (negative: before it returned, as its ingest commits): "
        f"median {statistics.median(delays):.2f} s, p99 {delays[int(len(delays) * 0.99)]:.2f} s,"
        f" last {delays[-1]:.2f} s ({load()})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--callers", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stream-share", type=float, default=0.5)
    args = parser.parse_args()
    django_setup()
    from django.conf import settings

    from batchproxy.fakes.openai import FakeOpenAI
    from requests_app.models import ApiKey, hash_key

    print(machine())
    print(f"gunicorn with uvicorn's worker, {args.workers} workers; {args.callers} callers")
    truncate("requests_app_batchrequest", "batches_app_batch")
    secret = ApiKey.new_secret()
    ApiKey.objects.create(key_hash=hash_key(secret), name="bench-held", prefix=secret[:8])
    fake = FakeOpenAI().start()
    settings.OPENAI_BASE_URL, settings.OPENAI_API_KEY = fake.url, "sk-fake"
    settings.BATCH_MAX_REQUESTS = max(settings.BATCH_MAX_REQUESTS, args.callers + 100)
    tmp = Path(tempfile.mkdtemp(prefix="batchproxy-held-"))
    port = free_port()
    proxy = start_proxy(port, args.workers, fake.url, tmp / "proxy.log")
    try:
        asyncio.run(run(args, secret, port, proxy))
    finally:
        proxy.terminate()
        proxy.wait(timeout=60)
        fake.stop()


if __name__ == "__main__":
    main()
