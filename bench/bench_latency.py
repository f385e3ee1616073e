"""Latency of the engine under its own django-q2 scheduler: how long the proxy adds to OpenAI.

    python -m bench.bench_latency [--rounds 8] [--step-seconds 1] [--modes webhooks,polling]

For each mode it runs the whole proxy (`manage.py serve`: gunicorn and `qcluster`, nothing
else driving it) against the fake OpenAI in this process, on the benchmark's PostgreSQL
database, and measures per round:

- *due -> created*: from the call that fills a group (BATCH_MAX_REQUESTS requests; the wait is
  an hour, so only its size makes it due) to the batch's creation upstream;
- *finished -> served*: from the moment the fake finishes the batch upstream to the first
  identical call that gets the answer (each caller asks every 0.1 s, to see when the answer is
  there rather than when Retry-After says to come back).

Modes: `webhooks` (the fake sends signed `batch.completed` webhooks to `/webhooks/openai`,
POLL_INTERVAL=3600, so only a webhook brings the answer soon) and `polling` (no webhooks,
POLL_INTERVAL=60, the default). Rounds start a few seconds apart and overlap.
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx2

from bench.common import ROOT, bench_env, django_setup, machine, truncate

GROUP = 5  # requests per batch: BATCH_MAX_REQUESTS
KEY = "bench-latency-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TimedFake:
    """The fake OpenAI, noting when each batch was created and when it finished upstream."""

    def __init__(self, step_seconds: float):
        from batchproxy.fakes.openai import FakeOpenAI

        fake = FakeOpenAI(step_seconds=step_seconds).start()
        self.fake, self.step = fake, step_seconds
        self.created: dict[str, float] = {}  # each request's text -> its batch's creation
        original = fake._create

        def create(request):
            reply = original(request)
            run = fake._runs[next(reversed(fake._batches))]
            for _, line in run.lines:
                self.created[line["body"]["messages"][0]["content"]] = run.started
            return reply

        fake._create = create

    def finished_at(self, text: str) -> float:
        # The fake completes a batch 3 steps after its creation (validating, in_progress,
        # finalizing), to the millisecond; its webhook goes out within 0.1 s of that.
        return self.created[text] + 3 * self.step


def serve(port: int, fake_url: str, extra: dict) -> subprocess.Popen:
    env = bench_env() | {
        "DJANGO_SETTINGS_MODULE": "batchproxy.settings",
        "OPENAI_BASE_URL": fake_url,
        "OPENAI_API_KEY": "sk-bench",
        "BATCH_SERVER_API_KEY": KEY,
        "BATCH_MAX_REQUESTS": str(GROUP),
        "BATCH_MAX_WAIT": "3600",
        "WEB_CONCURRENCY": "1",
        "LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "manage.py", "serve", "--port", str(port)]
    return subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        command, cwd=ROOT, env=env | extra, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def wait_until_up(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(proc.stderr.read().decode()[-3000:])
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the proxy did not start")


def one_round(port: int, fake: TimedFake, name: str, results: list) -> None:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {KEY}"}
    bodies = [
        # A model per round: its group is its own, due by its size alone.
        {"model": f"gpt-bench-{name}", "messages": [{"role": "user", "content": f"{name}-{i}"}]}
        for i in range(GROUP)
    ]
    with httpx2.Client(headers=headers, timeout=30) as http:
        for body in bodies:
            assert http.post(url, json=body).status_code == 422
        filled = time.time()
        first = bodies[0]["messages"][0]["content"]
        while True:
            answered = http.post(url, json=bodies[0])
            if answered.status_code == 200:
                served = time.time()
                break
            assert answered.status_code == 422, answered.text
            time.sleep(0.1)
    results.append(
        {
            "due_to_created": fake.created[first] - filled,
            "finished_to_served": served - fake.finished_at(first),
        }
    )


def run_mode(mode: str, rounds: int, step: float, gap: float) -> dict:
    from batchproxy.fakes.openai import new_webhook_secret

    truncate("requests_app_batchrequest", "batches_app_batch", "batches_app_openaiwebhook")
    fake = TimedFake(step)
    port = free_port()
    if mode == "webhooks":
        secret = new_webhook_secret()
        fake.fake.configure(
            webhook_url=f"http://127.0.0.1:{port}/webhooks/openai", webhook_secret=secret
        )
        extra = {"OPENAI_WEBHOOK_SECRET": secret, "POLL_INTERVAL": "3600"}
    else:
        extra = {"OPENAI_WEBHOOK_SECRET": "", "POLL_INTERVAL": "60"}
    proc = serve(port, fake.fake.url, extra)
    results: list[dict] = []
    try:
        wait_until_up(port, proc)
        time.sleep(15)  # the cluster's start: its first tick chain is queued by serve
        threads = []
        for number in range(rounds):
            thread = threading.Thread(
                target=one_round, args=(port, fake, f"{mode}-{number}", results)
            )
            thread.start()
            threads.append(thread)
            time.sleep(gap)
        for thread in threads:
            thread.join(300)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        fake.fake.stop()
    return {
        key: (
            statistics.median(r[key] for r in results),
            max(r[key] for r in results),
            min(r[key] for r in results),
        )
        for key in ("due_to_created", "finished_to_served")
    } | {"rounds": len(results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--step-seconds", type=float, default=1.0)
    parser.add_argument("--gap", type=float, default=3.0, help="seconds between round starts")
    parser.add_argument("--modes", default="webhooks,polling")
    args = parser.parse_args()
    os.environ.setdefault("TICK_SECONDS", "5")
    django_setup()
    print(machine())
    print(
        f"TICK_SECONDS={os.environ['TICK_SECONDS']}, {GROUP} requests per batch, "
        f"fake batches take {3 * args.step_seconds:g} s"
    )
    for mode in args.modes.split(","):
        figures = run_mode(mode, args.rounds, args.step_seconds, args.gap)
        print(f"{mode}: {figures['rounds']} rounds")
        for key in ("due_to_created", "finished_to_served"):
            median, worst, best = figures[key]
            label = key.replace("_to_", " -> ").replace("_", " ")
            print(f"  {label:20} median {median:5.2f} s, max {worst:5.2f} s, min {best:5.2f} s")


if __name__ == "__main__":
    main()
