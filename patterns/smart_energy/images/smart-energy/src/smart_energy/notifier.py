"""The administrator's notification receiver: stores what the webhook brings and shows it."""

from __future__ import annotations

import html
import threading
import time
from collections import deque

from smart_energy.common import env, serve, setup_logging


def main() -> None:
    setup_logging("notifier")
    notes: deque = deque(maxlen=1000)
    lock = threading.Lock()

    def receive(h):
        body = h.body()
        if not isinstance(body, dict):
            raise ValueError("send a JSON object")
        with lock:
            notes.append({**body, "received_at": time.time()})
        return {"stored": len(notes)}

    def page(h):
        with lock:
            rows = "".join(f"<li>{html.escape(time.strftime('%H:%M:%S', time.localtime(n['received_at'])))} "
                           f"{html.escape(str(n.get('device')))}: {html.escape(str(n.get('reason')))}</li>"
                           for n in reversed(notes))
        h.send(200, f"<html><body><h1>Notifications</h1><ul>{rows}</ul></body></html>", "text/html")

    serve(int(env("HTTP_PORT", "8080")), {
        ("POST", "/notify"): receive,
        ("GET", "/notifications"): lambda h: list(notes),
        ("GET", "/"): page,
    })
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
