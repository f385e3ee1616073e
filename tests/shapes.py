"""OpenAI's error shape, which every refusal of the proxy takes."""


def error_of(response) -> dict:
    """The error of a test-client response, once its shape is checked."""
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error
