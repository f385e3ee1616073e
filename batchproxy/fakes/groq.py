"""A fake of Groq's Batch API: the fake OpenAI (fakes/openai.py) as Groq serves it.

From the groq SDK's types and console.groq.com/docs/batch: the Files and Batches calls live
under `/openai/v1`; `completion_window` takes durations from `24h` to `7d` (`48h`, `7d`...);
an input file holds at most 100 MB; uploads take `file` and `purpose` only, and batches no
`output_expires_after` (this fake refuses what Groq does not document, with OpenAI's error
body, which is Groq's too). Markers, faults and controls are the fake OpenAI's.

Run `python -m batchproxy.fakes.groq --port 9490` to serve in the foreground.
"""

from __future__ import annotations

import re

from .http import fake_main
from .openai import FakeOpenAI

WINDOW = re.compile(r"([1-9][0-9]*)([hd])")
SHORTEST, LONGEST = 24 * 3600, 7 * 86_400


class FakeGroq(FakeOpenAI):
    prefix = "/openai/v1"
    max_upload_bytes = 100 * 1024 * 1024
    takes_expiry = False

    def window_seconds(self, window) -> int | None:
        match = WINDOW.fullmatch(window) if isinstance(window, str) else None
        if match is None:
            return None
        seconds = int(match.group(1)) * (3600 if match.group(2) == "h" else 86_400)
        return seconds if SHORTEST <= seconds <= LONGEST else None


def main(argv=None) -> None:
    fake_main(FakeGroq, name="groq", what="Groq API", port=9490, argv=argv)


if __name__ == "__main__":
    main()
