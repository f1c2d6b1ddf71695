"""boxctl's relay (the remote connect_tcp's far end), on loopback: it answers '+' and relays
both ways until the server closes, or '-<reason>' and exit 1 when the connect fails."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import pytest

RELAY = [sys.executable, "-m", "overcloud.underclouds.ssh.boxctl", "relay"]


def test_relay_connects_and_copies_both_ways():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve():
        conn, _ = server.accept()
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                data += conn.recv(100)
            conn.sendall(b"echo " + data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    r = subprocess.run([*RELAY, "127.0.0.1", str(port), "2"], input=b"hello\n", capture_output=True, timeout=20)
    t.join(5)
    server.close()
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"+echo hello\n"


def test_relay_says_why_when_the_connect_fails():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    r = subprocess.run([*RELAY, "127.0.0.1", str(port), "2"], input=b"", capture_output=True, timeout=20)
    assert r.returncode == 1
    assert r.stdout.startswith(b"-ConnectionRefusedError")


@pytest.mark.parametrize("req", [{"handle": "../x", "box_dir": "/a/../x", "method": "state"},
                                 {"handle": "oc-12345678-c1", "box_dir": "/var/lib/x/oc-12345678-c2", "method": "state"}])
def test_box_ops_refuse_a_handle_or_dir_that_is_not_a_box(req):
    import json

    r = subprocess.run([sys.executable, "-m", "overcloud.underclouds.ssh.boxctl", "sup"], input=json.dumps(req).encode(),
                       capture_output=True, timeout=20)
    answer = json.loads(r.stdout)
    assert r.returncode != 0 and answer["error"]["type"] == "ValueError", answer


def test_relay_runs_by_path_with_the_standard_library_only(tmp_path):
    """The remote connect_tcp runs relay.py by path under ``python3 -IS`` (no package on the
    path: it must import nothing of ours) and it relays as boxctl's relay does."""
    from pathlib import Path

    import overcloud.underclouds.ssh.relay as relay_mod

    alone = tmp_path / "relay.py"
    alone.write_bytes(Path(relay_mod.__file__).read_bytes())  # nothing of ours beside it
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve():
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"hi " + conn.recv(100))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    r = subprocess.run(["/usr/bin/python3", "-IS", str(alone), "127.0.0.1", str(port), "2"], input=b"x",
                       capture_output=True, timeout=20, env={})
    t.join(5)
    server.close()
    assert r.returncode == 0 and r.stdout == b"+hi x", (r.stdout, r.stderr)
