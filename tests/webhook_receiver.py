"""A real webhook receiver on loopback that verifies every POST with an independent verifier
(the OpenAI SDK's Standard Webhooks check) and keeps what it got."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        receiver: Receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            receiver.verifier.webhooks.verify_signature(body, headers, secret=receiver.secret)
        except Exception as exc:  # any failed check is a bad signature to the test
            receiver.rejected.append(repr(exc))
            self.send_response(400)
            self.end_headers()
            return
        time.sleep(receiver.delay)  # a slow receiver
        with receiver.lock:
            receiver.posts.append((headers, json.loads(body)))
        if receiver.drip:
            self._drip(receiver)
            return
        self.send_response(receiver.status)
        if receiver.answer_bytes:
            self._answer_huge(receiver)
            return
        self.end_headers()

    def _drip(self, receiver: "Receiver") -> None:
        """Answer a byte at a time (status line, headers, then a body that never ends)."""
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000
        start = 0 if receiver.drip_from == "status" else answer.index(b"\r\n\r\n") + 4
        try:
            self.wfile.write(answer[:start])
            self.wfile.flush()
            for byte in answer[start:]:
                time.sleep(receiver.drip)
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                receiver.sent += 1
        except OSError:
            receiver.cut = True

    def _answer_huge(self, receiver: "Receiver") -> None:
        """An error body of `answer_bytes`, written until the other side stops reading."""
        self.send_header("Content-Length", str(receiver.answer_bytes))
        self.end_headers()
        chunk = b"e" * 65536
        try:
            while receiver.sent < receiver.answer_bytes:
                self.wfile.write(chunk)
                receiver.sent += len(chunk)
        except OSError:
            receiver.cut = True

    def log_message(self, *args) -> None:
        pass


class Receiver:
    def __init__(
        self,
        secret: str = "",
        port: int = 0,
        status: int = 204,
        delay: float = 0.0,
        drip: float = 0.0,
        drip_from: str = "status",
        answer_bytes: int = 0,
    ):
        self.secret = secret
        self.delay = delay
        self.status = status
        self.drip = drip  # seconds between the bytes of a dripped answer
        self.drip_from = drip_from  # "status" or "body"
        self.answer_bytes = answer_bytes
        self.sent = 0  # bytes of a dripped or huge answer written
        self.cut = False  # the proxy stopped reading before the end
        self.port = port
        self.posts: list[tuple[dict, dict]] = []
        self.rejected: list[str] = []
        self.lock = threading.Lock()
        self.verifier = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> "Receiver":
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self._server.receiver = self
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self) -> list[dict]:
        with self.lock:
            return [event for _, payload in self.posts for event in payload["data"]]
