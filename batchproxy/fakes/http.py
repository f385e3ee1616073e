"""What the providers' fakes share: a loopback HTTP server, routes, injected faults, keys seen.

A fake names its operations by route (`routes`: method, path pattern, name), answers each in
`respond`, and can be told to fail the next calls of one operation:
`inject(operation, 500 | 429 | "timeout" | "disconnect" | "lost_response", times, after=0)`.
Another process (a try-out's shell) steers a fake over HTTP, as it does the fake OpenAI, with no
key: `POST /_fake/configure` sets the fake's `options` (a JSON object; an unknown one is 400),
`POST /_fake/inject` a fault (`{"operation", "fault", "times"}`), `POST /_fake/reset`, and
`GET /_fake/state` shows the options and the synchronous calls seen.
A "timeout" holds the call `timeout_sleep` seconds (past the client's timeout) and then does
the work; a "disconnect" drops the connection without doing anything; a "lost_response" does
the work and then drops the connection, as a response lost on the way back would. `after`
lets that many calls of the operation through first.
Standard library only; state in memory, under one lock.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import signal
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SOCKET_FAULTS = ("timeout", "disconnect", "lost_response")
# A request whose text holds this gets its result line cut in half in the results file, as a
# broken upload or a provider's bug would leave it.
TRUNCATE_MARKER = "[[truncate]]"
# A batch holding a request whose text holds this is refused at create (HTTP 400), as a
# provider refuses a whole batch for one request it cannot take.
REFUSE_MARKER = "[[refuse]]"
REFUSAL = "A request of the batch holds [[refuse]]."


def jsonl(items) -> str:
    """Result lines as JSONL, each line holding TRUNCATE_MARKER cut in half."""
    lines = []
    for item in items:
        line = json.dumps(item)
        lines.append(line[: len(line) // 2] if TRUNCATE_MARKER in line else line)
    return "".join(line + "\n" for line in lines)


@dataclass
class Reply:
    status: int
    body: dict | list | bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, list):  # results: JSONL
            return jsonl(self.body).encode()
        return json.dumps(self.body).encode()


@dataclass
class Call:
    """One request to the fake, as its `respond` sees it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    raw: bytes
    operation: str
    args: tuple[str, ...]

    def json(self) -> dict | None:
        return json.loads(self.raw) if self.raw else None


class FakeServer:
    routes: tuple[tuple[str, re.Pattern, str], ...] = ()
    # The attributes `configure` (POST /_fake/configure) may set; a fake adds its own.
    options: tuple[str, ...] = ("step_seconds", "timeout_sleep")

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, step_seconds: float = 0.0):
        self._address = (host, port)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._step_seconds = step_seconds  # how long a batch takes in each of its states
        self._stopping = threading.Event()
        self._generation = 0  # a reset releases the calls a "timeout" holds
        self.reset()

    def reset(self) -> None:
        """Forget every batch, file, call, key and fault; back to the configured pace."""
        with self._lock:
            self.sync_calls: list[dict] = []
            self.calls: list[tuple[str, str]] = []
            self.keys: list[str] = []
            self._faults: list[list] = []
            self.step_seconds = self._step_seconds
            self.timeout_sleep = 5.0
            self._generation += 1

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def operations(self) -> tuple[str, ...]:
        return tuple(name for _, _, name in self.routes)

    def start(self):
        self._server = ThreadingHTTPServer(self._address, _Handler)
        self._server.fake = self
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes the calls a "timeout" holds
        self._server.shutdown()
        self._server.server_close()

    def inject(self, operation: str, fault, times: int = 1, *, after: int = 0) -> None:
        """Fail the next `times` calls of `operation`, once `after` calls have gone through."""
        if operation not in self.operations:
            raise ValueError(f"unknown operation {operation!r}; one of {self.operations}")
        if not (isinstance(fault, int) and 400 <= fault <= 599) and fault not in SOCKET_FAULTS:
            raise ValueError(f"unknown fault {fault!r}; an HTTP status or one of {SOCKET_FAULTS}")
        if times < 1 or after < 0:
            raise ValueError("times must be at least 1, after at least 0")
        with self._lock:
            self._faults.append([operation, fault, times, after])

    def configure(self, **options) -> None:
        """Set options (`options`); batches take them as they are when created."""
        unknown = set(options) - set(self.options)
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
        with self._lock:
            for name, value in options.items():
                setattr(self, name, value)

    def state(self) -> dict:
        """The options as they are, and the synchronous calls seen (GET /_fake/state)."""
        with self._lock:
            options = {name: getattr(self, name) for name in self.options}
            return {
                "options": options,
                "sync_calls": copy.deepcopy(getattr(self, "sync_calls", [])),
            }

    def control(self, method: str, path: str, raw: bytes) -> Reply:
        """The /_fake/ endpoints; bad input is 400 in the fake's own error shape."""
        try:
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            if (method, path) == ("POST", "/_fake/configure"):
                self.configure(**body)
            elif (method, path) == ("POST", "/_fake/inject"):
                fault = body["fault"]
                fault = int(fault) if isinstance(fault, str) and fault.isdigit() else fault
                self.inject(body["operation"], fault, int(body.get("times", 1)))
            elif (method, path) == ("POST", "/_fake/reset"):
                self.reset()
            elif (method, path) == ("GET", "/_fake/state"):
                return Reply(200, self.state())
            else:
                return self.error(404, f"Unknown control endpoint {method} {path}.")
        except (ValueError, TypeError, KeyError) as exc:
            return self.error(400, f"Bad control request: {exc!r}")
        return Reply(200, {"ok": True})

    def take_fault(self, operation: str):
        with self._lock:
            for entry in self._faults:
                if entry[0] == operation:
                    if entry[3]:
                        entry[3] -= 1
                        return None
                    entry[2] -= 1
                    if not entry[2]:
                        self._faults.remove(entry)
                    return entry[1]
        return None

    def hold(self, generation: int) -> bool:
        """Sleep like a stuck upstream; False when reset or stopped meanwhile."""
        self._stopping.wait(self.timeout_sleep)
        return generation == self._generation and not self._stopping.is_set()

    def route(self, method: str, path: str, query: dict[str, str]) -> tuple[str, tuple[str, ...]]:
        for route_method, pattern, name in self.routes:
            if route_method == method and (match := pattern.fullmatch(path)):
                return name, match.groups()
        return "unknown", ()

    # A fake's own: who may call, its error body, and its answers.
    def key_of(self, headers: dict[str, str], query: dict[str, str]) -> str:
        raise NotImplementedError

    def error(self, status: int, message: str) -> Reply:
        raise NotImplementedError

    def respond(self, call: Call) -> Reply:
        raise NotImplementedError


def fake_main(fake_class, *, name: str, what: str, port: int, argv=None) -> None:
    """`python -m batchproxy.fakes.<name>`: serve one fake in the foreground until signalled."""
    parser = argparse.ArgumentParser(
        prog=f"python -m batchproxy.fakes.{name}",
        description=f"Serve a fake {what} until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--step-seconds", type=float, default=0.0)
    args = parser.parse_args(argv)
    fake = fake_class(args.host, args.port, step_seconds=args.step_seconds)
    serve_until_signalled(fake, f"Fake {what} (step_seconds={args.step_seconds})")


def serve_until_signalled(fake, what: str) -> None:
    """Serve a fake (anything with `start`, `url` and `stop`) in the foreground (`python -m
    batchproxy.fakes.…`) until SIGINT or SIGTERM."""
    fake.start()
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    print(f"{what} on {fake.url}", flush=True)
    stopped.wait()
    fake.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_DELETE(self):
        self._serve("DELETE")

    def do_PUT(self):
        self._serve("PUT")  # S3's PutObject (fakes/bedrock.py)

    def log_message(self, format, *args):
        pass

    def _serve(self, method: str) -> None:
        fake: FakeServer = self.server.fake
        raw = self._read_body()
        url = urlsplit(self.path)
        if url.path.startswith("/_fake/"):
            return self._send(fake.control(method, url.path, raw))
        headers = {name.lower(): value for name, value in self.headers.items()}
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        operation, args = fake.route(method, url.path, query)
        with fake._lock:
            fake.calls.append((operation, url.path))
            generation = fake._generation
        key = fake.key_of(headers, query)
        if not key:
            return self._send(fake.error(401, "An API key is required."))
        with fake._lock:
            fake.keys.append(key)
        fault = fake.take_fault(operation)
        if isinstance(fault, int):
            return self._send(fake.error(fault, f"Injected HTTP {fault}."))
        if fault == "disconnect" or (fault == "timeout" and not fake.hold(generation)):
            self.close_connection = True
            return None
        if operation == "unknown":
            return self._send(fake.error(404, f"Not found: {method} {url.path}"))
        reply = fake.respond(Call(method, url.path, query, headers, raw, operation, args))
        if fault == "lost_response":
            self.close_connection = True
            return None
        return self._send(reply)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []  # an SDK streaming an upload of unknown length
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline().strip():
            pass  # trailers
        return b"".join(chunks)

    def _send(self, reply: Reply) -> None:
        data = reply.encoded()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        try:
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a "timeout"): the work is done all the same


class Refused(Exception):
    """An API call a fake refuses: answered with this status and message, in its own shape."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class JobServer(FakeServer):
    """What the fakes of job-shaped batch APIs (Together, Mistral, Fireworks) share: their
    jobs (`_jobs`, seen through `_view`) and input lines (`_lines`) for tests, and a bearer key."""

    @property
    def jobs(self) -> list[dict]:
        """Every batch job created, as a client would see it now."""
        with self._lock:
            return [self._view(job) for job in self._jobs.values()]

    def submitted(self) -> list[dict]:
        """Every input line of every job created, in order, each with its `batch_id`."""
        with self._lock:
            return [
                copy.deepcopy(line) | {"batch_id": job_id}
                for job_id, lines in self._lines.items()
                for line in lines
            ]

    def key_of(self, headers: dict[str, str], query: dict[str, str]) -> str:
        auth = headers.get("authorization", "")
        return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""

    # The fake OpenAI's answer to one line (`openai._execute`), given by each job fake: the
    # fake OpenAI imports this module, so this module does not import it.
    execute = None

    def _sync(self, call: Call, endpoint: str = "chat/completions") -> tuple[int, dict]:
        """A synchronous call (the standard tier), answered now as its batch line would be;
        `sync_calls` lists the bodies."""
        body = call.json() or {}
        self.sync_calls.append(body)
        result = self.execute(f"/v1/{endpoint}", {"custom_id": "sync", "body": body})
        response = result.line["response"]
        if response is None:
            raise Refused(500, result.line["error"]["message"])
        return response["status_code"], response["body"]
