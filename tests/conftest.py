import os

import pytest
from django.db import connections

from requests_app.models import ApiKey, hash_key

from . import kinds

# The processes tests start (manage.py, gunicorn, serve) run as production does outside a
# try-out, which needs both (ops_app.checks). A test-only key, no secret.
os.environ.setdefault("SECRET_KEY", "tests-only-not-a-secret-" + "0123456789" * 4)
os.environ.setdefault("ALLOWED_HOSTS", "*")


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
    settings.OPENAI_API_KEY = kinds.OpenAI.key
    settings.UPSTREAM_BACKOFF = 0
    return fake_server


@pytest.fixture
def sdk(live_server, api_key, fake_openai):
    """The official OpenAI SDK pointed at a live proxy, which points at the fake OpenAI."""
    import openai

    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=api_key[1], max_retries=0)


@pytest.fixture(scope="session")
def anthropic_server():
    from batchproxy.fakes.anthropic import FakeAnthropic

    server = FakeAnthropic().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def groq_server():
    from batchproxy.fakes.groq import FakeGroq

    server = FakeGroq().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def together_server():
    from batchproxy.fakes.together import FakeTogether

    server = FakeTogether().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mistral_server():
    from batchproxy.fakes.mistral import FakeMistral

    server = FakeMistral().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fireworks_server():
    from batchproxy.fakes.fireworks import FakeFireworks

    server = FakeFireworks().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def xai_server():
    from batchproxy.fakes.xai import FakeXai

    server = FakeXai().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bedrock_server():
    from batchproxy.fakes.bedrock import FakeBedrock

    server = FakeBedrock().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vertex_server():
    from batchproxy.fakes.vertex import FakeVertex

    server = FakeVertex().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gemini_server():
    from batchproxy.fakes.gemini import FakeGemini

    server = FakeGemini().start()
    yield server
    server.stop()


@pytest.fixture
def fake_anthropic(anthropic_server, fake_openai, settings, monkeypatch):
    """The fake Anthropic, reset, as the proxy's upstream for claude-* models."""
    anthropic_server.reset()
    kinds.Anthropic(anthropic_server).configure(settings, monkeypatch)
    settings.OPENAI_MAX_RETRIES = 0
    return anthropic_server


@pytest.fixture
def fake_gemini(gemini_server, fake_openai, settings, monkeypatch):
    """The fake Gemini API, reset, as the proxy's upstream for gemini-* models (small batches
    inline)."""
    gemini_server.reset()
    kinds.GeminiInline(gemini_server).configure(settings, monkeypatch)
    settings.OPENAI_MAX_RETRIES = 0
    return gemini_server


@pytest.fixture(params=list(kinds.KINDS))
def kind(request, fake_openai, client, api_key, settings, monkeypatch) -> kinds.Kind:
    """Each kind of upstream in turn (tests/kinds.py): its fake reset, the proxy routing the
    kind's model to it, in this process and in worker processes. Afterwards: the calls reached
    that fake, and no other."""
    cls = kinds.KINDS[request.param]
    fake = request.getfixturevalue(cls.fake_fixture)
    fake.reset()
    driver = cls(fake, client=client, secret=api_key[1])
    driver.configure(settings, monkeypatch)
    yield driver
    driver.assert_exercised()
    if fake is not fake_openai:
        assert not fake_openai.calls, f"a call of the {driver.name} test reached the fake OpenAI"


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


@pytest.fixture(scope="session")
def asgi_url(django_db_setup, django_db_blocker):
    """The proxy's ASGI application (batchproxy/asgi.py) served by uvicorn in a thread of this
    process, on the test database, as `live_server` serves the WSGI one: held calls and
    streams wait in its event loop. Tests using it need `django_db(transaction=True)`."""
    import threading

    import uvicorn

    from batchproxy.asgi import application

    from .processes import free_port

    port = free_port()
    config = uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
        assert thread.is_alive(), "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    connection = connections["default"]
    if connection.vendor == "postgresql":
        # The server's threads and its answers listener kept their connections: end them,
        # so that the test database can be dropped.
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
