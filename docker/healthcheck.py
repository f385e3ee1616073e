"""The image's HEALTHCHECK: GET /healthz on the local web server (no curl in a slim image).

A scheduler-only container serves no HTTP: it is healthy while it runs, because `serve` exits
(and the container with it) as soon as its qcluster child stops.
"""

import os
import sys
import urllib.request
from pathlib import Path


def serve_role() -> str:
    """The --role of the `manage.py serve` process (PID 1, or a child of an init like tini)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in args and b"--role" in args[:-1]:
            return args[args.index(b"--role") + 1].decode()
    return "all"


def main() -> int:
    if serve_role() == "scheduler":
        return 0
    url = f"http://127.0.0.1:{os.environ.get('PORT', '9487')}/healthz"
    with urllib.request.urlopen(url, timeout=4) as response:
        return 0 if response.status == 200 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        sys.exit(1)
