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
    assert_declared(openapi, path, post(path, {"model": "m", "stream": True}))  # 400


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
    assert_declared(openapi, path, post(path, call | {"stream": True}))  # 400
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


def test_a_shared_database_without_secret_key_gets_a_warning(settings, monkeypatch):
    from types import SimpleNamespace

    from ops_app.checks import secret_key_check

    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.setattr("ops_app.checks.connection", SimpleNamespace(vendor="postgresql"))
    settings.DEBUG, settings.OPENAI_API_KEY = False, ""
    assert [problem.id for problem in secret_key_check(None)] == ["ops_app.W001"]
    settings.OPENAI_API_KEY = "sk-shared-by-every-container"
    assert secret_key_check(None) == []
    monkeypatch.setenv("SECRET_KEY", "x" * 50)
    settings.SECRET_KEY = "x" * 50
    assert secret_key_check(None) == []


def test_processes_sharing_a_database_derive_one_secret_key(tmp_path):
    """django-q2 signs queued tasks with SECRET_KEY: two containers on one database must agree."""
    import os
    import subprocess
    import sys

    from .processes import ROOT

    def key_of(data_dir, **env):
        base = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DATABASE_URL")}
        code = "from django.conf import settings; print(settings.SECRET_KEY)"
        return subprocess.run(
            [sys.executable, "-c", f"import django; django.setup(); {code}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env=base
            | {
                "DJANGO_SETTINGS_MODULE": "batchproxy.settings",
                "DATA_DIR": str(tmp_path / data_dir),
            }
            | env,
        ).stdout.strip()

    shared = {"POSTGRES_URL": "postgresql://u:p@db:5432/proxy", "OPENAI_API_KEY": "sk-same"}
    first, second = key_of("a", **shared), key_of("b", **shared)
    assert first == second
    assert "sk-same" not in first
    assert key_of("c", **shared | {"OPENAI_API_KEY": "sk-other"}) != first
    # Alone on SQLite, each data directory keeps its own generated key.
    assert key_of("a", POSTGRES_URL="", OPENAI_API_KEY="") != key_of("b", POSTGRES_URL="")
