"""A real moto server for EC2 tests, and a fault-injecting HTTP proxy to put in front of it.

``MotoServer`` runs ``moto_server`` from the venv on 127.0.0.1 at a free port (a process we start
and stop by PID; its log in a temporary directory). ``FaultProxy`` is a small HTTP server on
loopback that forwards every request to the server, except the first N whose EC2 ``Action``
matches a rule: those get the HTTP status and EC2 error XML the rule names (a real HTTP answer,
so boto3 and our retry code see exactly what EC2 would send). It records every request's action.
"""

from __future__ import annotations

import http.client
import http.server
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))

from servers import free_port  # noqa: E402


class MotoServer:
    """``moto_server`` on loopback. ``env`` adds to its environment (e.g. INITIAL_NO_AUTH_ACTION_COUNT)."""

    def __init__(self, env: dict[str, str] | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="oc-moto-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MotoServer":
        exe = Path(sys.executable).parent / "moto_server"
        log = open(self.dir / "moto.log", "wb")
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited {self.proc.returncode}: {(self.dir / 'moto.log').read_text()[-800:]}")
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto_server did not answer within 30 s")

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10).read()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def ec2_error_xml(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>").encode()


class FaultProxy:
    """HTTP proxy on loopback in front of ``upstream``; ``fail(action, times, status, code)`` makes
    the next ``times`` requests of that EC2 action (None: any) answer with that error."""

    def __init__(self, upstream: str):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: list[tuple[str, int]] = []  # (action, status answered)
        self._rules: list[list] = []  # [action | None, times left, status, code, message]
        self._holds: list[list] = []  # [action, seconds, arrived event]
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                action = (urllib.parse.parse_qs(body.decode("utf-8", "replace")).get("Action") or [""])[0]
                hold = proxy._take_hold(action)
                if hold is not None:  # the request reached the "cloud" and is under way: it is done later
                    hold[1].set()
                    time.sleep(hold[0])
                fault = proxy._take(action)
                if fault is not None:
                    status, code, message = fault
                    data = ec2_error_xml(code, message)
                    self.send_response(status)
                    self.send_header("Content-Type", "text/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    proxy._record(action, status)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request("POST", self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                proxy._record(action, resp.status)
                try:
                    self._answer(resp, data)
                except OSError:  # the caller is gone (killed while its call was held): the call was still done
                    pass
                conn.close()

            def _answer(self, resp, data):
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def fail(self, action: str | None, times: int, status: int, code: str, message: str = "injected by the test") -> None:
        with self._lock:
            self._rules.append([action, times, status, code, message])

    def hold(self, action: str, seconds: float) -> threading.Event:
        """The next request of ``action`` waits ``seconds`` before it goes to the server (and is
        done there even when its caller is gone meanwhile); the event is set when it arrives."""
        arrived = threading.Event()
        with self._lock:
            self._holds.append([action, seconds, arrived])
        return arrived

    def _take_hold(self, action: str):
        with self._lock:
            for h in self._holds:
                if h[0] == action:
                    self._holds.remove(h)
                    return h[1], h[2]
        return None

    def _take(self, action: str):
        with self._lock:
            for rule in self._rules:
                if rule[1] > 0 and (rule[0] is None or rule[0] == action):
                    rule[1] -= 1
                    return rule[2], rule[3], rule[4]
        return None

    def _record(self, action: str, status: int) -> None:
        with self._lock:
            self.seen.append((action, status))

    def calls(self, action: str) -> list[int]:
        with self._lock:
            return [s for a, s in self.seen if a == action]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class AWSLab:
    """``scripts/aws-lab.sh up DIR`` / ``down DIR`` for a test: moto, DIR/sites.yaml (site aws-1),
    and the harness booting each running instance as a namespace instance (needs root; one lab
    per machine, so tests using it run under the integration lock)."""

    def __init__(self, dir: Path, *, harness: bool = True):
        self.dir = Path(dir)
        self.harness = harness
        self.sites_file = self.dir / "sites.yaml"
        self.script = ROOT / "scripts" / "aws-lab.sh"

    def _run(self, cmd: str, timeout: float) -> str:
        env = {**os.environ, "OVERCLOUD_AWS_LAB_HARNESS": "1" if self.harness else "0"}
        r = subprocess.run(["bash", str(self.script), cmd, str(self.dir)], capture_output=True, text=True,
                           timeout=timeout, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"aws-lab.sh {cmd} failed ({r.returncode}): {r.stderr.strip()[-1500:]}")
        return r.stdout

    def up(self) -> "AWSLab":
        self._run("up", 600)  # the instances' rootfs is built once (~70 s), cached after
        self.url = (self.dir / "endpoint").read_text().strip()
        return self

    def status(self) -> str:
        return self._run("status", 60)

    def down(self) -> None:
        self._run("down", 300)
