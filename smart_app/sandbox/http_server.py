"""The sandbox's HTTP server: werkzeug's threaded development server, with HTTP/1.1 keep-alive.

werkzeug (3.x) answers every request with `Connection: close`, so each request costs a new TCP connection
and a new server thread, on both sides; under a month-end run that is a good part of the sandbox's CPU. Here
a connection stays open between requests when that is safe, as on a real EHR:

- the request is HTTP/1.1, has no chunked body and did not ask for `Connection: close` (anything else goes
  through werkzeug's own handler, which closes the connection);
- the response is buffered (the sandbox's are small) and always carries `Content-Length`, so the client
  knows where it ends;
- whatever the application left unread of the request body is read and dropped before the next request
  (its length is known from `Content-Length`).

`stop()` of the sandbox closes the open connections too (`server_close`), so nothing is served after it:
idle connections end at once, a request in progress still gets its answer. Idle connections are also closed
after `IDLE_TIMEOUT` seconds.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import InternalServerError
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler
from werkzeug.wsgi import LimitedStream

IDLE_TIMEOUT = 300.0  # seconds a kept-alive connection may wait for its next request (also a socket timeout)

_DROPPED = (ConnectionError, TimeoutError, socket.timeout)


class KeepAliveRequestHandler(WSGIRequestHandler):
    """werkzeug's request handler, keeping HTTP/1.1 connections open between requests when it is safe."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    # Responses are written through a buffer, flushed once per response: status line, headers and body
    # leave in one write. TCP_NODELAY still, for what is larger than the buffer: with Nagle's algorithm a
    # second write waits for the client's delayed ACK of the first (~40 ms on a kept-alive connection).
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: KeepAliveWSGIServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.track(self.connection, open_=False)
        super().finish()

    def run_wsgi(self) -> None:
        if self.headers.get("Expect", "").lower().strip() == "100-continue":
            # Sent here, flushed: werkzeug would write it into the (buffered) response without flushing.
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()
            del self.headers["Expect"]
        length = self._body_length()
        if length is None or self.close_connection:
            self.close_connection = True
            super().run_wsgi()  # werkzeug's way: Connection: close
            return
        environ = self.make_environ()
        body = LimitedStream(self.rfile, length)  # type: ignore[arg-type]  # a BufferedReader is an IO[bytes]
        environ["wsgi.input"] = body
        try:
            status, headers, chunks = _call(self.server.app, environ)
        except _DROPPED as exc:  # the client went away while its body was being read
            self.close_connection = True
            self.connection_dropped(exc, environ)
            return
        except Exception as exc:
            if self.server.passthrough_errors:
                raise
            self.server.log("error", "Error on request %s %s: %r", self.command, self.path, exc)
            self.close_connection = True
            status, headers, chunks = _call(InternalServerError(), environ)
        try:
            self._send(environ, status, headers, b"".join(chunks))
            body.exhaust()  # the next request starts after this one's body
        except _DROPPED as exc:
            self.close_connection = True
            self.connection_dropped(exc, environ)

    def _body_length(self) -> int | None:
        """The request body's length when the connection may stay open after this request, else None."""
        if self.request_version != "HTTP/1.1" or "Transfer-Encoding" in self.headers:
            return None
        raw = self.headers.get("Content-Length")
        if raw is None:
            return 0
        raw = raw.strip()
        return int(raw) if raw.isdigit() else None

    def _send(
        self, environ: dict[str, Any], status: str, headers: list[tuple[str, str]], data: bytes
    ) -> None:
        code_text, _, message = status.partition(" ")
        code = int(code_text)
        self.send_response(code, message)
        names = set()
        for name, value in headers:
            self.send_header(name, value)  # a `Connection: close` from the app closes the connection
            names.add(name.lower())
        bodiless = environ["REQUEST_METHOD"] == "HEAD" or 100 <= code < 200 or code in (204, 304)
        if "content-length" not in names and not bodiless:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data and not bodiless:
            self.wfile.write(data)
        self.wfile.flush()


def _call(app: Callable[..., Iterable[bytes]], environ: dict[str, Any]) -> tuple[str, list[Any], list[bytes]]:
    """Run a WSGI application to the end: its status, headers and body chunks."""
    started: list[tuple[str, list[tuple[str, str]]]] = []
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [(status, list(headers))]  # nothing is sent yet, so a later call may replace it
        return chunks.append

    result = app(environ, start_response)
    try:
        chunks.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not started:
        raise RuntimeError("the WSGI application did not call start_response")
    status, headers = started[0]
    return status, headers, chunks


class KeepAliveWSGIServer(ThreadedWSGIServer):
    """werkzeug's threaded server with `KeepAliveRequestHandler`; `server_close` ends open connections too."""

    def __init__(self, host: str, port: int, app: Any) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(host, port, app, handler=KeepAliveRequestHandler)

    def track(self, connection: socket.socket, *, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def server_close(self) -> None:
        super().server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            # Shutting the reading side wakes a handler waiting for the next request (it sees the end of
            # the stream and closes); one still working on a request can still send its answer.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RD)
