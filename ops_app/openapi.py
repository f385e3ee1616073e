"""The OpenAPI description of the proxy's own endpoints (drf-spectacular hooks).

The intake endpoints are DRF views without serializers (`Intake.schema = None`): their bodies
are OpenAI's (or Anthropic's on /v1/messages, Gemini's on generateContent) and their answers
the contract's, so `add_intake_paths` describes them by hand, from the contract's table.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension

from requests_app.models import ENDPOINTS

ERROR_REF = {"$ref": "#/components/schemas/Error"}
ANTHROPIC_ERROR_REF = {"$ref": "#/components/schemas/AnthropicError"}
REQUEST_ID_HEADER = {
    "description": "The proxy's id of this request (GET /v1/batch_requests/{id}).",
    "schema": {"type": "string", "format": "uuid"},
}
NO_RETRY_HEADER = {
    "description": "Always 'false': repeating the call gives the same answer.",
    "schema": {"type": "string", "enum": ["false"]},
}


BEARER_SCHEME = {"type": "http", "scheme": "bearer", "description": "A proxy key."}
ANTHROPIC_KEY_SCHEME = {
    "type": "apiKey",
    "in": "header",
    "name": "x-api-key",
    "description": "A proxy key, as the Anthropic SDK's API key.",
}
GEMINI_KEY_SCHEME = {
    "type": "apiKey",
    "in": "header",
    "name": "x-goog-api-key",
    "description": "A proxy key, as google-genai's API key.",
}


class ProxyKeyScheme(OpenApiAuthenticationExtension):
    target_class = "requests_app.auth.ProxyKeyAuthentication"
    name = "proxyKey"

    def get_security_definition(self, auto_schema):
        return BEARER_SCHEME


class ProviderKeyScheme(OpenApiAuthenticationExtension):
    """A provider SDK's own key header or a bearer: any one of the three (OR)."""

    target_class = "requests_app.auth.ProviderKeyAuthentication"
    name = ["proxyKey", "anthropicKey", "geminiKey"]

    def get_security_requirement(self, auto_schema):
        return [{name: []} for name in self.name]

    def get_security_definition(self, auto_schema):
        return [BEARER_SCHEME, ANTHROPIC_KEY_SCHEME, GEMINI_KEY_SCHEME]


def only_v1_paths(endpoints, **kwargs):
    """Describe the /v1 paths only; the same endpoints without /v1 are aliases."""
    return [endpoint for endpoint in endpoints if endpoint[0].startswith("/v1/")]


def _error(description: str, schema: dict = ERROR_REF, **headers: dict) -> dict:
    response = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


# Deadlines (batches_app/tiers.py): not part of the request's identity.
DEADLINE_PARAMETERS = [
    {
        "name": "X-Batch-Deadline",
        "in": "header",
        "description": "Answer by then at the cheapest tier that can (batch, flex, standard): "
        "seconds from the first call, or an RFC 3339 time. A repeat with an earlier one "
        "tightens it. 0 (or a time past) is X-Batch-Mode: now.",
        "schema": {"type": "string"},
    },
    {
        "name": "X-Batch-Mode",
        "in": "header",
        "description": "`now`: send it at once at the standard tier; the first call gets the "
        "answer.",
        "schema": {"type": "string", "enum": ["now", "batch"]},
    },
]
JSON_OBJECT = {"type": "object", "additionalProperties": True}
# Held calls (requests_app/waiting.py): how long to wait for the answer before the 422.
PREFER_PARAMETER = {
    "name": "Prefer",
    "in": "header",
    "description": "`wait=N` (RFC 7240): hold the call up to N seconds (at most "
    "MAX_HOLD_SECONDS) and answer it the moment its answer lands, else with the 422.",
    "schema": {"type": "string", "example": "wait=300"},
}
STREAM_CONTENT = {
    "text/event-stream": {
        "schema": {
            "type": "string",
            "description": "With `stream: true`: sent at once, keep-alives while the batch "
            "runs, then the answer as the provider's own stream events.",
        }
    }
}
RECEIPT_HEADERS = {
    "X-Batch-Tier": {
        "description": "The tier that answered.",
        "schema": {"type": "string", "enum": ["batch", "flex", "standard"]},
    },
    "X-Batch-Cost-USD": {
        "description": "What the answer cost at that tier (absent for a model with no price).",
        "schema": {"type": "string"},
    },
}


def _intake_operation(endpoint: str) -> dict:
    return {
        "operationId": "create_" + endpoint.replace("/", "_"),
        "summary": f"Queue a /v1/{endpoint} call for the Batch API, or get its answer",
        "description": (
            "Repeat the identical call (same key, same body) until it stops answering 422. "
            "The body is passed to OpenAI unchanged; only `model` and `stream` are checked."
        ),
        "tags": ["batched calls"],
        "security": [{"proxyKey": []}],
        "parameters": [*DEADLINE_PARAMETERS, PREFER_PARAMETER],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Call"}}},
        },
        "responses": {
            "200": {
                "description": "Done: the upstream answer, unchanged (or, with `stream: true`, "
                "the stream that carries it).",
                "headers": {"X-Batch-Request-Id": REQUEST_ID_HEADER, **RECEIPT_HEADERS},
                "content": {
                    "application/json": {"schema": JSON_OBJECT},
                    **STREAM_CONTENT,
                },
            },
            "400": _error(
                "The body is not a JSON object, `model` is missing, or `stream` is not a "
                "boolean or is true where the endpoint does not stream."
            ),
            "401": _error("Missing or wrong proxy key (`invalid_api_key`)."),
            "409": _error(
                "Cancelled by an operator (`batch_cancelled`).",
                **{"x-should-retry": NO_RETRY_HEADER},
            ),
            "413": _error("The body is larger than MAX_REQUEST_BYTES."),
            "422": _error(
                "Pending (`batch_pending`): queued or running upstream; repeat the call later.",
                **{
                    "Retry-After": {
                        "description": "Seconds until the answer could be there (at least 1).",
                        "schema": {"type": "integer", "minimum": 1},
                    },
                    "X-Batch-Request-Id": REQUEST_ID_HEADER,
                },
            ),
            "502": _error(
                "Failed for good in the Batch API (`batch_failed`; `code` is the upstream's).",
                **{"x-should-retry": NO_RETRY_HEADER},
            ),
            "4XX": _error("Done: the upstream answered this line with an HTTP error, unchanged."),
        },
    }


def _provider_operation(
    *,
    provider: str,
    operation_id: str,
    summary: str,
    body: str,
    error: dict,
    checked: str,
    security: list,
    not_served: str,
    **extra,
) -> dict:
    """An intake of another provider's API: as the other intakes, with its body, key and
    error shape."""
    parameters = [*extra.pop("parameters", []), PREFER_PARAMETER]
    return extra | {
        "operationId": operation_id,
        "summary": summary,
        "description": (
            "Repeat the identical call (same key, same body) until it stops answering 422. "
            f"The body is passed to {provider} unchanged; {checked} "
            f"Every error is in {provider}'s shape."
        ),
        "tags": ["batched calls"],
        "security": security,
        "parameters": parameters,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        },
        "responses": {
            "200": {
                "description": "Done: the answer, unchanged (or the stream that carries it).",
                "headers": {"X-Batch-Request-Id": REQUEST_ID_HEADER},
                "content": {
                    "application/json": {"schema": JSON_OBJECT},
                    **STREAM_CONTENT,
                },
            },
            "400": _error("The body is not one the batch can take.", error),
            "401": _error("Missing or wrong proxy key.", error),
            "404": _error(not_served, error),
            "409": _error(
                "Cancelled by an operator (`batch_cancelled`).",
                error,
                **{"x-should-retry": NO_RETRY_HEADER},
            ),
            "413": _error("The body is larger than MAX_REQUEST_BYTES.", error),
            "422": _error(
                "Pending (`batch_pending`): queued or running upstream; repeat the call later.",
                error,
                **{
                    "Retry-After": {
                        "description": "Seconds until the answer could be there (at least 1).",
                        "schema": {"type": "integer", "minimum": 1},
                    },
                    "X-Batch-Request-Id": REQUEST_ID_HEADER,
                },
            ),
            "502": _error(
                "Failed for good in the batch (`batch_failed`).",
                error,
                **{"x-should-retry": NO_RETRY_HEADER},
            ),
            "4XX": _error("Done: the batch answered this request with an error, unchanged.", error),
        },
    }


MESSAGES = _provider_operation(
    provider="Anthropic",
    operation_id="create_messages",
    summary="Queue an Anthropic /v1/messages call for Message Batches, or get its answer",
    body="MessagesCall",
    error=ANTHROPIC_ERROR_REF,
    checked="only `model`, `messages` and `stream` are checked.",
    security=[{"anthropicKey": []}, {"proxyKey": []}],
    not_served="No Anthropic upstream serves this model (`not_found_error`).",
)
GENERATE_CONTENT = _provider_operation(
    provider="Google",
    operation_id="generate_content",
    summary="Queue a Gemini generateContent call for a batch job, or get its answer",
    body="GenerateContentCall",
    error={"$ref": "#/components/schemas/GoogleError"},
    checked="it is checked against google-genai's own types. Also served under /v1.",
    security=[{"geminiKey": []}],
    not_served="No Gemini upstream serves this model (`NOT_FOUND`).",
    parameters=[{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
)


COMPONENTS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": "string", "nullable": True},
                    "code": {"type": "string", "nullable": True},
                },
            }
        },
    },
    "Call": {
        "type": "object",
        "description": "An OpenAI request body for the endpoint; passed upstream unchanged.",
        "required": ["model"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "\\S"},
            "stream": {
                "type": "boolean",
                "enum": [False],
                "description": "Batches cannot stream: true is refused with 400.",
            },
        },
        "additionalProperties": True,
    },
    "AnthropicError": {
        "type": "object",
        "required": ["type", "error"],
        "properties": {
            "type": {"type": "string", "enum": ["error"]},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            },
            "request_id": {"type": "string"},
        },
    },
    "GoogleError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "status"],
                "properties": {
                    "code": {"type": "integer"},
                    "message": {"type": "string"},
                    "status": {"type": "string"},
                    "details": {"type": "array", "items": {"type": "object"}},
                },
            }
        },
    },
    "GenerateContentCall": {
        "type": "object",
        "description": "A Gemini GenerateContentRequest; the model is the path's.",
        "required": ["contents"],
        "properties": {"contents": {"type": "array", "minItems": 1, "items": {"type": "object"}}},
        "additionalProperties": True,
    },
    "MessagesCall": {
        "type": "object",
        "description": "An Anthropic Messages request body; passed upstream unchanged.",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "\\S"},
            "max_tokens": {"type": "integer", "minimum": 1},
            "messages": {"type": "array", "items": {"type": "object"}},
            "stream": {
                "type": "boolean",
                "enum": [False],
                "description": "Batches cannot stream: true is refused with 400.",
            },
        },
        "additionalProperties": True,
    },
}


VIDEO_CONTENT = {
    "operationId": "video_content",
    "summary": "Download a video one of this key's calls made, streamed from upstream",
    "tags": ["batched calls"],
    "security": [{"proxyKey": []}],
    "parameters": [
        {"name": "video_id", "in": "path", "required": True, "schema": {"type": "string"}},
        {
            "name": "variant",
            "in": "query",
            "schema": {"type": "string", "enum": ["video", "thumbnail", "spritesheet"]},
        },
    ],
    "responses": {
        "200": {
            "description": "The content, as upstream sends it.",
            "content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}},
        },
        "401": _error("Missing or wrong proxy key (`invalid_api_key`)."),
        "404": _error("No such video for this key, or its content expired upstream."),
        "502": _error("The upstream failed to send it."),
    },
}


def add_intake_paths(result, generator, request, public):
    """Add the POST endpoints and the answers DRF cannot infer (401, 404)."""
    components = result.setdefault("components", {})
    components.setdefault("schemas", {}).update(COMPONENTS)
    schemes = components.setdefault("securitySchemes", {})
    schemes.setdefault("proxyKey", BEARER_SCHEME)
    schemes.setdefault("anthropicKey", ANTHROPIC_KEY_SCHEME)
    schemes.setdefault("geminiKey", GEMINI_KEY_SCHEME)
    for endpoint in ENDPOINTS:
        result["paths"][f"/v1/{endpoint}"] = {"post": _intake_operation(endpoint)}
    result["paths"]["/v1/messages"] = {"post": MESSAGES}
    result["paths"]["/v1beta/models/{model}:generateContent"] = {"post": GENERATE_CONTENT}
    result["paths"]["/v1/videos/{video_id}/content"] = {"get": VIDEO_CONTENT}
    for path, operations in result["paths"].items():
        if path.startswith(("/v1/batch_requests", "/v1/models")):
            for operation in operations.values():
                operation["responses"].setdefault("401", _error("Missing or wrong proxy key."))
        if path == "/v1/batch_requests":
            for operation in operations.values():
                operation["responses"].setdefault("400", _error("A bad cursor or filter."))
        if path.startswith("/v1/batch_requests/"):
            for operation in operations.values():
                operation["responses"].setdefault("404", _error("No such request for this key."))
        if path.startswith("/v1/models/"):
            for operation in operations.values():
                operation["responses"].setdefault("404", _error("No such model."))
    return result
