"""The DRF plumbing the client endpoints share, kept lean: they are the hot path.

- `RawBodyParser`: the intake needs the body's bytes (a call's identity is its canonical JSON,
  made from them); JSONParser would decode, parse and hand back Python objects instead.
- `FirstRenderer`: every client endpoint answers JSON whatever `Accept` says, as OpenAI does,
  so no `Accept` header is parsed (a huge one costs nothing) and none can make a call fail.
"""

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import BaseParser


class RawBodyParser(BaseParser):
    """The body as it came, whatever its declared type (the view checks length and charset)."""

    media_type = "*/*"

    def parse(self, stream, media_type=None, parser_context=None) -> bytes:
        return stream.read()


class FirstRenderer(DefaultContentNegotiation):
    """The answer is always the first renderer's; a parser is chosen by `Content-Type`, except
    that a view whose one parser takes every type gets it without parsing the header."""

    def select_parser(self, request, parsers):
        if len(parsers) == 1 and parsers[0].media_type == "*/*":
            return parsers[0]
        return super().select_parser(request, parsers)

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
