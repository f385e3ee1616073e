"""Upstreams as data (issue 16): each model goes to the upstream that serves it, every batch
to one upstream, keys read from the environment and never shown."""

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.urls import reverse

from batches_app import services, upstreams
from batches_app.models import Batch
from batchproxy.fakes.openai import FakeOpenAI
from batchproxy.settings import upstream_from_env
from requests_app.models import BatchRequest

from . import kinds
from .cockpit import chat
from .engine import cycle

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status


@pytest.fixture
def second_fake():
    """Another OpenAI-compatible Batch API (say Groq), on its own port."""
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def groq(second_fake, fake_openai, settings, monkeypatch):
    monkeypatch.setenv("UPSTREAM_GROQ_BASE_URL", second_fake.url)
    monkeypatch.setenv("UPSTREAM_GROQ_MODELS", "llama-*,mixtral-8x7b")
    monkeypatch.setenv("GROQ_API_KEY", "gsk-upstream-test-secret")
    monkeypatch.setenv("UPSTREAM_GROQ_KEY_ENV", "GROQ_API_KEY")
    settings.UPSTREAMS = [upstream_from_env("groq")]
    return second_fake


def test_each_model_goes_to_the_upstream_that_serves_it(post, groq, fake_openai):
    for body in (chat("a"), chat("b", model="llama-3.1-8b"), chat("c", model="mixtral-8x7b")):
        assert post("/v1/chat/completions", body).status_code == 422

    cycle()

    by_model = dict(Batch.objects.values_list("model", "upstream"))
    assert by_model == {"gpt-4o-mini": "openai", "llama-3.1-8b": "groq", "mixtral-8x7b": "groq"}
    assert {line["body"]["model"] for line in fake_openai.submitted_lines()} == {"gpt-4o-mini"}
    assert {line["body"]["model"] for line in groq.submitted_lines()} == {
        "llama-3.1-8b",
        "mixtral-8x7b",
    }
    assert BatchRequest.objects.filter(status=Status.COMPLETED).count() == 3
    assert post("/v1/chat/completions", chat("b", model="llama-3.1-8b")).status_code == 200


def test_one_proxy_serves_openai_azure_anthropic_and_gemini_at_once(
    client,
    api_key,
    fake_openai,
    second_fake,
    anthropic_server,
    gemini_server,
    settings,
    monkeypatch,
):
    """An OpenAI model to the default upstream, an Azure deployment to Azure, claude-* to
    Anthropic and gemini-* to Gemini: all queued, then one cycle."""
    anthropic_server.reset()
    gemini_server.reset()
    callers = {"client": client, "secret": api_key[1]}
    every = [
        kinds.OpenAI(fake_openai, **callers),
        kinds.Azure(second_fake, **callers),
        kinds.Anthropic(anthropic_server, **callers),
        kinds.GeminiInline(gemini_server, **callers),
    ]
    kinds.configure_upstreams(every, settings, monkeypatch)
    texts = {kind.name: [f"{kind.name} {n}" for n in (1, 2)] for kind in every}
    for kind in every:
        for text in texts[kind.name]:
            assert kind.queue(text).status_code == 422

    cycle()

    by_model = dict(Batch.objects.values_list("model", "upstream"))
    assert by_model == {kind.model: kind.upstream for kind in every}
    assert Batch.objects.filter(state=Batch.State.DONE).count() == len(every)
    for kind in every:
        # Only its own requests reached each fake, with its own upstream key.
        assert sorted(kind.text_of(body) for body in kind.sent()) == texts[kind.name]
        assert set(kind.fake.keys) == {kind.key}, kind.name  # never the caller's
        kind.assert_exercised()
        for text in texts[kind.name]:
            answer = kind.queue(text)
            assert answer.status_code == 200, (kind.name, answer.content)
            assert kind.answer_of(answer.json()) == f"echo: {text}"


def test_routing_takes_the_first_upstream_that_serves_the_model(settings):
    first = {"name": "first", "kind": "openai", "base_url": "http://a", "key_env": "A_KEY"}
    second = {"name": "second", "kind": "azure", "base_url": "http://b", "key_env": "B_KEY"}
    settings.UPSTREAMS = [first | {"models": ["gpt-4o"]}, second | {"models": ["gpt-4o*"]}]

    def route(model: str) -> str:
        return upstreams.upstream_route(endpoint="/v1/chat/completions", model=model).name

    assert route("gpt-4o") == "first"
    assert route("gpt-4o-mini") == "second"
    assert route("gpt-4.1") == "openai"  # the default serves every other model


def test_a_key_is_read_from_its_variable_when_called(groq, monkeypatch):
    transport = upstreams.transport("groq")
    assert transport._api_key == "gsk-upstream-test-secret"
    monkeypatch.setenv("GROQ_API_KEY", "gsk-rotated")
    assert upstreams.transport("groq")._api_key == "gsk-rotated"


def test_a_batch_of_an_upstream_no_longer_configured_waits_and_loses_nothing(post, groq, settings):
    assert post("/v1/chat/completions", chat("x", model="llama-3")).status_code == 422
    services.batch_flush(force=True)
    settings.UPSTREAMS = []  # the operator removed it before the batch went out

    report = services.batches_advance(force=True)

    assert report.failures and "no longer configured" in report.failures[0]
    batch = Batch.objects.get()
    assert (batch.state, batch.upstream) == (Batch.State.BUILDING, "groq")
    assert BatchRequest.objects.get().status == Status.SUBMITTED


def test_the_dashboard_lists_upstreams_and_where_their_keys_come_from(admin_client, groq):
    page = admin_client.get(reverse("batchproxy-dashboard")).content.decode()
    assert "groq" in page and "GROQ_API_KEY" in page and "llama-*, mixtral-8x7b" in page
    assert "gsk-upstream-test-secret" not in page


def test_system_check_refuses_an_unknown_kind_and_an_upstream_without_models(settings):
    settings.UPSTREAMS = [
        {"name": "x", "kind": "cohere", "base_url": "http://x", "key_env": "X", "models": ["m"]},
        {"name": "y", "kind": "openai", "base_url": "http://y", "key_env": "Y", "models": []},
    ]
    with pytest.raises(SystemCheckError) as refused:
        call_command("check")
    assert "ops_app.E013" in str(refused.value) and "ops_app.E014" in str(refused.value)


def test_every_upstreams_key_is_masked_in_logs(groq, monkeypatch, settings):
    from ops_app.logs import redact

    monkeypatch.setenv("GROQ_API_KEY", "0123456789abcdef0123")  # no prefix a pattern knows
    assert redact("calling with 0123456789abcdef0123 now") == "calling with [redacted] now"


def test_the_default_upstream_refuses_every_call_without_a_key_outside_try_out(settings):
    settings.OPENAI_API_KEY, settings.TRY_OUT = "", None
    with pytest.raises(upstreams.UpstreamError) as refused:
        upstreams.transport()
    assert refused.value.code == "no_api_key" and not refused.value.permanent
    settings.TRY_OUT = {"fakes": {"openai": "http://127.0.0.1:9/v1"}}
    assert upstreams.transport().upstream.name == upstreams.DEFAULT


def anthropic_only(settings, monkeypatch) -> None:
    """A deployment with ANTHROPIC_API_KEY and no OPENAI_API_KEY."""
    settings.OPENAI_API_KEY, settings.TRY_OUT = "", None
    monkeypatch.setenv("CLAUDE_KEY", "sk-ant-test")
    settings.UPSTREAMS = [
        {
            "name": "anthropic",
            "kind": "anthropic",
            "base_url": "https://api.anthropic.com",
            "key_env": "CLAUDE_KEY",
            "models": ["claude-*"],
        },
    ]


def test_an_anthropic_only_deployment_may_start(settings, monkeypatch):
    settings.OPENAI_API_KEY, settings.TRY_OUT, settings.UPSTREAMS = "", None, []
    assert "No upstream key is set" in upstreams.upstream_refusal()
    anthropic_only(settings, monkeypatch)
    assert upstreams.upstream_refusal() is None
    route = upstreams.upstream_route(endpoint="/v1/messages", model="claude-sonnet-4-5")
    assert route.name == "anthropic"
