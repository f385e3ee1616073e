"""Token counts from OpenAI `usage` objects: no imports from the engine, so ingest can use it."""


def usage_tokens(usage) -> tuple[int, int]:
    """(input, output) tokens of a `usage` object of any endpoint, or of a batch."""
    if not isinstance(usage, dict):
        return 0, 0
    tokens_in = usage.get("input_tokens", usage.get("prompt_tokens")) or 0
    tokens_out = usage.get("output_tokens", usage.get("completion_tokens")) or 0
    return int(tokens_in), int(tokens_out)
