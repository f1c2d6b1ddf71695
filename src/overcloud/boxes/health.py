"""A tiny TCP health responder, run under a box's supervisord.

``python -I -S health.py <bind address> <port> <text>``: every connection
gets ``<text>\\n`` and is closed. Standard library only, so it starts in a
few milliseconds and needs nothing installed in the box.
"""

import socket
import sys


def main() -> None:
    host, port, text = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    reply = (text + "\n").encode()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        try:
            conn.settimeout(1.0)
            conn.sendall(reply)
        except OSError:
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    main()
