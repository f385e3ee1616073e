"""Azure OpenAI's Global Batch, through the SDK's AzureOpenAI client.

The same Files and Batches calls as OpenAI's, sent to `{endpoint}/openai/...` with the
`api-key` header and the required `?api-version=`. A request's `model` is the name of a
Global-Batch deployment, as it is for a caller of the AzureOpenAI client.
"""

from functools import cache

import openai
from django.conf import settings

from .openai import OpenAITransport


@cache
def _azure_client(
    endpoint: str, api_key: str, api_version: str, max_retries: int, timeout: float
) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=endpoint,
        api_key=api_key or "missing",
        api_version=api_version,
        timeout=timeout,
        max_retries=max_retries,
    )


class AzureTransport(OpenAITransport):
    def client(self, *, retries: bool = True) -> openai.OpenAI:
        return _azure_client(
            self.upstream.base_url,
            self._api_key,
            self.upstream.api_version,
            settings.OPENAI_MAX_RETRIES if retries else 0,
            settings.OPENAI_TIMEOUT,
        )
