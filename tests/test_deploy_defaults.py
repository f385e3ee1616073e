"""Defaults a deployer expects: cookies and HSTS over https, connections that survive a database
restart. Settings are read at start, so each case runs in a process of its own."""

import json
import subprocess
import sys
import time
import urllib.request

import psycopg
import pytest

from .processes import ROOT, free_port, fresh_postgres, postgres_admin_url, process_env

ANSWERS = """
import django, json
django.setup()
from django.conf import settings
from django.test import Client
client = Client()
login = client.get("/" + settings.ADMIN_URL + "login/", headers={"X-Forwarded-Proto": "https"})
health = client.get("/healthz", headers={"X-Forwarded-Proto": "https"})
direct = client.get("/healthz", secure=True)  # as if gunicorn itself served https
print(json.dumps({
    "csrf_cookie_secure": bool(login.cookies["csrftoken"]["secure"]),
    "session_cookie_secure": settings.SESSION_COOKIE_SECURE,
    "hsts": health.headers.get("Strict-Transport-Security"),
    "is_https": health.wsgi_request.is_secure(),
    "hsts_on_https": direct.headers.get("Strict-Transport-Security"),
}))
"""


def answers(tmp_path, **env) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", ANSWERS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=process_env(tmp_path, DJANGO_SETTINGS_MODULE="batchproxy.settings", **env),
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_plain_http_by_default_sends_no_hsts_and_trusts_no_forwarded_proto(tmp_path):
    assert answers(tmp_path) == {
        "csrf_cookie_secure": False,
        "session_cookie_secure": False,
        "hsts": None,
        "is_https": False,
        "hsts_on_https": None,
    }


def test_behind_a_tls_load_balancer_cookies_are_secure_and_https_answers_carry_hsts(tmp_path):
    assert answers(tmp_path, USE_X_FORWARDED="true") == {
        "csrf_cookie_secure": True,
        "session_cookie_secure": True,
        "hsts": "max-age=31536000",
        "is_https": True,
        "hsts_on_https": "max-age=31536000",
    }


def test_https_only_without_a_balancer_and_hsts_tuned(tmp_path):
    found = answers(
        tmp_path, HTTPS_ONLY="true", SECURE_HSTS_SECONDS="600", SECURE_HSTS_INCLUDE_SUBDOMAINS="1"
    )
    # X-Forwarded-Proto is not trusted without USE_X_FORWARDED: this request is not https.
    assert found == {
        "csrf_cookie_secure": True,
        "session_cookie_secure": True,
        "hsts": None,
        "is_https": False,
        "hsts_on_https": "max-age=600; includeSubDomains",
    }


@pytest.mark.e2e
@pytest.mark.parametrize(
    "worker", ["uvicorn_worker.UvicornWorker", "batchproxy.web_worker.BufferingThreadWorker"]
)
def test_after_the_database_drops_every_connection_the_next_call_is_answered(tmp_path, worker):
    """A PostgreSQL restart kills the web threads' kept connections: each is tested before it
    is reused (CONN_HEALTH_CHECKS), so no call answers 500."""
    with fresh_postgres("ha_restart") as url:
        port = free_port()
        env = process_env(
            tmp_path,
            DATABASE_URL=url,
            PORT=str(port),
            HOST="127.0.0.1",
            BATCH_SERVER_API_KEY="k",
            WEB_THREADS="1",
            WEB_WORKER_CLASS=worker,
        )
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "batchproxy/gunicorn.conf.py",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            def models() -> int:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer k"}
                )
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                        return response.status
                except urllib.error.HTTPError as exc:
                    return exc.code

            deadline = time.monotonic() + 60
            while True:
                try:
                    first = models()
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline
                    time.sleep(0.2)
            assert first == 200
            name = url.rsplit("/", 1)[1]
            with psycopg.connect(postgres_admin_url(), autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                ).fetchone()[0]
            assert killed >= 1  # the web thread's kept connection
            assert [models() for _ in range(3)] == [200, 200, 200]
        finally:
            proc.terminate()
            proc.wait(30)
