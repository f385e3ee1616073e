"""Token counts from `usage` objects: no imports from the engine, so ingest can use it."""


def answer_usage(body) -> dict | None:
    """An answer's usage: OpenAI's and Anthropic's `usage`, Gemini's `usageMetadata`."""
    if not isinstance(body, dict):
        return None
    return body.get("usage") or body.get("usageMetadata")


def usage_tokens(usage) -> tuple[int, int]:
    """(input, output) tokens of a `usage` object of any endpoint or provider, or of a batch
    (OpenAI's, Anthropic's, Gemini's, Bedrock Converse's).

    Gemini bills its thinking as output, so its thoughts count with its candidates.
    """
    if not isinstance(usage, dict):
        return 0, 0
    if "promptTokenCount" in usage or "candidatesTokenCount" in usage:
        tokens_in = usage.get("promptTokenCount") or 0
        tokens_out = (usage.get("candidatesTokenCount") or 0) + (
            usage.get("thoughtsTokenCount") or 0
        )
        return int(tokens_in), int(tokens_out)
    if "inputTokens" in usage or "outputTokens" in usage:  # Bedrock's Converse
        return int(usage.get("inputTokens") or 0), int(usage.get("outputTokens") or 0)
    tokens_in = usage.get("input_tokens", usage.get("prompt_tokens")) or 0
    tokens_out = usage.get("output_tokens", usage.get("completion_tokens")) or 0
    return int(tokens_in), int(tokens_out)
