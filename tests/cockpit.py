"""Shared set-up for the admin, dashboard and key tests: real requests through the engine."""

CHAT = "chat/completions"


def chat(text: str, model: str = "gpt-4o-mini") -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def send(client, secret: str, body: dict, endpoint: str = CHAT) -> str:
    """Queue one call as a client would; return its request id."""
    import json

    response = client.post(
        f"/v1/{endpoint}",
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 422, response.content
    return response["X-Batch-Request-Id"]
