"""/healthz, /readyz, request ids and log hygiene."""

import io
import json
import logging
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from django_q.models import Schedule

from ops_app.health import FLUSH_SCHEDULE
from ops_app.logs import JsonFormatter, RequestContextFilter

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import django, json
django.setup()
from django.test import Client
client = Client()
print(json.dumps({p: [r.status_code, r.json()] for p in ("/healthz", "/readyz")
                  for r in [client.get(p)]}))
"""


def probe(tmp_path: Path, **env: str) -> dict:
    """GET /healthz and /readyz in a separate process with its own settings."""
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "POSTGRES_URL")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=clean
        | {"DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "batchproxy.settings"}
        | env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_healthz_answers_without_touching_the_database(client):
    # No `db` fixture: pytest-django fails any query, so this proves /healthz makes none.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ready_when_migrated_and_the_scheduler_ran_recently(client, db):
    Schedule.objects.filter(name=FLUSH_SCHEDULE).update(next_run=timezone.now())
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ready"}


def test_readyz_fails_when_no_scheduler_has_run_for_a_while(client, db, settings):
    settings.SCHEDULER_STALE_AFTER = 300
    stale = timezone.now() - timedelta(seconds=600)
    Schedule.objects.filter(name=FLUSH_SCHEDULE).update(next_run=stale)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert any("scheduler not seen" in p for p in response.json()["problems"])


def test_readyz_fails_when_the_database_is_down_while_healthz_stays_up(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # bound, never listening: connections are refused
        answers = probe(
            tmp_path,
            DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed_port}/nothing",
            CONN_MAX_AGE="0",
        )
    assert answers["/healthz"] == [200, {"status": "ok"}]
    status, body = answers["/readyz"]
    assert status == 503
    assert body["problems"][0].startswith("database unreachable")


def test_readyz_fails_on_a_database_without_migrations(tmp_path):
    answers = probe(tmp_path)  # a fresh SQLite file: reachable, nothing applied
    status, body = answers["/readyz"]
    assert status == 503
    assert "migrations not applied" in body["problems"][0]


def test_health_endpoints_refuse_other_methods_with_an_openai_shaped_405(client):
    response = client.post("/healthz")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_every_answer_carries_a_request_id_and_keeps_a_sane_incoming_one(client):
    fresh = client.get("/healthz")["X-Request-Id"]
    assert len(fresh) == 32
    assert client.get("/healthz", HTTP_X_REQUEST_ID="trace-12345678")["X-Request-Id"] == (
        "trace-12345678"
    )
    forged = client.get("/healthz", HTTP_X_REQUEST_ID="bad id\nwith newline")["X-Request-Id"]
    assert forged != "bad id\nwith newline" and len(forged) == 32


@pytest.fixture
def json_log():
    """What the console handler would print with LOG_FORMAT=json, captured."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)


def test_request_log_lines_are_json_with_the_request_id_and_no_secret(
    post, api_key, settings, json_log
):
    settings.LOG_REQUESTS = True
    response = post(
        "/v1/chat/completions", {"model": "gpt-4o-mini"}, HTTP_X_REQUEST_ID="req-abc-123"
    )
    assert response.status_code == 422
    lines = [line for line in json_log() if line["logger"] == "batchproxy.access"]
    assert lines, "no access log line"
    line = lines[-1]
    assert line["request_id"] == "req-abc-123"
    assert line["status"] == 422
    assert line["path"] == "/v1/chat/completions"
    assert api_key[1] not in json.dumps(lines)


def test_secrets_in_log_messages_are_masked(settings, json_log):
    settings.OPENAI_API_KEY = "upstream-key-without-a-known-prefix"
    log = logging.getLogger("batchproxy.test")
    log.warning("headers %s", {"Authorization": "Bearer bp-abcdefghijklmnop"})
    log.warning("calling with key %s and sk-proj-0123456789abcdef", settings.OPENAI_API_KEY)
    text = json.dumps(json_log())
    assert "bp-abcdefghijklmnop" not in text
    assert "sk-proj-0123456789abcdef" not in text
    assert "upstream-key-without-a-known-prefix" not in text
    assert text.count("[redacted]") == 3


# --- The OpenAPI description -----------------------------------------------------------------


def as_json_schema(node, components: dict):
    """An OpenAPI 3.0 schema as plain JSON Schema: $refs resolved, `nullable` as a null type."""
    if isinstance(node, list):
        return [as_json_schema(item, components) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return as_json_schema(components[node["$ref"].rsplit("/", 1)[-1]], components)
    out = {k: as_json_schema(v, components) for k, v in node.items() if k != "nullable"}
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
    return out


@pytest.fixture
def openapi(client, db) -> dict:
    response = client.get("/v1/openapi.json")  # no key: the description is public
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/")
    return response.json()


def test_openapi_description_is_valid_and_lists_every_endpoint(openapi):
    from drf_spectacular.validation import validate_schema

    validate_schema(openapi)  # raises on anything that is not valid OpenAPI 3
    assert openapi["openapi"].startswith("3.")
    for endpoint in ("responses", "chat/completions", "embeddings", "completions", "moderations"):
        operation = openapi["paths"][f"/v1/{endpoint}"]["post"]
        assert {"200", "400", "401", "409", "413", "422", "502"} <= set(operation["responses"])
        assert operation["security"] == [{"proxyKey": []}]
    detail = openapi["paths"]["/v1/batch_requests/{id}"]["get"]
    assert {"200", "401", "404"} <= set(detail["responses"])
    messages = openapi["paths"]["/v1/messages"]["post"]
    assert {"200", "400", "401", "404", "409", "413", "422", "502"} <= set(messages["responses"])
    assert {"anthropicKey": []} in messages["security"]
    assert messages["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AnthropicError"
    }
    gemini = openapi["paths"]["/v1beta/models/{model}:generateContent"]["post"]
    assert {"200", "400", "401", "404", "409", "413", "422", "502"} <= set(gemini["responses"])
    assert gemini["security"] == [{"geminiKey": []}]
    assert gemini["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GoogleError"
    }
    # The read endpoints take an Anthropic or Gemini caller's key header too.
    for path in (
        "/v1/batch_requests",
        "/v1/batch_requests/{id}",
        "/v1/models",
        "/v1/models/{model}",
    ):
        security = openapi["paths"][path]["get"]["security"]
        assert {"proxyKey": []} in security and {"anthropicKey": []} in security, path
        assert {"geminiKey": []} in security, path
    schemes = openapi["components"]["securitySchemes"]
    assert schemes["anthropicKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": schemes["anthropicKey"]["description"],
    }
    assert schemes["geminiKey"]["name"] == "x-goog-api-key"


def assert_declared(openapi: dict, path: str, response) -> None:
    """The answer's body and headers are those the description declares for its status."""
    import jsonschema

    components = openapi["components"]["schemas"]
    declared = openapi["paths"][path]["post"]["responses"][str(response.status_code)]
    schema = as_json_schema(declared["content"]["application/json"]["schema"], components)
    jsonschema.validate(response.json(), schema)
    for header in declared.get("headers", {}):
        assert header in response, f"{response.status_code} lacks {header}"


def assert_body_declared(openapi: dict, path: str, body: dict) -> None:
    import jsonschema

    operation = openapi["paths"][path]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    jsonschema.validate(body, as_json_schema(schema, openapi["components"]["schemas"]))


def assert_not_openai_shaped(openapi: dict, body: dict) -> None:
    """Not OpenAI's shape: an SDK reading `error.code` as OpenAI's would find nothing."""
    import jsonschema

    schema = as_json_schema(
        {"$ref": "#/components/schemas/Error"}, openapi["components"]["schemas"]
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, schema)


def test_openapi_responses_match_what_the_proxy_answers(openapi, post, client):
    path = "/v1/chat/completions"
    call = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "schema"}]}
    assert_body_declared(openapi, path, call)
    assert_declared(openapi, path, post(path, call))  # 422 pending
    assert_declared(openapi, path, post(path, {"messages": []}))  # 400
    assert_declared(openapi, path, post(path, call, secret="bp-wrong-key"))  # 401


def test_openapi_messages_responses_match_what_the_proxy_answers(
    openapi, post, client, api_key, fake_anthropic
):
    path = "/v1/messages"
    call = {
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "schema"}],
    }
    assert_body_declared(openapi, path, call)
    assert_declared(openapi, path, post(path, call, HTTP_X_API_KEY=api_key[1]))  # 422 pending
    assert_declared(openapi, path, post(path, {"messages": []}))  # 400
    assert_declared(openapi, path, post(path, call, secret="bp-wrong-key"))  # 401
    assert_declared(openapi, path, post(path, call | {"model": "gpt-4o"}))  # 404: not served
    assert_not_openai_shaped(openapi, post(path, {"messages": []}).json())


def test_openapi_generate_content_responses_match_what_the_proxy_answers(
    openapi, client, api_key, settings
):
    settings.UPSTREAMS = [
        {
            "name": "g",
            "kind": "gemini",
            "base_url": "http://127.0.0.1:9",  # never called: only the intake answers here
            "key_env": "G_KEY",
            "models": ["gemini-*"],
            "api_version": "",
        }
    ]
    path = "/v1beta/models/{model}:generateContent"
    call = {"contents": [{"role": "user", "parts": [{"text": "schema"}]}]}

    def post(model: str, body: dict, key: str = api_key[1]):
        return client.post(
            f"/v1beta/models/{model}:generateContent",
            json.dumps(body),
            content_type="application/json",
            HTTP_X_GOOG_API_KEY=key,
        )

    assert_body_declared(openapi, path, call)
    assert post("gemini-2.5-flash", call).status_code == 422
    assert_declared(openapi, path, post("gemini-2.5-flash", call))  # 422 pending
    assert_declared(openapi, path, post("gemini-2.5-flash", {"contents": "no"}))  # 400
    assert_declared(openapi, path, post("gemini-2.5-flash", call, key="bp-wrong"))  # 401
    assert_declared(openapi, path, post("gpt-4o", call))  # 404: no Gemini upstream serves it
    assert_not_openai_shaped(openapi, post("gemini-2.5-flash", {"contents": "no"}).json())


# --- Production configuration checks -----------------------------------------------------------


def test_a_short_secret_key_fails_the_system_check(settings, monkeypatch):
    from ops_app.checks import secret_key_check

    monkeypatch.setenv("SECRET_KEY", "too-short")
    settings.SECRET_KEY, settings.DEBUG = "too-short", False
    assert [problem.id for problem in secret_key_check(None)] == ["ops_app.E001"]


def test_without_secret_key_only_a_try_out_or_debug_may_start(settings, monkeypatch, tmp_path):
    from batchproxy.tryout import tryout_record
    from ops_app.checks import secret_key_check

    monkeypatch.delenv("SECRET_KEY", raising=False)
    settings.DEBUG, settings.DATA_DIR = False, tmp_path
    assert [problem.id for problem in secret_key_check(None)] == ["ops_app.E020"]
    settings.DEBUG = True
    assert secret_key_check(None) == []
    settings.DEBUG = False
    # `serve --fake-openai` records its try-out after its settings were read: seen afresh.
    tryout_record(tmp_path, fakes={"openai": "http://127.0.0.1:9"})
    assert secret_key_check(None) == []


def test_without_allowed_hosts_only_a_try_out_or_debug_may_start(settings, monkeypatch, tmp_path):
    from batchproxy.tryout import tryout_record
    from ops_app.checks import allowed_hosts_check

    monkeypatch.delenv("ALLOWED_HOSTS", raising=False)
    settings.DEBUG, settings.DATA_DIR = False, tmp_path
    assert [problem.id for problem in allowed_hosts_check(None)] == ["ops_app.E021"]
    monkeypatch.setenv("ALLOWED_HOSTS", "batchproxy.example.com")
    assert allowed_hosts_check(None) == []
    monkeypatch.delenv("ALLOWED_HOSTS")
    tryout_record(tmp_path, fakes={"openai": "http://127.0.0.1:9"})
    assert allowed_hosts_check(None) == []


def test_login_throttle_periods_are_checked(settings):
    from ops_app.checks import login_throttle_check

    assert login_throttle_check(None) == []
    settings.ADMIN_LOGIN_SLOWDOWN = 0
    assert [problem.id for problem in login_throttle_check(None)] == ["ops_app.E022"]


def run_python(tmp_path, code: str, *args: str, **env) -> subprocess.CompletedProcess:
    """Python code (or "manage.py" and its arguments) with the proxy's settings in a process
    of its own, without SECRET_KEY unless given."""
    dropped = ("SECRET_KEY", "DATABASE_URL", "POSTGRES_URL", "OPENAI_API_KEY")
    base = {k: v for k, v in os.environ.items() if k not in dropped}
    return subprocess.run(
        [sys.executable, *(["-c"] if code != "manage.py" else []), code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=base
        | {"DJANGO_SETTINGS_MODULE": "batchproxy.settings", "DATA_DIR": str(tmp_path)}
        | env,
    )


def test_the_secret_key_is_never_derived_from_an_upstream_key(tmp_path):
    shared = {"POSTGRES_URL": "postgresql://u:p@db:5432/proxy", "OPENAI_API_KEY": "sk-same"}
    code = (
        "import django; django.setup(); from django.conf import settings as s; print(s.SECRET_KEY)"
    )
    first = run_python(tmp_path / "a", code, **shared).stdout.strip()
    second = run_python(tmp_path / "b", code, **shared).stdout.strip()
    assert first and second and first != second  # each a random key of its data directory
    assert first == (tmp_path / "a" / "secret_key").read_text().strip()


@pytest.mark.parametrize(
    ("missing", "code"), [("SECRET_KEY", "ops_app.E020"), ("ALLOWED_HOSTS", "ops_app.E021")]
)
def test_production_refuses_to_start_without_secret_key_or_allowed_hosts(tmp_path, missing, code):
    """The scheduler and the web application refuse; `check --deploy` says why (`serve` asks
    the same function once it knows whether it runs a try-out)."""
    env = {"SECRET_KEY": "k" * 50, "ALLOWED_HOSTS": "proxy.example.com", "DEBUG": "false"}
    env[missing] = ""

    def manage(*args: str) -> subprocess.CompletedProcess:
        return run_python(tmp_path, "manage.py", *args, OPENAI_API_KEY="sk-test", **env)

    for result in (manage("check", "--deploy"), manage("qcluster")):
        assert result.returncode != 0
        assert code in result.stderr and f"{missing} is not set" in result.stderr
    served = run_python(tmp_path, "import batchproxy.wsgi", **env)
    assert served.returncode != 0
    assert code in served.stderr
    env[missing] = "k" * 50 if missing == "SECRET_KEY" else "proxy.example.com"
    assert run_python(tmp_path, "import batchproxy.wsgi", **env).returncode == 0
    # Commands that start nothing (makemigrations, createsuperuser) need neither.
    env[missing] = ""
    assert manage("makemigrations", "--check", "--dry-run").returncode == 0
