"""Several 5 MB image answers served at once by a live gunicorn worker: its memory (RSS) must
not grow by more than one answer's size, because each answer is streamed from the database a
piece at a time."""

import base64
import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from .processes import ROOT, free_port, fresh_postgres, process_env, wait_for_http

pytestmark = pytest.mark.e2e
ANSWERS = 8
RAW_BYTES = 3_900_000  # 5.2 MB once base64-encoded
ANSWER_BYTES = len('{"created":1,"data":[{"b64_json":""}]}') + 4 * -(-RAW_BYTES // 3)

# Run inside the server's database: queue one image call per answer and ingest a 5 MB answer
# for each through the real ingest path.
SEED = f"""
import base64, json
from batches_app.models import Batch
from batches_app.outcomes import lines_apply
from requests_app.auth import api_key_for_hash
from requests_app.models import BatchRequest, hash_key
from requests_app.services import call_parse, requests_enqueue

key = api_key_for_hash(hash_key("k"), "k")
batch = Batch.objects.create(
    endpoint="/v1/images/generations", model="gpt-image-1", state="ingesting"
)
lines = []
for i in range({ANSWERS} + 1):
    raw = json.dumps({{"model": "gpt-image-1", "prompt": f"picture {{i}}"}}).encode()
    call = call_parse(endpoint="/v1/images/generations", raw=raw)
    request = requests_enqueue(api_key_id=key.pk, call=call)
    BatchRequest.objects.filter(pk=request.pk).update(status="submitted", batch=batch)
    size = {RAW_BYTES} if i else 10  # picture 0 is small: the warm-up
    image = base64.b64encode(bytes([i]) * size).decode()
    body = {{"created": 1, "data": [{{"b64_json": image}}]}}
    line = {{"custom_id": str(request.pk), "response": {{"status_code": 200, "body": body}}}}
    lines.append(json.dumps(line))
lines_apply(batch=batch, lines=lines)
"""


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def ask(port: int, index: int) -> bytes:
    body = json.dumps({"model": "gpt-image-1", "prompt": f"picture {index}"}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/images/generations",
        data=body,
        headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
        assert response.status == 200
        return response.read()


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request):
    """(DATABASE_URL or "", what the database itself may cache per connection)."""
    if request.param == "sqlite":
        # SQLite's page cache: up to 2 MiB per connection (its default), one per thread,
        # filled by any large read; bounded however many answers are sent.
        yield "", 4 * 2 * 1024 * 1024
        return
    with fresh_postgres("bp_memory") as url:
        yield url, 0


@pytest.fixture
def gunicorn_worker(tmp_path, database):
    """A migrated, seeded proxy behind one gunicorn worker of 4 threads: (port, worker pid)."""
    port = free_port()
    env = process_env(tmp_path, PORT=str(port), HOST="127.0.0.1", BATCH_SERVER_API_KEY="k")
    if database[0]:
        env["DATABASE_URL"] = database[0]
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run([*manage, "shell", "-c", SEED], cwd=ROOT, env=env, check=True)
    log = tmp_path / "gunicorn.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "batchproxy/gunicorn.conf.py"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", proc, log, seconds=60)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        yield port, int(children[0])
    finally:
        proc.terminate()
        proc.wait(30)


def test_several_large_answers_at_once_grow_memory_less_than_one_answer(gunicorn_worker, database):
    port, worker = gunicorn_worker
    database_cache = database[1]
    # Warm up every thread of the worker (imports, database connections) on a small answer.
    threads = [threading.Thread(target=ask, args=(port, 0)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    before = rss(worker)

    peak, done, answers = before, threading.Event(), {}

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss(worker))
            time.sleep(0.005)

    def fetch(index: int):
        answers[index] = ask(port, index)

    sampler = threading.Thread(target=sample)
    sampler.start()
    fetchers = [threading.Thread(target=fetch, args=(i,)) for i in range(1, ANSWERS + 1)]
    for thread in fetchers:
        thread.start()
    for thread in fetchers:
        thread.join()
    done.set()
    sampler.join()

    for index, answer in answers.items():
        assert len(answer) == ANSWER_BYTES
        image = base64.b64decode(json.loads(answer)["data"][0]["b64_json"])
        assert image == bytes([index]) * RAW_BYTES
    growth = peak - before
    print(
        f"RSS before {before / 1e6:.1f} MB, peak {peak / 1e6:.1f} MB, growth {growth / 1e6:.1f} MB"
    )
    # Read whole, the 8 answers took 60 MB (measured on SQLite); streamed, 2 MB beyond SQLite's
    # page cache.
    bound = ANSWER_BYTES + database_cache
    assert growth < bound, f"grew {growth} bytes serving {ANSWERS} answers at once"
