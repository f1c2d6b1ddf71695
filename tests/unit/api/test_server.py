"""Deadlines (DeadlineH11Protocol) on a real uvicorn server on a free loopback port:
connections that do not send their request in time, or read nothing of their answer, are
closed; whole requests, long answers and kept-alive connections are not."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import uvicorn

from overcloud.api.server import DeadlineH11Protocol
from servers import free_port

HEAD, BODY, WRITE = 0.5, 0.5, 0.5


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/echo":
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            size += len(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body = str(size).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    if scope["path"] == "/flood":  # far more than any buffer holds (bounded: a test app)
        for _ in range(4000):
            await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
    if scope["path"] == "/long":  # an answer that outlasts both deadlines, like an event stream
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(HEAD + BODY)
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def port():
    proto = type("P", (DeadlineH11Protocol,), {"header_timeout": HEAD, "body_timeout": BODY, "write_timeout": WRITE})
    p = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=p, http=proto, log_level="warning",
                                           lifespan="off", timeout_keep_alive=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield p
    server.should_exit = True
    thread.join(10)


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(0.05)
    return s


def closed_by_server(s: socket.socket, bound: float = 10.0, trickle: bytes = b"") -> bool:
    """True once the server closes ``s`` (bounded wait; optionally sending a byte now and then)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            if trickle:
                s.send(trickle)
            if s.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def read_all(s: socket.socket, bound: float = 10.0) -> bytes:
    out, deadline = b"", time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        out += chunk
    return out


def test_a_connection_that_sends_nothing_is_closed(port):
    with connect(port) as s:
        assert closed_by_server(s)


def test_an_unfinished_head_is_closed_even_when_trickled(port):
    with connect(port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert closed_by_server(s)
    with connect(port) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert closed_by_server(s, trickle=b"a")


def test_a_body_short_of_its_length_is_closed(port):
    with connect(port) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        assert closed_by_server(s)


def test_whole_requests_long_answers_and_kept_alive_connections_are_served(port):
    with connect(port) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        first = b""
        while not first.endswith(b"\r\n\r\n5"):
            first += s.recv(65536)
        time.sleep(HEAD + BODY)  # idle between requests is the keep-alive timer's, not the head's
        s.sendall(b"GET /long HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = read_all(s)
    assert answer.startswith(b"HTTP/1.1 200") and b"three" in answer and answer.endswith(b"ok\r\n0\r\n\r\n")


def test_a_client_that_reads_nothing_of_its_answer_is_cut(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(3 * WRITE)  # reads nothing while the buffers fill
    s.settimeout(0.05)
    got, cut = 0, False
    with s:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(1 << 20)
            except TimeoutError:
                continue
            except ConnectionResetError:
                cut = True
                break
            if not chunk:
                break
            got += len(chunk)
    assert cut and got < 4000 * 65536  # reset before the whole answer was sent
