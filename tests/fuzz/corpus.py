"""Hand-written nasty bodies: each one must be refused with an OpenAI-shaped 4xx on every
endpoint, and store nothing.

Each entry is (name, raw body). The bodies are bytes, since half the point is bytes that are
not text.
"""

DEEP = 100_000

CORPUS: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("whitespace", b" \n\t "),
    ("null", b"null"),
    ("true", b"true"),
    ("number", b"42"),
    ("string", b'"model"'),
    ("array-of-objects", b'[{"model": "m"}]'),
    ("truncated", b'{"model": "m", "messages": [{"role": "user"'),
    ("trailing-garbage", b'{"model": "m", "input": "x"} trailing'),
    ("two-objects", b'{"model": "m", "input": "x"}{"model": "m", "input": "x"}'),
    ("single-quotes", b"{'model': 'm', 'input': 'x'}"),
    ("comments", b'{"model": "m", /* hi */ "input": "x"}'),
    ("trailing-comma", b'{"model": "m", "input": "x",}'),
    ("nan", b'{"model": "m", "input": "x", "temperature": NaN}'),
    ("infinity", b'{"model": "m", "input": "x", "temperature": Infinity}'),
    ("float-overflow", b'{"model": "m", "input": "x", "temperature": 1e400}'),
    ("int-overflow", b'{"model": "m", "input": "x", "seed": 1' + b"0" * 400 + b"}"),
    ("negative-int-overflow", b'{"model": "m", "input": "x", "seed": -9' + b"9" * 400 + b"}"),
    ("bom", b'\xef\xbb\xbf{"model": "m", "input": "x"}'),
    ("utf16-bytes", '{"model": "m", "input": "x"}'.encode("utf-16")),
    ("latin1-bytes", '{"model": "mé", "input": "x"}'.encode("latin-1")),
    ("invalid-utf8", b'{"model": "m\xc3\x28", "input": "x"}'),
    ("overlong-utf8", b'{"model": "m\xc0\xaf", "input": "x"}'),
    ("lone-surrogate", b'{"model": "m", "input": "\\ud800"}'),
    ("bad-escape", b'{"model": "m", "input": "\\x41"}'),
    ("raw-control-char", b'{"model": "m", "input": "a\x00b"}'),
    ("deep-array", b"[" * DEEP + b"]" * DEEP),
    ("deep-object", b'{"a":' * DEEP + b"1" + b"}" * DEEP),
    ("deep-in-valid-call", b'{"model": "m", "input": "x", "x": ' + b"[" * 600 + b"]" * 600 + b"}"),
    # Deep enough for Python's own parser (the exact check of a long integer) to give up.
    (
        "deep-with-a-19-digit-integer",
        b'{"model": "m", "input": "x", "x": '
        + b"[" * 1000
        + b"1234567890123456789"
        + b"]" * 1000
        + b"}",
    ),
    ("model-null", b'{"model": null, "input": "x"}'),
    ("model-number", b'{"model": 4, "input": "x"}'),
    ("model-array", b'{"model": ["gpt-4o"], "input": "x"}'),
    ("model-object", b'{"model": {"name": "gpt-4o"}, "input": "x"}'),
    ("model-bool", b'{"model": true, "input": "x"}'),
    ("model-empty", b'{"model": "", "input": "x"}'),
    ("model-blank", b'{"model": "   ", "input": "x"}'),
    ("model-nul", b'{"model": "gpt\\u0000", "input": "x"}'),
    ("model-newline", b'{"model": "gpt\\n4o", "input": "x"}'),
    ("model-huge", b'{"model": "' + b"m" * 100_000 + b'", "input": "x"}'),
    ("stream-true-string", b'{"model": "m", "input": "x", "stream": "true"}'),
    ("stream-one", b'{"model": "m", "input": "x", "stream": 1}'),
    ("stream-object", b'{"model": "m", "input": "x", "stream": {}}'),
    ("stream-array", b'{"model": "m", "input": "x", "stream": [true]}'),
]

# Refused on chat/completions, whose `messages` must be an array.
MESSAGES_CORPUS: list[tuple[str, bytes]] = [
    ("messages-string", b'{"model": "m", "input": "x", "messages": "hi"}'),
    ("messages-object", b'{"model": "m", "input": "x", "messages": {"role": "user"}}'),
    ("messages-null", b'{"model": "m", "input": "x", "messages": null}'),
    ("messages-number", b'{"model": "m", "input": "x", "messages": 7}'),
]

# Refused on the endpoints that require `input` (embeddings, moderations), accepted elsewhere.
INPUT_CORPUS: list[tuple[str, bytes]] = [
    ("input-missing", b'{"model": "m"}'),
    ("input-null", b'{"model": "m", "input": null}'),
    ("input-number", b'{"model": "m", "input": 3}'),
    ("input-object", b'{"model": "m", "input": {"text": "x"}}'),
    ("input-empty-array", b'{"model": "m", "input": []}'),
    ("input-bool", b'{"model": "m", "input": false}'),
]
