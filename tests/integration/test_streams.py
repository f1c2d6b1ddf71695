"""Many or slow clients against a real Tower (issue 10, point 8): event streams are capped per
token and in all, every stream sees a real create, /healthz answers beside 200 streams, and
connections that never finish their request are closed by the Tower."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time

import httpx
import pytest

from towers import TowerProcess, wait_for


class Stream:
    """One raw ``GET .../events`` connection: its status, and its socket kept open."""

    def __init__(self, tower: TowerProcess, path: str, token: str | None = None):
        self.sock = socket.create_connection(("127.0.0.1", tower.port))
        self.sock.settimeout(30)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token or tower.token}\r\n"
                          "Accept: text/event-stream\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            head += chunk
        self.head, _, self.rest = head.partition(b"\r\n\r\n")
        self.status = int(self.head.split(b" ", 2)[1]) if self.head else 0

    def is_open(self) -> bool:
        self.sock.setblocking(False)
        try:
            return self.sock.recv(65536) != b""  # data (a keep-alive, an event): still open
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


def open_streams(tower: TowerProcess, path: str, n: int) -> list[Stream]:
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda _: Stream(tower, path), range(n)))


@pytest.fixture(scope="module")
def ready_overcloud(tower):
    with tower.client() as c:
        d = c.post("/overclouds", json={"provider": "local", "number": "1", "size": "small"},
                   params={"wait": "true"}, timeout=300).json()
    assert d["status"] == "READY", d.get("error")
    yield d["overcloud_ID"]
    tower.delete_and_wait(d["overcloud_ID"])


def sse_events(tower: TowerProcess, overcloud_id: str) -> list[tuple[int, str, dict]]:
    """One whole stream without follow: (id, kind, data) until the Tower ends it."""
    out, ev_id, kind = [], None, None
    with tower.client() as c, c.stream("GET", f"/overclouds/{overcloud_id}/events", timeout=300) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("id: "):
                ev_id = int(line[4:])
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((ev_id, kind, json.loads(line[6:])))
    return out


def test_every_stream_sees_the_whole_of_a_real_create(tower):
    with tower.client() as c:
        oid = c.post("/overclouds", json={"provider": "local", "number": "1", "size": "small"}).json()["overcloud_ID"]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        streams = list(pool.map(lambda _: sse_events(tower, oid), range(20)))
    try:
        whole = sse_events(tower, oid)  # after the fact: straight from the database
        for got in streams:
            assert got == whole
        statuses = [d["status"] for _, kind, d in whole if kind == "status"]
        assert statuses[0] == "CREATING" and statuses[-1] == "READY"
        assert {d["task"] for _, kind, d in whole if kind == "task" and d["state"] == "SUCCESS"} >= {"acquire_boxes", "register"}
    finally:
        assert tower.delete_and_wait(oid)["status"] == "DELETED"


def test_streams_beyond_the_cap_per_token_are_429_and_healthz_answers_beside_200(tower, ready_overcloud):
    path = f"/overclouds/{ready_overcloud}/events?follow=true"
    with httpx.Client(base_url=tower.url, timeout=30) as plain:
        quiet = plain.get("/healthz")
        assert quiet.status_code == 200
        streams = open_streams(tower, path, 200)
        try:
            assert [s.status for s in streams] == [200] * 200
            took = []
            for _ in range(50):
                t = time.perf_counter()
                assert plain.get("/healthz").status_code == 200
                took.append((time.perf_counter() - t) * 1000)
            took.sort()
            print(f"/healthz beside 200 event streams: p50 {took[25]:.1f} ms, max {took[-1]:.1f} ms")
            streams += open_streams(tower, path, 56)  # the default cap per token: 256
            assert all(s.status == 200 for s in streams)
            with tower.client() as c:
                r = c.get(path)
                assert r.status_code == 429 and r.headers.get("retry-after")
                assert r.json()["error"] == "quota_exceeded"
                assert "this token already has 256 event streams open" in r.json()["message"]
                assert tower.token not in r.text
            streams.pop().close()  # a closed stream gives its slot back
            wait_for(lambda: Stream(tower, path).status == 200, "a slot after closing a stream")
        finally:
            for s in streams:
                s.close()
    assert tower.token not in tower.log.read_text()


def test_streams_beyond_the_cap_in_all_are_429(own_tower):
    t = own_tower(OVERCLOUD_MAX_STREAMS=3, OVERCLOUD_MAX_STREAMS_PER_TOKEN=10).start()
    with t.client() as c:
        d = c.post("/overclouds", json={"provider": "local", "number": "1", "size": "small"},
                   params={"wait": "true"}, timeout=300).json()
    path = f"/overclouds/{d['overcloud_ID']}/events?follow=true"
    streams = open_streams(t, path, 3)
    try:
        assert [s.status for s in streams] == [200] * 3
        with t.client() as c:
            r = c.get(path)
        assert r.status_code == 429 and "3 event streams are open on this Tower" in r.json()["message"]
    finally:
        for s in streams:
            s.close()


def test_connections_that_never_finish_their_request_are_closed(tower, ready_overcloud):
    stream = Stream(tower, f"/overclouds/{ready_overcloud}/events?follow=true")
    assert stream.status == 200
    slow = []
    for i in range(100):
        s = socket.create_connection(("127.0.0.1", tower.port))
        if i % 2:  # half send part of a head, half send nothing at all
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        slow.append(s)
    body = socket.create_connection(("127.0.0.1", tower.port))  # a body that never comes whole
    body.sendall(b"POST /overclouds HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + tower.token.encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"provider\":")
    try:
        # a request still in flight answers meanwhile
        assert httpx.get(tower.url + "/healthz", timeout=30).status_code == 200

        def closed(s: socket.socket) -> bool:
            s.setblocking(False)
            try:
                return s.recv(65536) == b""
            except BlockingIOError:
                return False
            except OSError:
                return True

        wait_for(lambda: all(closed(s) for s in slow), "the Tower closing 100 connections without a whole head", 60)
        wait_for(lambda: closed(body), "the Tower closing a connection whose body never came whole", 90)
        assert stream.is_open()  # a stream whose request was whole is not cut
    finally:
        for s in [*slow, body]:
            s.close()
        stream.close()
