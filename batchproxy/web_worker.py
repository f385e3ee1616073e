"""gunicorn's threaded worker, with each request received whole before a thread takes it.

The stock gthread worker hands a connection to a thread as soon as its first bytes arrive; the
thread then reads the headers and the body at the client's pace. Fifty clients sending a byte a
second held every thread and /healthz went unanswered (tests/test_gunicorn.py). Here the
worker's main loop, which already waits on every idle connection, also receives the request:
its headers, and its body when it declares a Content-Length of at most WEB_BUFFER_BYTES. Only a
complete request reaches a thread, as behind a buffering proxy (nginx's default), so a slow
client costs a socket and its buffer, never a thread. A request not complete within
WEB_READ_TIMEOUT seconds is answered 408 and closed.

A larger body (up to MAX_REQUEST_BYTES) goes to a thread once its headers are in: the intake
checks the key and the declared length before reading it, so only a valid key's large body is
read at the client's pace. TLS is left to the stock worker (the proxy sits behind whatever
terminates it).
"""

import contextlib
import errno
import os
import re
import selectors
import time
from collections import deque
from functools import partial

from gunicorn import util
from gunicorn.workers.gthread import TConn, ThreadWorker

READ_TIMEOUT = float(os.environ.get("WEB_READ_TIMEOUT", "30"))
BUFFER_BYTES = int(os.environ.get("WEB_BUFFER_BYTES", str(1 << 20)))
# gunicorn's own limits refuse longer heads (limit_request_line, _fields, _field_size).
HEAD_MAX = 64 * 1024
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,18})[ \t]*\r\n", re.IGNORECASE)


def request_received(data: bytes) -> bool:
    """Whether `data` holds a request a thread can serve without waiting on the client: its
    whole head, and its whole body when that is small enough to hold here."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return len(data) > HEAD_MAX  # for gunicorn to refuse
    head = data[: end + 2]
    match = CONTENT_LENGTH.search(head)
    if match is None:
        return True  # no body, or a chunked one, which the intake refuses unread (411)
    length = int(match.group(1))
    return length > BUFFER_BYTES or len(data) >= end + 4 + length


class BufferingThreadWorker(ThreadWorker):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.receiving: deque[TConn] = deque()  # in order of their deadlines

    def accept(self, listener):
        if self.cfg.is_ssl:
            return super().accept(listener)
        try:
            sock, client = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self.receive(TConn(self.cfg, sock, client, listener.getsockname()))

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection's next request: received whole too."""
        if self.cfg.is_ssl:
            return super().on_client_socket_readable(conn, client)
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self.receive(conn)

    def receive(self, conn: TConn) -> None:
        conn.sock.setblocking(False)
        conn.received = bytearray()
        conn.timeout = time.monotonic() + READ_TIMEOUT
        self.receiving.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_received, conn))

    def on_received(self, conn: TConn, sock) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client left
            self.stop_receiving(conn)
            self.nr_conns -= 1
            conn.close()
            return
        conn.received += data
        if request_received(conn.received):
            self.stop_receiving(conn)
            conn.data_ready = True
            self.enqueue_req(conn)

    def stop_receiving(self, conn: TConn) -> None:
        self.poller.unregister(conn.sock)
        self.receiving.remove(conn)

    def handle(self, conn):
        received = getattr(conn, "received", None)
        if received is not None:
            conn.received = None
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(bytes(received))
        return super().handle(conn)

    def murder_pending(self):
        """Also: close the connections whose request did not arrive in time, with a 408."""
        super().murder_pending()
        now = time.monotonic()
        while self.receiving and self.receiving[0].timeout <= now:
            conn = self.receiving[0]
            self.stop_receiving(conn)
            with contextlib.suppress(OSError):
                util.write_error(
                    conn.sock,
                    408,
                    "Request Timeout",
                    f"the request did not arrive within {READ_TIMEOUT:g} seconds",
                )
            self.nr_conns -= 1
            conn.close()
