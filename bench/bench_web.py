"""Intake and repeat asks through the proxy's web server, side by side with the strict bare-Django
baseline.

    python -m bench.bench_web [--one-worker] [--seconds 5] [--rounds 6] [--connections 8]
                              [--count-statements] [--server asgi|wsgi|uvicorn|granian]

The baseline, bare Django (bench/views.py, mounted only by bench/urls.py and served by
bench/wsgi.py with no middleware at all), runs on gunicorn's threaded worker with the project's
own config (batchproxy/gunicorn.conf.py). The proxy runs on --server, a process of its own
(`asgi`, the default: gunicorn with uvicorn's worker, as deployed), or, with `wsgi`, in the
baseline's process. `wrk` drives them in alternating order, round after round, on loopback, for
a bounded time each, so that noise from other processes on the machine falls on both alike.

- intake: new calls to POST /v1/chat/completions (a ~1 KB body, unique per call) against
  /bare/insert (parse, hash, insert one row with the ORM).
- repeat: identical calls for queued requests against /bare/fetch (hash, fetch one row by a
  unique index).

--one-worker: each server with 1 worker of 8 threads and wrk with 32 connections, as issue 24
measures (with two workers, keep-alive connections land on one worker or both at random).
--count-statements: also 100 new calls and 100 repeats of each, one at a time, counted by
PostgreSQL itself (pg_stat_database, pg_stat_user_tables): transactions and index scans per call.
"""

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import (
    ROOT,
    analyze,
    bench_env,
    database_url,
    django_setup,
    load,
    machine,
    truncate,
)

PROXY_PATH = "/v1/chat/completions"
# About 1 KB once the marker is in: a system prompt, a question, some options.
BODY = (
    '{"model":"gpt-4o-mini","temperature":0.2,"max_tokens":300,"messages":['
    '{"role":"system","content":"' + "You answer questions about the catalogue. " * 20 + '"},'
    '{"role":"user","content":"Question %s: which of the listed items fits a small kitchen?"}]}'
)
REPEAT_SET = 1000

LUA = r"""
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  counter = 0; ok = 0; other = 0; first_other = ""
end
request = function()
  counter = counter + 1
  local body = string.format([[%(body)s]], %(marker)s)
  return wrk.format("POST", "%(path)s", {["Authorization"] = "Bearer %(secret)s",
    ["Content-Type"] = "application/json"}, body)
end
response = function(status, headers, body)
  if status == %(expected)d then ok = ok + 1 else
    other = other + 1
    if first_other == "" then first_other = status .. " " .. body end
  end
end
done = function(summary, latency, requests)
  local n_ok, n_other, sample = 0, 0, ""
  for _, t in ipairs(threads) do
    n_ok = n_ok + t:get("ok"); n_other = n_other + t:get("other")
    if sample == "" then sample = t:get("first_other") end
  end
  io.write(string.format("RESULT %%d %%d %%.6f %%d %%d %%s\n", n_ok, n_other,
    summary.duration / 1e6, latency:percentile(50), latency:percentile(99), sample))
end
"""


def lua_script(tmp: Path, name: str, *, path: str, expected: int, marker: str, secret: str) -> str:
    script = tmp / f"{name}.lua"
    script.write_text(
        LUA % {"body": BODY, "marker": marker, "path": path, "expected": expected, "secret": secret}
    )
    return str(script)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The servers the proxy can be measured on (--server); the baseline is always bare Django on
# gunicorn. Each with one worker process.
SERVERS = {
    # As deployed: gunicorn with uvicorn's worker, the ASGI application.
    "asgi": ["gunicorn", "-c", "batchproxy/gunicorn.conf.py"],
    # gunicorn's threaded worker (the proxy's BufferingThreadWorker), WSGI: the baseline's.
    "wsgi": ["gunicorn", "-c", "batchproxy/gunicorn.conf.py", "bench.wsgi"],
    "uvicorn": [
        "uvicorn", "batchproxy.asgi:application", "--host", "127.0.0.1", "--port", "{port}",
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ],
    "granian": [
        "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}",
        "--workers", "1", "--loop", "uvloop", "--no-ws", "--log-level", "warning",
        "batchproxy.asgi:application",
    ],
}  # fmt: skip


def start_server(
    port: int, log: Path, settings: dict[str, str], server: str = "wsgi"
) -> subprocess.Popen:
    env = bench_env() | {"HOST": "127.0.0.1", "PORT": str(port)} | settings
    if server == "wsgi":
        env["WEB_WORKER_CLASS"] = "batchproxy.web_worker.BufferingThreadWorker"
    program, *arguments = SERVERS[server]
    command = [str(Path(sys.executable).with_name(program))]
    command += [argument.format(port=port) for argument in arguments]
    server = subprocess.Popen(  # noqa: S603 (the venv's servers, fixed arguments)
        command,
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            time.sleep(0.2)
    server.terminate()
    raise SystemExit(f"the server did not start; see {log}")


def server_settings(connections: int, *, one_worker: bool = False) -> dict[str, str]:
    """gunicorn's settings for the run: the environment's, else the proxy's defaults (2 workers,
    4 threads each) with wrk's connections shared evenly between the workers, never recycled.

    A keep-alive connection stays with the worker that accepted it, and left alone, wrk's 8
    landed either on both workers or all on one, at random: twice the throughput or half from
    one run to the next (746 against about 1,600 req/s for the same view). WEB_WORKER_CONNECTIONS
    caps each worker's share, so the split is even every time. No recycling (WEB_MAX_REQUESTS=0),
    because a run would measure the second a recycled worker takes to come back.
    """
    if one_worker:
        return {"WEB_CONCURRENCY": "1", "WEB_THREADS": "8", "WEB_MAX_REQUESTS": "0"}
    workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
    share = str(-(-connections // workers))
    return {
        "WEB_CONCURRENCY": str(workers),
        "WEB_THREADS": os.environ.get("WEB_THREADS", "4"),
        "WEB_WORKER_CONNECTIONS": os.environ.get("WEB_WORKER_CONNECTIONS", share),
        "WEB_MAX_REQUESTS": os.environ.get("WEB_MAX_REQUESTS", "0"),
    }


def post(port: int, path: str, body: str, secret: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    conn.request("POST", path, body=body.encode(), headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


def run_wrk(port: int, script: str, seconds: float, connections: int) -> dict:
    out = subprocess.run(  # noqa: S603 (wrk from PATH, fixed arguments)
        [  # noqa: S607 (wrk from PATH, as apt-get installs it)
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{int(seconds)}s",
            "--timeout",
            "10s",
            "-s",
            script,
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT"))
    _, ok, other, duration, p50, p99, *sample = line.split(" ", 6)
    if int(other):
        print(f"  !! {other} unexpected answers, e.g. {' '.join(sample)[:200]}", flush=True)
    if not int(ok):
        print("  !! no answer at all; wrk said:\n" + out, flush=True)
    return {
        "rps": int(ok) / float(duration),
        "ok": int(ok),
        "other": int(other),
        "p50_ms": int(p50) / 1000,
        "p99_ms": int(p99) / 1000,
    }


def measure(pair: dict, *, ports: dict, rounds: int, seconds: float, connections: int) -> dict:
    """Alternate the two targets, ABBA-wise; the median of each one's rounds, and the ratio.

    The ratio is the median of the rounds' own ratios: the two runs of a round are seconds
    apart, so a slow spell of the machine falls on both, where it would shift one median alone.
    """
    results = {name: [] for name in pair}
    names = list(pair)
    for name in names:  # warm-up: connections, caches, the query plans
        run_wrk(ports[name], pair[name](), 2, connections)
    for round_no in range(rounds):
        order = names if round_no % 2 == 0 else names[::-1]
        for name in order:
            result = run_wrk(ports[name], pair[name](), seconds, connections)
            results[name].append(result)
            print(
                f"  round {round_no + 1} {name:>6}: {result['rps']:8.0f} req/s  "
                f"p50 {result['p50_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms  ({load()})",
                flush=True,
            )
    medians = {name: statistics.median(r["rps"] for r in rs) for name, rs in results.items()}
    proxy, bare = (results[name] for name in names)
    ratios = [p["rps"] / b["rps"] for p, b in zip(proxy, bare, strict=True)]
    print(f"  ratio of each round: {', '.join(f'{ratio:.2f}' for ratio in ratios)}")
    return medians | {"ratio": statistics.median(ratios)}


TABLES = ("requests_app_batchrequest", "requests_app_apikey", "bench_bare")


def pg_counters() -> dict[str, int]:
    """PostgreSQL's own counters for this database, read on a connection of their own that
    closes at once: a backend's statistics reach these views when it ends or idles."""
    import psycopg

    with psycopg.connect(database_url(), autocommit=True) as conn:
        (xacts,) = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        ).fetchone()
        counters = {"transactions": xacts}
        for table, idx, seq, ins in conn.execute(
            "SELECT relname, coalesce(idx_scan, 0), seq_scan, n_tup_ins FROM pg_stat_user_tables "
            "WHERE relname = ANY(%s)",
            [list(TABLES)],
        ):
            counters |= {f"{table} idx_scan": idx, f"{table} seq_scan": seq}
            counters[f"{table} inserts"] = ins
    return counters


def counted(port: int, path: str, bodies: list[str], secret: str, expected: int) -> dict:
    """PostgreSQL's counters over these calls, one at a time, per call."""
    settle = 11  # a backend left idle reports its statistics within 10 s (PostgreSQL 15+)
    before = pg_counters()
    for body in bodies:
        assert post(port, path, body, secret) == expected
    time.sleep(settle)
    after = pg_counters()
    # The reading connections' own transactions, counted the same way.
    idle = pg_counters()
    time.sleep(settle)
    idle_after = pg_counters()
    own = idle_after["transactions"] - idle["transactions"]
    per_call = {}
    for name, value in after.items():
        delta = value - before.get(name, 0) - (own if name == "transactions" else 0)
        if delta:
            per_call[name] = round(delta / len(bodies), 2)
    return per_call


def count_statements(ports: dict, secret: str) -> None:
    port = ports["proxy"]
    marker = uuid.uuid4().hex[:8]
    new = [BODY % f"count-{marker}-{i}" for i in range(100)]
    print("PostgreSQL's statistics, per call (100 calls, one at a time, warm):", flush=True)
    # Warm: the key known to every thread, plans prepared, caches filled.
    for body in new[:8] + [BODY % "rep-0"] * 8:
        post(port, PROXY_PATH, body, secret)
    time.sleep(11)  # the set-up's own statistics reported first
    cases = [
        ("proxy new", PROXY_PATH, new[8:], 422),
        ("proxy repeat", PROXY_PATH, [BODY % f"rep-{i}" for i in range(100)], 422),
        ("bare new", "/bare/insert", [BODY % f"count-bare-{marker}-{i}" for i in range(100)], 200),
        ("bare repeat", "/bare/fetch", [BODY % f"rep-{i}" for i in range(100)], 200),
    ]
    for name, path, bodies, expected in cases:
        where = ports[name.split()[0]]
        print(f"  {name:>12}: {counted(where, path, bodies, secret, expected)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6, help="even: each side first as often")
    parser.add_argument("--connections", type=int, default=None, help="8; 32 with --one-worker")
    parser.add_argument("--one-worker", action="store_true")
    parser.add_argument("--count-statements", action="store_true")
    parser.add_argument(
        "--server",
        choices=list(SERVERS),
        default="asgi",
        help="what serves the proxy: asgi (as deployed: gunicorn, uvicorn's worker), wsgi "
        "(gunicorn's threaded worker, in the baseline's own process), uvicorn or granian. The "
        "baseline is bare Django on gunicorn's threaded worker",
    )
    args = parser.parse_args()
    if args.connections is None:
        args.connections = 32 if args.one_worker else 8
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    django_setup()
    from requests_app.models import ApiKey, hash_key

    print(machine())
    settings = server_settings(args.connections, one_worker=args.one_worker)
    settings |= {k: os.environ[k] for k in ("WEB_WORKER_CLASS",) if k in os.environ}
    gunicorn = " ".join(f"{name}={value}" for name, value in settings.items())
    print(
        f"gunicorn: {gunicorn}; wrk 1 thread, "
        f"{args.connections} connections, {args.rounds} rounds of {args.seconds:g} s each"
    )
    truncate("requests_app_batchrequest", "bench_bare", "batches_app_batch")
    secret = ApiKey.new_secret()
    ApiKey.objects.get_or_create(
        key_hash=hash_key(secret), defaults={"name": "bench", "prefix": secret[:8]}
    )

    tmp = Path(tempfile.mkdtemp(prefix="batchproxy-bench-"))
    port = bare_port = free_port()
    server = start_server(port, tmp / "gunicorn.log", settings)
    baseline = None
    if args.server != "wsgi":
        print(f"the proxy on {args.server}, one worker; bare Django on gunicorn (WSGI) as above")
        bare_port, baseline = port, server
        port = free_port()
        server = start_server(port, tmp / f"{args.server}.log", settings, args.server)
    ports = {"proxy": port, "bare": bare_port}
    try:
        for i in range(REPEAT_SET):  # the queued requests that repeat asks find
            body = BODY % f"rep-{i}"
            assert post(port, PROXY_PATH, body, secret) == 422
            assert post(bare_port, "/bare/insert", body, secret) == 200
        # Statistics for the tables just emptied and filled, as autovacuum keeps them (it is
        # off on some development servers): plans made for an empty table would scan it.
        analyze("requests_app_batchrequest", "bench_bare")

        def new(path: str, expected: int):
            # A fresh marker for every run, so every call of every run is new.
            return lambda: lua_script(
                tmp,
                f"new-{uuid.uuid4().hex}",
                path=path,
                expected=expected,
                marker=f'"{uuid.uuid4().hex[:8]}-" .. tid .. "-" .. counter',
                secret=secret,
            )

        def repeat(path: str, expected: int):
            marker = f'"rep-" .. ((counter * 7 + tid * 131) % {REPEAT_SET})'
            return lambda: lua_script(
                tmp,
                f"rep-{uuid.uuid4().hex}",
                path=path,
                expected=expected,
                marker=marker,
                secret=secret,
            )

        if args.count_statements:
            count_statements(ports, secret)
        print("intake (new requests):", flush=True)
        intake = measure(
            {"proxy": new(PROXY_PATH, 422), "bare": new("/bare/insert", 200)},
            ports=ports,
            rounds=args.rounds,
            seconds=args.seconds,
            connections=args.connections,
        )
        print("repeat asks (queued requests):", flush=True)
        repeat_ = measure(
            {"proxy": repeat(PROXY_PATH, 422), "bare": repeat("/bare/fetch", 200)},
            ports=ports,
            rounds=args.rounds,
            seconds=args.seconds,
            connections=args.connections,
        )
    finally:
        for process in filter(None, (server, baseline)):
            process.terminate()
            process.wait(timeout=30)
    summary = {
        "intake_proxy_rps": round(intake["proxy"]),
        "intake_bare_rps": round(intake["bare"]),
        "intake_ratio": round(intake["ratio"], 3),
        "repeat_proxy_rps": round(repeat_["proxy"]),
        "repeat_bare_rps": round(repeat_["bare"]),
        "repeat_ratio": round(repeat_["ratio"], 3),
    }
    print(
        f"intake: proxy {summary['intake_proxy_rps']} req/s, bare Django "
        f"{summary['intake_bare_rps']} req/s, ratio {summary['intake_ratio']} (target >= 0.8)"
    )
    print(
        f"repeat asks: proxy {summary['repeat_proxy_rps']} req/s, bare Django "
        f"{summary['repeat_bare_rps']} req/s, ratio {summary['repeat_ratio']} (target >= 1.0)"
    )
    print(
        f"callers asking every 2 minutes that this server answers: "
        f"{summary['repeat_proxy_rps'] * 120:,}"
    )
    print("JSON " + json.dumps(summary))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
