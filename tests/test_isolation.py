"""Tenants and the admin: one key never sees, waits on or reuses another key's requests or
answers; a revoked key is refused at once; keys are stored hashed; the admin is behind a login
everywhere, CSRF-protected, movable and cookie-safe."""

import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import openai
import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from requests_app.keys import api_key_revoke
from requests_app.models import ApiKey, BatchRequest

from .engine import cycle
from .shapes import error_of

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "private question"}]}

pytestmark = pytest.mark.django_db


def run_python(script: str, env: dict) -> str:
    """What `script` prints in a new Python process with the project's settings and `env`."""
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env | {"DJANGO_SETTINGS_MODULE": "batchproxy.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def finish(request_id: str, **fields) -> None:
    BatchRequest.objects.filter(pk=request_id).update(finished_at=timezone.now(), **fields)


def test_identical_call_of_another_key_never_gets_this_keys_answer(post, other_key):
    mine = post("/v1/chat/completions", CHAT)["X-Batch-Request-Id"]
    finish(mine, status="completed", response_status=200, response_body='{"secret": "mine"}')

    theirs = post("/v1/chat/completions", CHAT, secret=other_key[1])
    assert theirs.status_code == 422
    assert theirs["X-Batch-Request-Id"] != mine
    assert b"mine" not in theirs.content
    assert post("/v1/chat/completions", CHAT).content == b'{"secret": "mine"}'


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"status": "completed", "response_status": 200, "response_body": "{}"},
        {"status": "failed", "error_code": "batch_expired"},
        {"status": "cancelled"},
    ],
    ids=["queued", "completed", "failed", "cancelled"],
)
def test_another_keys_request_looks_like_no_request_at_all(post, client, other_key, fields):
    mine = post("/v1/chat/completions", CHAT)["X-Batch-Request-Id"]
    finish(mine, **fields) if fields else None
    auth = {"HTTP_AUTHORIZATION": f"Bearer {other_key[1]}"}

    theirs = client.get(f"/v1/batch_requests/{mine}", **auth)
    nothing = client.get(f"/v1/batch_requests/{uuid.uuid4()}", **auth)
    assert theirs.status_code == nothing.status_code == 404
    assert error_of(theirs) == error_of(nothing)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_two_keys_asking_the_same_get_their_own_lines_and_answers(
    sdk, live_server, other_key, fake_openai
):
    theirs = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=other_key[1], max_retries=0)
    ids = set()
    for client in (sdk, theirs):
        with pytest.raises(openai.UnprocessableEntityError) as pending:
            client.chat.completions.create(**CHAT)
        ids.add(pending.value.response.headers["x-batch-request-id"])
    assert len(ids) == 2
    cycle()

    # De-duplication is per key: OpenAI was asked twice, once for each tenant.
    assert len(fake_openai.submitted_lines()) == 2
    answers = {
        client.chat.completions.with_raw_response.create(**CHAT).headers["x-batch-request-id"]
        for client in (sdk, theirs)
    }
    assert answers == ids


def test_revoked_key_is_refused_at_once_everywhere(post, client, api_key):
    queued = post("/v1/chat/completions", CHAT)["X-Batch-Request-Id"]
    assert api_key_revoke(key_id=api_key[0].pk)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {api_key[1]}"}

    for response in (
        post("/v1/chat/completions", CHAT),  # its own queued request
        post("/v1/embeddings", {"model": "e", "input": "new"}),  # a new one
        post("/v1/chat/completions", "not json"),  # bad input: no hint about what is wrong
        client.get(f"/v1/batch_requests/{queued}", **auth),
    ):
        assert response.status_code == 401
        assert error_of(response)["code"] == "invalid_api_key"
    assert BatchRequest.objects.count() == 1


def test_keys_are_stored_only_as_hashes(post, api_key, other_key):
    post("/v1/chat/completions", CHAT)
    post("/v1/chat/completions", CHAT, secret=other_key[1])
    for key, secret in (api_key, other_key):
        stored = ApiKey.objects.filter(pk=key.pk).values().get()
        assert stored["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
        assert not any(secret in str(value) for value in stored.values())
        assert not BatchRequest.objects.filter(body__contains=secret).exists()


# --- The admin ------------------------------------------------------------------------------


def admin_routes() -> list[str]:
    """Every route under ADMIN_URL, with sample values for its parameters."""
    routes: list[str] = []

    def walk(patterns, prefix: str) -> None:
        for pattern in patterns:
            route = prefix + str(pattern.pattern).lstrip("^").rstrip("$")
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.startswith(django_settings.ADMIN_URL):
                routes.append(route)

    walk(get_resolver().url_patterns, "")
    samples = []
    for route in routes:
        for param in ("<path:object_id>", "<path:content_type_id>", "<int:pk>", "<pk>", "<id>"):
            route = route.replace(param, "1")
        if "(?P<app_label>" in route:
            route = route.split("(?P<app_label>")[0] + "requests_app/"
        if "(?P<url>" in route:
            route = route.split("(?P<url>")[0] + "anything/"
        samples.append("/" + route)
    return sorted(set(samples))


def test_every_admin_page_asks_for_a_login(client, admin_user):
    routes = admin_routes()
    assert len(routes) > 20  # the walk found the model pages, not just the index
    login = f"/{django_settings.ADMIN_URL}login/"
    for route in routes:
        if route == login:
            continue
        response = client.get(route)
        if route.endswith("/logout/"):
            assert response.status_code in (302, 405)  # nothing to read there
            continue
        assert response.status_code == 302, route
        assert response["Location"].startswith(login), route
    client.force_login(admin_user)
    assert client.get(f"/{django_settings.ADMIN_URL}").status_code == 200


def test_admin_moves_with_admin_url(tmp_path):
    script = (
        "import django; django.setup()\n"
        "from django.test import Client\n"
        "c = Client()\n"
        "print(c.get('/ops-9f3c/').status_code, c.get('/ops-9f3c/')['Location'])\n"
        "print(c.get('/admin/').status_code, c.get('/admin/')['Content-Type'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "POSTGRES_URL")}
    env |= {"ADMIN_URL": "ops-9f3c/", "DATA_DIR": str(tmp_path)}
    moved, old = run_python(script, env).split("\n")[:2]
    assert moved == "302 /ops-9f3c/login/?next=/ops-9f3c/"
    assert old == "404 application/json"


def test_admin_posts_without_a_csrf_token_are_refused(admin_user):
    client = Client(enforce_csrf_checks=True)
    login = client.post(
        f"/{django_settings.ADMIN_URL}login/", {"username": "admin", "password": "password"}
    )
    assert login.status_code == 403

    client.force_login(admin_user)
    changelist = f"/{django_settings.ADMIN_URL}requests_app/apikey/"
    assert client.get(changelist).status_code == 200
    action = client.post(changelist, {"action": "delete_selected", "_selected_action": ["1"]})
    assert action.status_code == 403


def test_session_and_csrf_cookies_are_secure_when_served_over_https(client, admin_user, settings):
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    login = f"/{django_settings.ADMIN_URL}login/"
    page = client.get(login, secure=True)
    assert page.cookies["csrftoken"]["secure"]
    response = client.post(login, {"username": "admin", "password": "password"}, secure=True)
    assert response.status_code == 302
    assert response.cookies["sessionid"]["secure"]
    assert response.cookies["sessionid"]["httponly"]


def test_secure_cookies_setting_comes_from_the_environment(tmp_path):
    script = (
        "from django.conf import settings\n"
        "print(settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE)\n"
    )
    env = dict(os.environ, SECURE_COOKIES="true", DATA_DIR=str(tmp_path))
    assert run_python(script, env).split() == ["True", "True"]
