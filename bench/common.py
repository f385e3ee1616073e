"""What every benchmark shares: its own PostgreSQL database, Django set-up, the machine's name."""

import os
import platform
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/batchproxy_bench"
BENCH_SECRET_KEY = secrets.token_urlsafe(50)  # one per benchmark run, shared by its processes


def database_url() -> str:
    return os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)


def bench_env() -> dict[str, str]:
    """The environment of the benchmark and of every process it starts."""
    data_dir = os.environ.get("BENCH_DATA_DIR") or str(
        Path(tempfile.gettempdir()) / "batchproxy-bench"
    )
    return os.environ | {
        "DATABASE_URL": database_url(),
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "DATA_DIR": data_dir,
        "DEBUG": "false",  # DEBUG keeps every query in memory
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
        # Production settings refuse to start without these (ops_app.checks.startup_refusal).
        "SECRET_KEY": os.environ.get("SECRET_KEY") or BENCH_SECRET_KEY,
        "ALLOWED_HOSTS": os.environ.get("ALLOWED_HOSTS") or "127.0.0.1,localhost",
    }


def _create_database() -> None:
    import psycopg

    url = database_url()
    name = url.rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def django_setup(*, migrate: bool = True) -> None:
    """Point Django at the benchmark database, migrated, with the baseline's table."""
    os.environ.update(bench_env())
    if migrate and database_url().startswith("postgres"):
        _create_database()
    import django

    django.setup()
    if not migrate:
        return
    from django.core.management import call_command
    from django.db import connection

    from bench.models import BareRow

    call_command("migrate", verbosity=0)
    if BareRow._meta.db_table not in connection.introspection.table_names():
        with connection.schema_editor() as editor:
            editor.create_model(BareRow)


def truncate(*tables: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            for table in tables:
                cursor.execute(f"DELETE FROM {table}")  # noqa: S608 (our own table names)
            return
        cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def machine() -> str:
    """CPU model, cores, Python and PostgreSQL versions, load: printed with every figure."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            database = f"PostgreSQL {cursor.fetchone()[0]}"
    else:
        database = f"SQLite {connection.Database.sqlite_version}"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"machine: {cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM; "
        f"Python {platform.python_version()}; {database}; {load()}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def run_child(module: str, *args: str, env: dict | None = None) -> str:
    """Run `python -m module args` in its own process (so its peak memory is its own)."""
    done = subprocess.run(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", module, *args],
        env=(env or bench_env()),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"{module} failed with exit code {done.returncode}")
    return done.stdout


def peak_rss_mb() -> float:
    """This process's peak resident memory, in MB.

    VmHWM, not ru_maxrss: after fork and exec, Linux's ru_maxrss still counts the parent's
    peak, and the parents here hold whole batch files.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def analyze(*tables: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for table in tables:  # SQLite's ANALYZE takes one table
            cursor.execute(f"ANALYZE {table}")
