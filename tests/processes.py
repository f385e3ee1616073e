"""Helpers for tests that start the proxy as real processes: ports, databases, the entrypoint."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
VENV_BIN = str(Path(sys.executable).parent)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_admin_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith("postgres") else "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def fresh_postgres(prefix: str):
    """A new, empty PostgreSQL database for processes under test; dropped afterwards."""
    admin = postgres_admin_url()
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError:
        # Several machines sharing one database is what these tests are about; CI has one.
        pytest.skip("needs a PostgreSQL server (DATABASE_URL, or 127.0.0.1:5432)")
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def process_env(data_dir: Path, **extra: str) -> dict:
    """This test run's environment without any database or upstream it did not mean to pass."""
    dropped = ("DATABASE_URL", "POSTGRES_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "ROLE")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    return (
        env
        | {
            "PATH": f"{VENV_BIN}:{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "DATA_DIR": str(data_dir),
            "WEB_CONCURRENCY": "1",
            "WEB_THREADS": "4",
            "Q_WORKERS": "1",
        }
        | extra
    )


def start_entrypoint(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """docker/entrypoint.sh as the image runs it, output to a file (a pipe could fill up)."""
    with log.open("w") as out:
        return subprocess.Popen(
            ["bash", str(ENTRYPOINT), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (local http)
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} never answered 200:\n{log.read_text()}")
