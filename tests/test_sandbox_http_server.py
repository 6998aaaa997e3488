"""The sandbox's HTTP server (smart_app/sandbox/http_server.py): HTTP/1.1 keep-alive on werkzeug, over real
loopback sockets. What stays open, what closes, that a response always says where it ends, that an unread
request body never leaks into the next request, and that stopping the server ends its connections.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from smart_app.sandbox.http_server import KeepAliveWSGIServer

pytestmark = pytest.mark.integration


def echo_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """A WSGI app: /echo reads the body and sends it back; /stream answers in chunks without a length;
    /unread ignores the body; /fail raises; /close asks for the connection to be closed."""
    path = environ["PATH_INFO"]
    if path == "/fail":
        raise RuntimeError("boom")
    if path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"one,", b"two,", b"three"])
    headers = [("Content-Type", "text/plain"), ("Content-Length", "2")]
    if path == "/close":
        headers.append(("Connection", "close"))
    start_response("200 OK", headers)
    return [b"ok"]


@pytest.fixture(scope="module")
def server() -> Iterator[KeepAliveWSGIServer]:
    server = KeepAliveWSGIServer("127.0.0.1", 0, echo_app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def connect(server: KeepAliveWSGIServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)


def raw_exchange(server: KeepAliveWSGIServer, request: bytes) -> tuple[bytes, bool]:
    """Send raw bytes on a new connection; the whole answer and whether the server then closed."""
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        closed = False
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        while len(body) < length:
            body += sock.recv(65536)
        sock.settimeout(0.5)  # a closing server closes at once
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
        return head + b"\r\n\r\n" + body, closed


def test_one_connection_serves_many_requests(server: KeepAliveWSGIServer) -> None:
    conn = connect(server)
    answers, sockets = [], []
    for n in range(3):
        conn.request("POST", "/echo", body=f"request {n}".encode())
        response = conn.getresponse()
        answers.append(response.read())
        assert response.getheader("Connection") is None
        sockets.append(conn.sock)  # http.client opens a new socket after the server closed one
    assert answers == [b"request 0", b"request 1", b"request 2"]
    assert sockets[0] is not None and sockets == [sockets[0]] * 3
    conn.close()


def test_a_response_without_a_length_gets_one(server: KeepAliveWSGIServer) -> None:
    conn = connect(server)
    conn.request("GET", "/stream")
    response = conn.getresponse()
    assert response.getheader("Content-Length") == "13"
    assert response.read() == b"one,two,three"
    conn.request("GET", "/ok")  # and the connection is still usable
    assert conn.getresponse().read() == b"ok"
    conn.close()


def test_an_unread_body_does_not_leak_into_the_next_request(server: KeepAliveWSGIServer) -> None:
    conn = connect(server)
    conn.request("POST", "/unread", body=b"GET /fail HTTP/1.1\r\n\r\n" * 100)
    assert conn.getresponse().read() == b"ok"
    conn.request("POST", "/echo", body=b"second")
    assert conn.getresponse().read() == b"second"
    conn.close()


@pytest.mark.parametrize(
    ("why", "request_bytes"),
    [
        ("HTTP/1.0", b"GET /ok HTTP/1.0\r\nHost: x\r\n\r\n"),
        ("the client asks", b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ("the application asks", b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "a chunked body (werkzeug's own handler)",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
    ],
)
def test_the_connection_closes_when(server: KeepAliveWSGIServer, why: str, request_bytes: bytes) -> None:
    answer, closed = raw_exchange(server, request_bytes)
    assert answer.startswith(b"HTTP/1.1 200"), why
    assert closed, why


def test_a_plain_http11_request_keeps_the_connection(server: KeepAliveWSGIServer) -> None:
    answer, closed = raw_exchange(server, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.endswith(b"\r\n\r\nok") and b"Content-Length: 2" in answer
    assert not closed


def test_expect_100_continue_is_answered_before_the_body(server: KeepAliveWSGIServer) -> None:
    with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"body")
        answer = b""
        while not answer.endswith(b"body"):
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")


def test_an_application_error_is_a_500_and_closes(server: KeepAliveWSGIServer, caplog: Any) -> None:
    answer, closed = raw_exchange(server, b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500") and closed
    assert "boom" in caplog.text


def test_closing_the_server_ends_its_idle_connections() -> None:
    server = KeepAliveWSGIServer("127.0.0.1", 0, echo_app)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    conn = connect(server)
    conn.request("GET", "/ok")
    assert conn.getresponse().read() == b"ok"
    idle = conn.sock
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
    idle.settimeout(5)
    assert idle.recv(1) == b""  # the server closed its end: nothing is served after stop
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.server_port), timeout=5).close()
    conn.close()
