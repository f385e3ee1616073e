"""Groq (issue 23): the OpenAI SDK through the proxy to Groq's OpenAI-shaped Batch API, with
its own path, completion windows (24h to 7d), limits per batch and no expiry parameters."""

from datetime import timedelta

import openai
import pytest
from django.utils import timezone

from batches_app import services, upstreams
from batches_app.models import Batch
from requests_app.models import BatchRequest

from . import kinds
from .engine import cycle

pytestmark = pytest.mark.django_db
Status = BatchRequest.Status


@pytest.fixture
def groq(groq_server, fake_openai, client, api_key, settings, monkeypatch):
    """The fake Groq as the upstream of llama-* models; the proxy's test client as caller."""
    groq_server.reset()
    kind = kinds.Groq(groq_server, client=client, secret=api_key[1])
    kind.configure(settings, monkeypatch)
    settings.OPENAI_MAX_RETRIES = 0
    yield kind
    assert not fake_openai.calls, "a Groq call reached the fake OpenAI"


def reconfigure(kind, settings, monkeypatch, **variables) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(f"UPSTREAM_GROQ_TEST_{name}", value)
    kind.configure(settings, monkeypatch)


def test_the_sdk_gets_422_then_its_own_answer_through_groqs_paths(live_server, groq, api_key):
    sdk = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=api_key[1], max_retries=0)
    ask = {"model": groq.model, "messages": [{"role": "user", "content": "hello groq"}]}

    with pytest.raises(openai.UnprocessableEntityError) as pending:
        sdk.chat.completions.create(**ask)
    assert pending.value.code == "batch_pending"
    cycle()
    answer = sdk.chat.completions.create(**ask)

    assert answer.choices[0].message.content == "echo: hello groq"
    paths = {path for _, path in groq.fake.calls}
    assert paths and all(path.startswith("/openai/v1/") for path in paths)
    assert set(groq.fake.keys) == {groq.key}  # never the caller's key
    kinds.assert_each_answered_once(groq)  # input and output files deleted too


def test_a_request_groq_refuses_reaches_its_caller_in_openais_shape(live_server, groq, api_key):
    sdk = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=api_key[1], max_retries=0)
    ask = {"model": groq.model, "messages": [{"role": "user", "content": "bad [[status:400]]"}]}
    with pytest.raises(openai.UnprocessableEntityError):
        sdk.chat.completions.create(**ask)
    cycle()

    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(**ask)
    assert refused.value.body["type"] == "invalid_request_error"


def test_batches_take_the_configured_window_and_no_expiry_parameters(groq, settings, monkeypatch):
    reconfigure(groq, settings, monkeypatch, COMPLETION_WINDOW="7d")
    assert groq.queue("a week").status_code == 422
    cycle()

    [batch] = groq.fake.batches.values()
    assert batch["completion_window"] == "7d"
    assert batch["expires_at"] - batch["created_at"] == 7 * 86_400
    assert BatchRequest.objects.get().status == Status.COMPLETED  # the fake took the upload


def test_a_window_groq_does_not_take_waits_with_a_clear_error(groq, settings, monkeypatch):
    reconfigure(groq, settings, monkeypatch, COMPLETION_WINDOW="30d")
    assert groq.queue("too long").status_code == 422
    cycle()

    batch = Batch.objects.get()
    assert batch.state == Batch.State.UPLOADED  # waits for the operator, nothing lost
    assert "not 24h to 7d" in batch.last_error
    assert not groq.fake.batches


def test_a_seven_day_batch_is_not_treated_as_stuck_after_a_day(groq, settings, monkeypatch):
    reconfigure(groq, settings, monkeypatch, COMPLETION_WINDOW="7d")
    groq.run_for(3600)
    assert groq.queue("slow").status_code == 422
    cycle()
    batch = Batch.objects.get()
    assert batch.state == Batch.State.RUNNING

    two_days = timezone.now() - timedelta(days=2)
    Batch.objects.update(upstream_created_at=two_days)
    services.batches_advance(force=True)
    assert Batch.objects.get().state == Batch.State.RUNNING  # within its 7 days
    assert upstreams.upstream_stuck_after(groq.upstream) == 7 * 86_400 + upstreams.STUCK_MARGIN

    Batch.objects.update(upstream_created_at=timezone.now() - timedelta(days=7, hours=3))
    services.batches_advance(force=True)
    assert Batch.objects.get().upstream_status == "expired"


def test_a_group_larger_than_groqs_batch_limit_is_split(groq, settings, monkeypatch):
    reconfigure(groq, settings, monkeypatch, MAX_REQUESTS="2")
    for text in ("one", "two", "three"):
        assert groq.queue(text).status_code == 422
    cycle()

    assert sorted(batch.request_count for batch in Batch.objects.all()) == [1, 2]
    assert len(groq.fake.batches) == 2
    kinds.assert_each_answered_once(groq)


def test_the_default_limits_are_groqs():
    groq = upstreams.Upstream(name="g", kind="groq", base_url="", key_env="", models=("llama-*",))
    assert upstreams.upstream_limits(groq) == (50_000, 100_000_000)
    assert upstreams.upstream_window(groq) == "24h"


def test_system_check_refuses_a_window_that_is_no_duration_and_needs_no_groq_url(settings):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    settings.UPSTREAMS = [
        {
            "name": "g",
            "kind": "groq",
            "base_url": "",  # Groq's own by default
            "key_env": "G",
            "models": ["llama-*"],
            "completion_window": "a week",
        }
    ]
    with pytest.raises(SystemCheckError) as refused:
        call_command("check")
    assert "ops_app.E015" in str(refused.value)
    assert "ops_app.E014" not in str(refused.value)
