"""Groq's Batch API: OpenAI's Files and Batches calls under `https://api.groq.com/openai/v1`.

What differs from OpenAI's (the groq SDK's types, console.groq.com/docs/batch):
- `completion_window` takes durations from `24h` to `7d` (UPSTREAM_<NAME>_COMPLETION_WINDOW);
- a file is uploaded with `file` and `purpose` only and a batch created without
  `output_expires_after`: Groq documents no expiry parameters, so none are sent;
- an input file holds at most 100 MB (the kind's default, upstreams.KIND_DEFAULTS).
Listing batches and files is not paged upstream; the SDK's page of them is read whole.
"""

from pathlib import Path

from .base import UpstreamError
from .openai import OpenAITransport

SHORTEST, LONGEST = 24 * 3600, 7 * 86_400


class GroqTransport(OpenAITransport):
    def window(self) -> str:
        from . import upstream_window, window_seconds

        window = upstream_window(self.upstream)
        try:
            seconds = window_seconds(window)
        except ValueError:
            seconds = 0
        if not SHORTEST <= seconds <= LONGEST:
            # The operator's to fix: the batch waits and is created once the setting is right.
            name = self.upstream.name
            message = f"upstream {name}: completion window {window!r} is not 24h to 7d"
            raise UpstreamError(message, permanent=False, code="invalid_completion_window")
        return window

    def upload_file(self, path: Path, filename: str) -> str:
        with path.open("rb") as fh:
            files = self.client(retries=False).files
            created = self._call(files.create, file=(filename, fh), purpose="batch")
        return created.id

    def create_batch(
        self, *, input_file_id: str, endpoint: str, model: str, metadata: dict[str, str]
    ) -> dict:
        batch = self._call(
            self.client(retries=False).batches.create,
            input_file_id=input_file_id,
            endpoint=endpoint,
            completion_window=self.window(),
            metadata=metadata,
        )
        return batch.to_dict()
