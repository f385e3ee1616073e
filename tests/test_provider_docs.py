"""Each provider's example configuration in the docs (issue 23) works as written: its variables,
with the base URL pointed at the provider's fake and a placeholder key, route the provider's
model there, and a request is answered through it."""

import re
from pathlib import Path

import pytest

from batches_app import upstreams
from batchproxy.fakes.fireworks import SIGNED
from batchproxy.settings import upstream_from_env
from requests_app.models import BatchRequest

from . import kinds
from .engine import cycle

pytestmark = pytest.mark.django_db
DOCS = Path(__file__).resolve().parent.parent / "docs"
EXAMPLE = re.compile(r"<!-- example: (\w+) -->\s*```sh\n(.*?)```", re.S)
KINDS = {
    "groq": kinds.Groq,
    "together": kinds.Together,
    "mistral": kinds.Mistral,
    "fireworks": kinds.Fireworks,
    "xai": kinds.Xai,
}


def examples() -> dict[str, dict[str, str]]:
    """The `<!-- example: NAME -->` blocks of the providers page: NAME -> its variables."""
    found = EXAMPLE.findall((DOCS / "providers.md").read_text())
    assert found, "no provider example in docs/providers.md"
    return {
        provider: dict(
            line.split("=", 1)
            for line in block.splitlines()
            if line.strip() and not line.startswith("#")
        )
        for provider, block in found
    }


def test_every_provider_has_an_example():
    assert set(examples()) == set(KINDS)


@pytest.mark.parametrize("provider", sorted(KINDS))
def test_the_example_configuration_routes_and_answers(
    provider, request, fake_openai, client, api_key, settings, monkeypatch
):
    cls = KINDS[provider]
    fake = request.getfixturevalue(cls.fake_fixture)
    fake.reset()
    variables = examples()[provider]
    [name] = variables["UPSTREAMS"].split(",")
    prefix = f"UPSTREAM_{name.upper()}_"
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv(prefix + "BASE_URL", fake.url)  # the fake in the provider's place
    monkeypatch.setenv(variables[prefix + "KEY_ENV"], cls.key)
    settings.UPSTREAMS = [upstream_from_env(name)]
    settings.OPENAI_MAX_RETRIES = 0
    caller = cls(fake, client=client, secret=api_key[1])

    route = upstreams.upstream_route(endpoint="/v1/chat/completions", model=caller.model)
    assert (route.name, route.kind) == (name, provider)
    assert caller.queue("from the docs").status_code == 422
    cycle()

    answer = caller.queue("from the docs")
    assert answer.status_code == 200, answer.content
    assert caller.answer_of(answer.json()) == "echo: from the docs"
    assert BatchRequest.objects.get().batch.upstream == name
    assert set(fake.keys) - {SIGNED} == {cls.key}  # and no key on a signed URL (Fireworks)
    assert not fake_openai.calls


def test_one_proxy_serves_every_provider_and_openai_at_once(
    client,
    api_key,
    fake_openai,
    groq_server,
    together_server,
    mistral_server,
    fireworks_server,
    xai_server,
    settings,
    monkeypatch,
):
    """Each model to its provider's fake, all queued, then one cycle: each caller its answer,
    each fake its own key and its own requests only."""
    callers = {"client": client, "secret": api_key[1]}
    every = [kinds.OpenAI(fake_openai, **callers)] + [
        cls(fake, **callers)
        for cls, fake in (
            (kinds.Groq, groq_server),
            (kinds.Together, together_server),
            (kinds.Mistral, mistral_server),
            (kinds.Fireworks, fireworks_server),
            (kinds.Xai, xai_server),
        )
    ]
    for kind in every[1:]:
        kind.fake.reset()
    kinds.configure_upstreams(every, settings, monkeypatch)
    settings.OPENAI_MAX_RETRIES = 0
    for kind in every:
        assert kind.queue(f"{kind.name} asks").status_code == 422
    cycle()

    for kind in every:
        answer = kind.queue(f"{kind.name} asks")
        assert answer.status_code == 200, (kind.name, answer.content)
        assert kind.answer_of(answer.json()) == f"echo: {kind.name} asks"
        assert [kind.text_of(body) for body in kind.sent()] == [f"{kind.name} asks"]
        assert set(kind.fake.keys) - {SIGNED} == {kind.key}, kind.name
        assert not kind.left_upstream(), kind.name
