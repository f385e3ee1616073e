"""Vertex AI (issue 23), the caller's side only: google-genai with `vertexai=True` and an API key
(express mode) reaches the proxy at Vertex's paths and is answered like a Gemini caller, by the
Gemini upstream (the fake Gemini here). The Vertex batch prediction upstream is not built."""

import pytest
from google import genai
from google.genai import errors

from .engine import cycle

pytestmark = pytest.mark.django_db(transaction=True)


def test_google_genai_in_vertex_mode_gets_422_then_its_answer(live_server, api_key, fake_gemini):
    vertex = genai.Client(
        vertexai=True, api_key=api_key[1], http_options={"base_url": live_server.url}
    )

    with pytest.raises(errors.ClientError) as pending:
        vertex.models.generate_content(model="gemini-2.5-flash", contents="from vertex")
    assert pending.value.code == 422
    assert pending.value.details["error"]["details"][0]["reason"] == "BATCH_PENDING"
    cycle()

    answer = vertex.models.generate_content(model="gemini-2.5-flash", contents="from vertex")
    assert answer.text == "echo: from vertex"
    [sent] = fake_gemini.submitted()
    assert sent["request"]["contents"][0]["parts"][0]["text"] == "from vertex"


def test_a_wrong_key_is_refused_in_googles_shape(live_server, fake_gemini):
    vertex = genai.Client(
        vertexai=True, api_key="bp-wrong", http_options={"base_url": live_server.url}
    )
    with pytest.raises(errors.ClientError) as refused:
        vertex.models.generate_content(model="gemini-2.5-flash", contents="no")
    assert refused.value.code == 401
    assert not fake_gemini.submitted()
