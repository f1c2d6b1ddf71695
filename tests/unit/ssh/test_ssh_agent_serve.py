"""The kept agent (``agent serve``): requests by line, answered by id in the host side's one
answer shape; a child's stray output cannot reach the protocol; EOF ends it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

SERVE = [sys.executable, "-c", "import sys; from overcloud.underclouds.ssh.agent import main; sys.exit(main(['serve']))"]


def _start() -> subprocess.Popen:
    return subprocess.Popen(SERVE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _answers(p: subprocess.Popen, n: int) -> list[dict]:
    return [json.loads(p.stdout.readline()) for _ in range(n)]


def test_serve_answers_each_request_by_id_in_one_shape():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    p = _start()
    try:
        [hello] = _answers(p, 1)
        assert hello["id"] == 0 and hello["ok"] is True and hello["result"]["pid"] == p.pid
        reqs = [{"id": 7, "op": "tcp-check", "req": {"host": "127.0.0.1", "port": port, "timeout": 2}},
                {"id": 8, "op": "no-such-op", "req": {}},
                {"id": 9, "op": "sup", "req": {"handle": "../x", "box_dir": "/x", "method": "state"}},
                {"id": 10, "op": "tcp-check", "req": {"handle": "bad handle", "host": "127.0.0.1", "port": port}}]
        p.stdin.write(b"".join(json.dumps(r).encode() + b"\n" for r in reqs) + b"not json\n")
        p.stdin.flush()
        got = {a["id"]: a for a in _answers(p, 5)}
        assert got[7] == {"id": 7, "ok": True, "result": True}
        assert got[8]["ok"] is False and got[8]["error"]["kind"] == "input" and "no-such-op" in got[8]["error"]["message"]
        assert got[9]["ok"] is False and got[9]["error"]["type"] == "ValueError"
        assert got[10]["ok"] is False and "handle" in got[10]["error"]["message"]
        assert got[None]["ok"] is False and got[None]["error"]["kind"] == "input"
        # one process answered everything: EOF on its stdin ends it
        p.stdin.close()
        assert p.wait(20) == 0
    finally:
        listener.close()
        if p.poll() is None:
            p.kill()
            p.wait()


def test_serve_runs_requests_at_once():
    """A slow request does not hold back the ones sent after it (each runs in a thread)."""
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    port = blackhole.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue: the next connect waits until its timeout
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    p = _start()
    try:
        _answers(p, 1)
        slow = {"id": 1, "op": "tcp-check", "req": {"host": "127.0.0.1", "port": port, "timeout": 3}}
        fast = {"id": 2, "op": "no-such-op", "req": {}}
        t0 = time.monotonic()
        p.stdin.write(json.dumps(slow).encode() + b"\n" + json.dumps(fast).encode() + b"\n")
        p.stdin.flush()
        first, second = _answers(p, 2)
        assert (first["id"], second["id"]) == (2, 1), (first, second)
        assert time.monotonic() - t0 > 0  # (order, not time, is the claim)
    finally:
        p.stdin.close()
        p.wait(20)
        for s in fillers:
            s.close()
        blackhole.close()


def test_one_shot_agent_and_boxctl_answer_in_the_same_shape():
    r = subprocess.run([sys.executable, "-m", "overcloud.underclouds.ssh.boxctl", "tcp-check"],
                       input=b'{"host": "127.0.0.1", "port": 1, "timeout": 1}', capture_output=True, timeout=30)
    assert json.loads(r.stdout) == {"ok": True, "result": False}
    r = subprocess.run([*SERVE[:2], "import sys; from overcloud.underclouds.ssh.agent import main; sys.exit(main(['agent', 'nope']))"],
                       input=b"{}", capture_output=True, timeout=30)
    answer = json.loads(r.stdout)
    assert r.returncode == 2 and answer["ok"] is False and set(answer["error"]) == {"kind", "type", "message"}
