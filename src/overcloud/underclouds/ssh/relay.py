"""The far end of a remote box's ``connect_tcp``: run in the box's netns, by path, with the
standard library only (``/usr/bin/python3 -IS <bundle>/overcloud/underclouds/ssh/relay.py host
port timeout``: no import of our package, so it starts in about a third of the time a
``module`` command takes; one starts per connection).

It connects, writes ``+`` (or ``-<reason>`` and exits 1), then copies stdin to the socket and
the socket to stdout until the socket ends; EOF on stdin is a half-close.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys


def relay(host: str, port: int, timeout: float) -> int:
    """stdin/stdout <-> a TCP connection opened from here (the box's netns)."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        os.write(1, f"-{exc.__class__.__name__}: {exc}\n".encode()[:500])
        return 1
    sock.settimeout(None)
    os.write(1, b"+")
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ, "in")
    sel.register(sock, selectors.EVENT_READ, "sock")
    while True:
        for key, _ in sel.select():
            if key.data == "in":
                data = os.read(0, 65536)
                if not data:
                    sel.unregister(0)
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        return 0
                else:
                    sock.sendall(data)
            else:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    sock.close()
                    return 0
                view = memoryview(data)
                while view:
                    n = os.write(1, view)
                    view = view[n:]


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.stderr.write("usage: relay.py HOST PORT TIMEOUT\n")
        sys.exit(2)
    sys.exit(relay(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
