"""Two web processes and two schedulers on one PostgreSQL: every request answered, once.

All four start at the same moment through docker/entrypoint.sh (so they also race to migrate),
clients send every call to both web processes at once, and the fake OpenAI records every line
it was sent: each request must reach it exactly once and come back to its own caller.
"""

import contextlib
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import openai
import psycopg
import pytest

from .processes import free_port, fresh_postgres, process_env, start_entrypoint, stop, wait_for_http
from .test_entrypoint import applied_counts

pytestmark = pytest.mark.e2e
PROMPTS = [f"scale-out question {i}" for i in range(24)]


def test_two_web_and_two_scheduler_processes_answer_every_request_once(tmp_path, fake_server):
    fake_server.reset()
    with fresh_postgres("scale") as database_url:
        ports = [free_port(), free_port()]
        roles = [("web", ports[0]), ("web", ports[1]), ("scheduler", None), ("scheduler", None)]
        procs, logs = [], []
        for i, (role, port) in enumerate(roles):
            (tmp_path / str(i)).mkdir()
            logs.append(tmp_path / f"{i}-{role}.log")
            env = process_env(
                tmp_path / str(i),
                OPENAI_API_KEY="sk-scale-out-test",
                OPENAI_BASE_URL=fake_server.url,
                BATCH_SERVER_API_KEY="scale-key",
                POSTGRES_URL=database_url,
                PORT=str(port or free_port()),
                BATCH_MAX_WAIT="0",
                POLL_INTERVAL="1",
            )
            procs.append(start_entrypoint([role], env, logs[-1]))
        try:
            for port, proc, log in zip(ports, procs, logs, strict=False):
                wait_for_http(f"http://127.0.0.1:{port}/healthz", proc, log)
            clients = [
                openai.OpenAI(
                    base_url=f"http://127.0.0.1:{port}/v1", api_key="scale-key", max_retries=0
                )
                for port in ports
            ]

            def ask(client: openai.OpenAI, prompt: str):
                return client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
                )

            def first_call(job: tuple[int, str]) -> str:
                index, prompt = job
                with pytest.raises(openai.UnprocessableEntityError) as pending:
                    ask(clients[index % 2], prompt)
                return pending.value.response.headers["x-batch-request-id"]

            # Every prompt twice at once, once through each web process.
            jobs = [(i, p) for p in PROMPTS for i in (0, 1)]
            with ThreadPoolExecutor(8) as pool:
                ids = list(pool.map(first_call, jobs))
            for prompt_index in range(len(PROMPTS)):
                assert ids[2 * prompt_index] == ids[2 * prompt_index + 1]

            answers = {}
            # Per-minute schedules on a busy machine: allow many rounds.
            deadline = time.monotonic() + 480
            while len(answers) < len(PROMPTS):
                assert time.monotonic() < deadline, f"{len(answers)} of {len(PROMPTS)} answered"
                for n, prompt in enumerate(PROMPTS):
                    if prompt not in answers:
                        with contextlib.suppress(openai.UnprocessableEntityError):
                            answers[prompt] = ask(clients[n % 2], prompt)
                time.sleep(2)

            for prompt, answer in answers.items():
                assert answer.choices[0].message.content == f"echo: {prompt}"
            sent = Counter(line["custom_id"] for line in fake_server.submitted_lines())
            assert set(sent) == set(ids), "a request never reached upstream, or a stranger did"
            assert set(sent.values()) == {1}, "a request was sent upstream more than once"
            with psycopg.connect(database_url) as conn:
                stored = conn.execute("SELECT count(*) FROM requests_app_batchrequest").fetchone()
            assert stored[0] == len(PROMPTS)
            counts = applied_counts([log.read_text() for log in logs])
            assert len(counts) == 4 and counts.count(0) == 3, counts
            print(f"scale-out: {len(PROMPTS)} answered from {len(fake_server.batches)} batches")
        finally:
            for proc in procs:
                stop(proc)
    assert all(proc.returncode == 0 for proc in procs), [log.read_text() for log in logs]
