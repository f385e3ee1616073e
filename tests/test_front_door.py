"""The front door, as a newcomer meets it: `GET /`, the models list, unknown paths."""

import html

import openai
import pytest
from django.contrib.auth import get_user_model

from batches_app.models import KeyModel, ModelPrice, QueueLimit
from requests_app.operators import createsuperuser_command

from .conftest import make_key
from .engine import cycle
from .shapes import error_of

pytestmark = pytest.mark.django_db


def test_front_page_says_what_this_is_and_where_to_go(client):
    page = client.get("/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Batch API" in text
    assert "http://testserver/v1" in text  # the base URL to give the SDK
    assert 'href="/admin/"' in text and 'href="/admin/dashboard/"' in text
    assert 'href="/v1/openapi.json"' in text
    assert "No admin account yet" in text and "manage.py createsuperuser" in text
    get_user_model().objects.create_superuser("boss", "b@example.com", "pw")
    assert "An admin account exists." in client.get("/").content.decode()


def test_admin_view_site_goes_to_the_front_page(admin_client):
    assert 'href="/">View site' in admin_client.get("/admin/").content.decode()


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "BREW"])
@pytest.mark.parametrize("path", ["/v1/foo", "/foo/bar", "/v1/chat/completions/x"])
def test_unknown_path_is_404_for_every_method(client, method, path):
    """Not a CSRF 403 for an unsafe method: there is nothing at that path to protect."""
    response = client.generic(method, path, b"{}", content_type="application/json")
    assert response.status_code == 404
    assert error_of(response)["code"] == "unknown_url"


def test_post_to_the_front_page_is_405_not_403(client):
    response = client.post("/", {})
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"


@pytest.mark.e2e
def test_models_list_through_the_official_sdk(live_server, api_key):
    ModelPrice.objects.filter(model="gpt-4o").delete()
    QueueLimit.objects.create(model="gpt-4o", enqueued_tokens=1000)
    ModelPrice.objects.filter(model="gpt-4o-mini").delete()
    KeyModel.objects.create(api_key=api_key[0], model="gpt-4o-mini")
    sdk = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=api_key[1], max_retries=0)

    listed = {m.id: m for m in sdk.models.list()}
    assert {"gpt-4o", "gpt-4o-mini", "text-embedding-3-small"} <= set(listed)  # limit, used, price
    assert listed["gpt-4o-mini"].created > 0 and listed["gpt-4o-mini"].object == "model"
    assert sdk.models.retrieve("gpt-4o-mini-2024-07-18").id == "gpt-4o-mini-2024-07-18"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.models.retrieve("no-such-model")
    assert missing.value.code == "model_not_found"
    stranger = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()


def test_models_list_shows_a_key_its_own_models_never_another_keys(
    client, post, api_key, fake_openai
):
    """A fine-tuned model's name says whose it is: only the key that used it sees it."""
    tuned = "ft:gpt-4o-mini-2024-07-18:acme-secret-project::abc123"
    body = {"model": tuned, "messages": [{"role": "user", "content": "hi"}]}
    assert post("/v1/chat/completions", body).status_code == 422
    cycle()  # the flush notes the model for the key whose request it batched
    _, stranger = make_key("stranger")

    def listed(secret: str) -> dict[str, dict]:
        answer = client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {secret}")
        assert answer.status_code == 200
        return {m["id"]: m for m in answer.json()["data"]}

    assert listed(api_key[1])[tuned]["created"] > 0
    assert tuned not in listed(stranger)
    assert "gpt-4o-mini" in listed(stranger)  # the operator's price table is everyone's
    found = client.get(f"/v1/models/{tuned}", HTTP_AUTHORIZATION=f"Bearer {stranger}")
    assert found.status_code == 404
    mine = client.get(f"/v1/models/{tuned}", HTTP_AUTHORIZATION=f"Bearer {api_key[1]}")
    assert mine.status_code == 200


def test_models_are_owned_by_their_provider(client, api_key, settings):
    """claude-* is Anthropic's and gemini-* Google's, configured upstream or not."""
    settings.UPSTREAMS = [
        {
            "name": "claude",
            "kind": "anthropic",
            "base_url": "http://a",
            "key_env": "A",
            "models": ["claude-*"],
        },
        {
            "name": "eu",
            "kind": "azure",
            "base_url": "http://b",
            "key_env": "B",
            "models": ["my-gpt4o-deployment"],
        },
    ]
    ModelPrice.objects.get_or_create(model="gemini-2.5-flash", defaults={"input_per_million": 1})
    ModelPrice.objects.get_or_create(model="claude-sonnet-4", defaults={"input_per_million": 1})
    answer = client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {api_key[1]}")
    owners = {m["id"]: m["owned_by"] for m in answer.json()["data"]}
    assert owners["claude-sonnet-4"] == "anthropic"
    assert owners["gemini-2.5-flash"] == "google"
    assert owners["gpt-4o-mini"] == "openai"
    assert owners["my-gpt4o-deployment"] == "openai"  # an upstream's named model is listed


def test_front_page_gives_the_same_admin_command_as_serve(client):
    """Not `python manage.py …` when serve prints `.venv/bin/python manage.py …`."""
    text = client.get("/").content.decode()
    assert f"<code>{createsuperuser_command()}</code>" in text


def test_front_page_shows_each_providers_sdk(client):
    text = client.get("/").content.decode()
    for sdk in ("openai.OpenAI(", "anthropic.Anthropic(", "genai.Client("):
        assert sdk in text


def test_front_page_names_every_provider_with_a_key(client, settings, monkeypatch):
    settings.OPENAI_API_KEY = ""
    settings.UPSTREAMS = [
        {
            "name": "claude",
            "kind": "anthropic",
            "base_url": "https://api.anthropic.com",
            "key_env": "CLAUDE_KEY",
            "models": ["claude-*"],
        },
        {
            "name": "g",
            "kind": "gemini",
            "base_url": "https://generativelanguage.googleapis.com/",
            "key_env": "G_KEY",
            "models": ["gemini-*"],
        },
    ]
    monkeypatch.setenv("CLAUDE_KEY", "k1")
    monkeypatch.setenv("G_KEY", "k2")
    text = html.unescape(client.get("/").content.decode())
    assert "sending batches to Anthropic's Message Batches and Gemini's batch jobs." in text
    assert "OpenAI's Batch API" not in text


def test_front_page_in_try_out_mode_names_the_three_fakes(client, settings):
    settings.TRY_OUT = {"fakes": {}}
    text = client.get("/").content.decode()
    assert "the built-in fakes of OpenAI, Anthropic and Gemini" in text
