import pytest
from django.db import connections

from requests_app.models import ApiKey, hash_key


def pytest_configure(config):
    # Live-server threads must not keep connections open past the test: PostgreSQL refuses to
    # drop a test database that still has sessions.
    for alias in connections:
        connections.settings[alias]["CONN_MAX_AGE"] = 0


def make_key(name: str = "team") -> tuple[ApiKey, str]:
    secret = ApiKey.new_secret()
    key = ApiKey.objects.create(name=name, prefix=secret[:8], key_hash=hash_key(secret))
    return key, secret


@pytest.fixture
def api_key(db) -> tuple[ApiKey, str]:
    return make_key()


@pytest.fixture
def other_key(db) -> tuple[ApiKey, str]:
    return make_key("other team")


@pytest.fixture
def post(client, api_key):
    """POST a JSON body to the proxy with the test key, like an SDK would."""

    def _post(path: str, body, *, secret: str | None = None, **extra):
        data = body if isinstance(body, bytes | str) else __import__("json").dumps(body)
        headers = {"HTTP_AUTHORIZATION": f"Bearer {secret or api_key[1]}"} | extra
        return client.post(path, data=data, content_type="application/json", **headers)

    return _post


@pytest.fixture(scope="session")
def fake_server():
    from batchproxy.fakes.openai import FakeOpenAI

    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def fake_openai(fake_server, settings):
    """The fake OpenAI, reset, with the proxy pointed at it."""
    fake_server.reset()
    settings.OPENAI_BASE_URL = fake_server.url
    settings.OPENAI_API_KEY = "sk-upstream-test-secret"
    settings.UPSTREAM_BACKOFF = 0
    return fake_server


@pytest.fixture
def sdk(live_server, api_key, fake_openai):
    """The official OpenAI SDK pointed at a live proxy, which points at the fake OpenAI."""
    import openai

    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=api_key[1], max_retries=0)


# The kinds of upstream that the fake OpenAI can stand in for: the engine's reliability tests
# run for each (`upstream_kind`).
UPSTREAM_KINDS = ["openai", "azure"]
API_PREFIX = {"openai": "/v1", "azure": "/openai"}


def kind_env(kind: str, fake) -> dict[str, str]:
    """The environment that routes the tests' models to the fake as this kind of upstream."""
    if kind == "openai":
        return {}
    return {
        "UPSTREAMS": "azure-test",
        "UPSTREAM_AZURE_TEST_KIND": "azure",
        "UPSTREAM_AZURE_TEST_BASE_URL": fake.azure_endpoint,
        "UPSTREAM_AZURE_TEST_MODELS": "gpt-4o-*,gpt-4.1-*",
        "UPSTREAM_AZURE_TEST_API_VERSION": "2025-04-01-preview",
        "UPSTREAM_AZURE_TEST_API_KEY": "azure-upstream-test-secret",
    }


@pytest.fixture(params=UPSTREAM_KINDS)
def upstream_kind(request, fake_openai, settings, monkeypatch) -> str:
    """Route the tests' models to the fake OpenAI as each kind of upstream in turn, in this
    process and (through the environment) in worker processes."""
    from batchproxy.settings import upstream_from_env

    for name, value in kind_env(request.param, fake_openai).items():
        monkeypatch.setenv(name, value)
    names = [name for name in kind_env(request.param, fake_openai).get("UPSTREAMS", "").split(",")]
    settings.UPSTREAMS = [upstream_from_env(name) for name in names if name]
    yield request.param
    prefix = API_PREFIX[request.param]
    assert all(path.startswith((prefix, "/_fake")) for _, path in fake_openai.calls), (
        f"a call missed the {request.param} upstream"
    )


@pytest.fixture(scope="session")
def anthropic_server():
    from batchproxy.fakes.anthropic import FakeAnthropic

    server = FakeAnthropic().start()
    yield server
    server.stop()


@pytest.fixture
def fake_anthropic(anthropic_server, fake_openai, settings, monkeypatch):
    """The fake Anthropic, reset, as the proxy's upstream for claude-* models."""
    from batchproxy.settings import upstream_from_env

    anthropic_server.reset()
    monkeypatch.setenv("UPSTREAMS", "claude")  # for worker processes too
    monkeypatch.setenv("UPSTREAM_CLAUDE_KIND", "anthropic")
    monkeypatch.setenv("UPSTREAM_CLAUDE_BASE_URL", anthropic_server.url)
    monkeypatch.setenv("UPSTREAM_CLAUDE_MODELS", "claude-*")
    monkeypatch.setenv("UPSTREAM_CLAUDE_API_KEY", "sk-ant-upstream-test-secret")
    settings.UPSTREAMS = [upstream_from_env("claude")]
    settings.OPENAI_MAX_RETRIES = 0
    return anthropic_server


@pytest.fixture
def second_org(fake_openai, settings, monkeypatch):
    """A second OpenAI organisation, `openai-2`, on a fake of its own, serving gpt-4o: the same
    model as the default upstream, with a queue limit of its own."""
    from batchproxy.fakes.openai import FakeOpenAI
    from batchproxy.settings import upstream_from_env

    server = FakeOpenAI().start()
    monkeypatch.setenv("UPSTREAM_OPENAI_2_BASE_URL", server.url)
    monkeypatch.setenv("UPSTREAM_OPENAI_2_MODELS", "gpt-4o")
    monkeypatch.setenv("UPSTREAM_OPENAI_2_API_KEY", "sk-second-org-test-secret")
    settings.UPSTREAMS = [upstream_from_env("openai-2")]
    yield server
    server.stop()


GEMINI_UPSTREAM_KEY = "gemini-upstream-test-secret"


@pytest.fixture(scope="session")
def gemini_server():
    from batchproxy.fakes.gemini import FakeGemini

    server = FakeGemini().start()
    yield server
    server.stop()


@pytest.fixture
def fake_gemini(gemini_server, fake_openai, settings, monkeypatch):
    """The fake Gemini API, reset, as the proxy's upstream (`google`) for gemini-* models."""
    from batchproxy.settings import upstream_from_env

    gemini_server.reset()
    monkeypatch.setenv("UPSTREAMS", "google")  # for worker processes too
    monkeypatch.setenv("UPSTREAM_GOOGLE_KIND", "gemini")
    monkeypatch.setenv("UPSTREAM_GOOGLE_BASE_URL", gemini_server.url)
    monkeypatch.setenv("UPSTREAM_GOOGLE_MODELS", "gemini-*")
    monkeypatch.setenv("UPSTREAM_GOOGLE_API_KEY", GEMINI_UPSTREAM_KEY)
    settings.UPSTREAMS = [upstream_from_env("google")]
    settings.OPENAI_MAX_RETRIES = 0
    return gemini_server
