"""docker/entrypoint.sh, run outside Docker the way the image runs it.

With the original proxy's variables (OPENAI_API_KEY, BATCH_SERVER_API_KEY, POSTGRES_URL) it
migrates once, even when two copies start together, serves on its port, and its scheduler
answers requests.
"""

import re
import subprocess
import sys
import time

import openai
import psycopg
import pytest

from .processes import (
    ENTRYPOINT,
    ROOT,
    free_port,
    fresh_postgres,
    process_env,
    start_entrypoint,
    stop,
    wait_for_http,
)

pytestmark = pytest.mark.e2e
# The line `serve` prints once the migrate lock is released: how many it applied (0 if none).
APPLIED = re.compile(r"Migrations: (?:(\d+) applied|already up to date)\.")


def applied_counts(outputs: list[str]) -> list[int]:
    return sorted(int(n or 0) for out in outputs for n in APPLIED.findall(out))


def test_two_entrypoints_started_together_migrate_once_serve_and_schedule(tmp_path, fake_server):
    fake_server.reset()
    with fresh_postgres("entry") as database_url:
        procs, logs, ports = [], [], []
        for copy in ("a", "b"):
            (tmp_path / copy).mkdir()
            ports.append(free_port())
            logs.append(tmp_path / f"{copy}.log")
            env = process_env(
                tmp_path / copy,
                OPENAI_API_KEY="sk-entrypoint-test",
                OPENAI_BASE_URL=fake_server.url,
                BATCH_SERVER_API_KEY="entry-key",
                POSTGRES_URL=database_url,
                PORT=str(ports[-1]),
                BATCH_MAX_WAIT="0",
                POLL_INTERVAL="1",
            )
            procs.append(start_entrypoint([], env, logs[-1]))
        try:
            for port, proc, log in zip(ports, procs, logs, strict=True):
                wait_for_http(f"http://127.0.0.1:{port}/healthz", proc, log)

            counts = applied_counts([log.read_text() for log in logs])
            assert len(counts) == 2 and counts[0] == 0 and counts[1] > 0, counts
            with psycopg.connect(database_url) as conn:
                duplicates = conn.execute(
                    "SELECT app, name FROM django_migrations GROUP BY app, name HAVING count(*) > 1"
                ).fetchall()
            assert duplicates == []

            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{ports[0]}/v1", api_key="entry-key", max_retries=0
            )
            ask = lambda: client.embeddings.create(  # noqa: E731
                model="text-embedding-3-small", input="through the entrypoint"
            )
            with pytest.raises(openai.UnprocessableEntityError):
                ask()
            deadline = time.monotonic() + 200  # schedules run each minute: allow three rounds
            while True:
                try:
                    answer = ask()
                    break
                except openai.UnprocessableEntityError:
                    assert time.monotonic() < deadline, "no answer from the scheduler in 200 s"
                    time.sleep(2)
            assert len(answer.data[0].embedding) > 0
            wait_for_http(f"http://127.0.0.1:{ports[1]}/readyz", procs[1], logs[1], 30)
        finally:
            for proc in procs:
                stop(proc)
    assert all(proc.returncode == 0 for proc in procs), [log.read_text() for log in logs]


MIGRATE = """
import django
django.setup()
from ops_app.deploy import migrations_apply
migrations_apply(say=print)
"""


def test_two_processes_on_one_sqlite_file_migrate_once(tmp_path):
    env = process_env(tmp_path, DJANGO_SETTINGS_MODULE="batchproxy.settings")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=180)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    counts = applied_counts(outputs)
    assert len(counts) == 2 and counts[0] == 0 and counts[1] > 0, outputs


def test_entrypoint_runs_any_other_command_as_given(tmp_path):
    result = subprocess.run(
        ["bash", str(ENTRYPOINT), "python", "-c", "print('as given')"],
        env=process_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "as given"


def test_entrypoint_refuses_an_unknown_role(tmp_path):
    result = subprocess.run(
        ["bash", str(ENTRYPOINT)],
        env=process_env(tmp_path, ROLE="everything"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 64
    assert "unknown role 'everything'" in result.stderr


def test_the_migrate_role_migrates_once_and_exits_and_the_others_leave_it_to_it(tmp_path):
    """A deploy of several containers: one `migrate` job, the others with RUN_MIGRATIONS=false
    (no upstream key is needed to migrate)."""
    env = process_env(tmp_path, BATCH_SERVER_API_KEY="entry-key")

    def migrate() -> str:
        done = subprocess.run(
            ["bash", str(ENTRYPOINT), "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert applied_counts([migrate()])[0] > 0
    assert "already up to date" in migrate()

    port = free_port()
    log = tmp_path / "web.log"
    web_env = env | {"RUN_MIGRATIONS": "false", "OPENAI_API_KEY": "sk-x", "PORT": str(port)}
    proc = start_entrypoint(["web"], web_env, log)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", proc, log)
    finally:
        stop(proc)
    text = log.read_text()
    assert "left to the deploy's migrate job" in text
    assert not APPLIED.search(text)
