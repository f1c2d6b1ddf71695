"""Shared helpers: configuration from the environment, MQTT connection, a JSON HTTP server."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import paho.mqtt.client as mqtt

log = logging.getLogger("smart_energy")


def setup_logging(name: str) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")


def env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        raise SystemExit(f"{name} is not set")
    return value


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def mqtt_client(client_id: str, on_message: Callable | None = None, subscribe: list[str] = ()) -> mqtt.Client:
    """Connected to MQTT_HOST:MQTT_PORT (retrying until the broker answers); subscriptions are
    renewed on every reconnect, and paho reconnects by name, so a moved broker is found again."""
    if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2 (Debian 13)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, client_id=client_id)
    else:
        client = mqtt.Client(client_id=client_id)
    client.reconnect_delay_set(min_delay=0.2, max_delay=2)

    def on_connect(c, userdata, flags, rc):
        log.info("connected to MQTT (rc=%s)", rc)
        for topic in subscribe:
            c.subscribe(topic, qos=0)

    client.on_connect = on_connect
    if on_message is not None:
        client.on_message = on_message
    host, port = env("MQTT_HOST", "mqtt"), int(env("MQTT_PORT", "1883"))
    deadline = time.monotonic() + 120
    while True:
        try:
            client.connect(host, port, keepalive=10)
            break
        except (OSError, socket.gaierror) as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"MQTT broker {host}:{port} unreachable: {exc}")
            time.sleep(0.2)
    client.loop_start()
    return client


class JSONHandler(BaseHTTPRequestHandler):
    routes: dict[tuple[str, str], Callable[["JSONHandler"], Any]] = {}

    def log_message(self, fmt, *args):  # quiet: the access log would drown the useful lines
        return

    def query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlparse(self.path).query).items()}

    def body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw) if raw else None

    def send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else (
            payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        path = urlparse(self.path).path
        fn = self.routes.get((method, path))
        if fn is None:
            self.send(404, {"error": f"no {method} {path}"})
            return
        try:
            result = fn(self)
        except (ValueError, KeyError) as exc:
            self.send(400, {"error": str(exc)})
            return
        if result is not None:
            self.send(200, result)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return  # a probe that hung up early
        super().handle_error(request, client_address)


def serve(port: int, routes: dict[tuple[str, str], Callable]) -> ThreadingHTTPServer:
    handler = type("Handler", (JSONHandler,), {"routes": {("GET", "/healthz"): lambda h: {"ok": True}, **routes}})
    server = _Server(("0.0.0.0", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def post_json(url: str, payload: Any, timeout: float = 2.0) -> int:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status


def get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())
