"""A workload is not root on the host (issue 10, point 1), on a small real OverCloud.

* A process-runtime workload tries what the issue's attacker did — read the Tower's
  ``admin.token`` and ``secret.key``, another replica's files and ``/proc/<pid>/environ``, open
  the cached ``weed`` binary for writing, read the Tower's own environment — and every attempt
  fails, while it still calls a Service by name.
* A Podman workload runs with no capabilities, ``no_new_privs``, a non-root uid and a user
  namespace of its own, seen from inside and from the host.
* An artifact replaced in a box's cache is refused, never run; an image tar replaced in the
  Construction DataLake is refused at compose, with a 422 naming the image.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import secrets
import subprocess
import xmlrpc.client
from pathlib import Path

import pytest
import yaml
from kernel import leftovers
from towers import wait_for

from overcloud.boxes.supervision import _rpc_proxy
from overcloud.composition import runtime as rt

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SMART = ROOT / "patterns" / "smart_energy"
IMAGE = "localhost/overcloud/smart-energy:latest"

# Standard library only. Each attack records ok=True when it WORKED (bad); then it serves what
# happened as JSON on port 8097.
ATTACKER = r'''
import glob, http.server, json, os, urllib.request
T = json.loads(os.environ["TARGETS"])
MARK = T["marker_reversed"][::-1].encode()  # reversed: this process's own environment never holds it
R = {}
def attempt(name, fn):
    try:
        R[name] = {"ok": True, "detail": str(fn())[:300]}
    except Exception as exc:
        R[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
def read(path):
    with open(path, "rb") as f:
        return f"read {len(f.read())} bytes of {path}"
def marker_in(paths):
    hits = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                if MARK in f.read():
                    hits.append(p)
        except OSError:
            pass
    if not hits:
        raise PermissionError(f"the marker is in none of the {len(paths)} files readable here")
    return hits
attempt("read_admin_token", lambda: read(T["token"]))
attempt("read_secret_key", lambda: read(T["secret_key"]))
attempt("read_victim_files", lambda: marker_in(glob.glob(T["victim_dir"] + "/**", recursive=True)))
attempt("read_victim_environ", lambda: marker_in([f"/proc/{p}/environ" for p in T["victim_pids"]] + glob.glob("/proc/*/environ")))
attempt("read_tower_environ", lambda: read(f"/proc/{T['tower_pid']}/environ"))
attempt("write_weed", lambda: open(T["weed"], "ab").close() or "opened the cached weed for writing")
attempt("list_state_dir", lambda: os.listdir(T["state_dir"]))
attempt("list_run_overcloud", lambda: os.listdir("/run/overcloud"))
R["legit_service_by_name"] = {"ok": True}
attempt("legit_service_by_name", lambda: urllib.request.urlopen("http://victim:8098/", timeout=3).read().decode())
with open("/work/proof", "w") as f:
    f.write("written by the attacker")
R["whoami"] = {"ok": True, "detail": f"{os.getuid()} {os.getgid()}"}
body = json.dumps(R).encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(s):
        s.send_response(200); s.send_header("Content-Length", str(len(body))); s.end_headers(); s.wfile.write(body)
    def log_message(s, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8097), H).serve_forever()
'''
ATTACKS = ["read_admin_token", "read_secret_key", "read_victim_files", "read_victim_environ", "read_tower_environ",
           "write_weed", "list_state_dir", "list_run_overcloud"]

# a Podman workload reports its own /proc/self/status and whether it reaches the victim by name
PODMAN_REPORTER = r'''
import http.server, json, urllib.request
try:
    legit = urllib.request.urlopen("http://victim:8098/", timeout=3).read().decode()
except Exception as exc:
    legit = repr(exc)
body = json.dumps({"status": open("/proc/self/status").read(), "uid_map": open("/proc/self/uid_map").read(),
                   "legit": legit}).encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(s):
        s.send_response(200); s.send_header("Content-Length", str(len(body))); s.end_headers(); s.wfile.write(body)
    def log_message(s, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8096), H).serve_forever()
'''


def deployment(name: str, command: list[str], port: int, env: list[dict] | None = None, **container) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": name, "image": IMAGE, "imagePullPolicy": "Never", "env": env or [], "command": command,
                    "ports": [{"containerPort": port, "name": "http"}],
                    "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}},
                    "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1}, **container}]}}}}


def victim(marker: str) -> str:
    serve = ("import http.server as h\nclass H(h.BaseHTTPRequestHandler):\n def do_GET(s):\n"
             "  s.send_response(200); s.send_header('Content-Length','6'); s.end_headers(); s.wfile.write(b'victim')\n"
             " def log_message(s, *a): pass\nh.ThreadingHTTPServer(('0.0.0.0', 8098), H).serve_forever()")
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "victim"},
               "spec": {"selector": {"app": "victim"}, "ports": [{"port": 8098, "targetPort": "http"}]}}
    return yaml.safe_dump_all([deployment("victim", ["python3", "-c", serve], 8098,
                                          [{"name": "VICTIM_SECRET", "value": marker}]), service])


@pytest.fixture(scope="module")
def oc(tower):
    for runtime in ("podman", "process"):
        tower.cli("images", "build", str(SMART), "--runtime", runtime, check=True, timeout=600)
    with tower.client() as c:
        d = c.post("/overclouds", json={"provider": "local", "number": "1", "size": "medium"},
                   params={"wait": "true"}, timeout=240).json()
    assert d["status"] == "READY", d.get("error")
    yield d
    assert tower.delete_and_wait(d["overcloud_ID"])["status"] == "DELETED"
    assert leftovers(d["overcloud_ID"], tower.state_dir) == []


def compose(tower, oc, body: str, runtime: str, wait: bool = True):
    with tower.client() as c:
        return c.post(f"/overclouds/{oc['overcloud_ID']}/services", content=body,
                      headers={"Content-Type": "application/yaml"},
                      params={"runtime": runtime, **({"wait": "true", "timeout": "60"} if wait else {})}, timeout=120)


def remove(tower, oc, *names: str) -> None:
    with tower.client() as c:
        for name in names:
            c.delete(f"/overclouds/{oc['overcloud_ID']}/services/{name}")


def box_of(tower, oc, service: str) -> str:
    with tower.client() as c:
        rows = {s["name"]: s for s in c.get(f"/overclouds/{oc['overcloud_ID']}/services").json()}
    return f"oc-{oc['overcloud_ID'][:8]}-{rows[service]['replicas'][0]['box']}"


def program_log(tower, handle: str, replica: str, container: str) -> str:
    """The end of a workload program's stderr (for a failure's message)."""
    log = tower.state_dir / "local" / "boxes" / handle / "logs" / f"{rt.program_name(replica, container)}.err.log"
    return log.read_text()[-2000:] if log.exists() else "(no log)"


def get_json(handle: str, port: int):
    r = subprocess.run(["ip", "netns", "exec", handle, "python3", "-c",
                        f"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=3).read().decode())"],
                       capture_output=True, text=True, timeout=20)
    return json.loads(r.stdout) if r.returncode == 0 and r.stdout else None


def pids_with(marker: bytes) -> list[int]:
    """Host processes whose environment holds ``marker`` (read as root, as the attacker cannot)."""
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if marker in Path(f"/proc/{p}/environ").read_bytes():
                    found.append(int(p))
            except OSError:
                continue
    return found


def status_fields(text: str) -> dict[str, str]:
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def test_a_process_workload_cannot_reach_the_tower_or_other_replicas(tower, oc):
    oid = oc["overcloud_ID"]
    marker = "victim-" + secrets.token_hex(8)
    assert compose(tower, oc, victim(marker), "process").status_code == 201
    try:
        victim_dir = tower.state_dir / "services" / oid / "victim-0"
        victim_pids = wait_for(lambda: pids_with(marker.encode()), "the victim's process")
        [weed] = [p for p in (tower.state_dir / "artifact-cache").iterdir() if len(p.name) == 64]
        # the targets are real: root on the host finds the marker where the attacker will look
        assert any(marker.encode() in p.read_bytes() for p in victim_dir.rglob("*") if p.is_file())
        targets = {"token": str(tower.state_dir / "admin.token"), "secret_key": str(tower.state_dir / "secret.key"),
                   "victim_dir": str(victim_dir), "victim_pids": victim_pids, "tower_pid": tower.proc.pid,
                   "weed": str(weed), "state_dir": str(tower.state_dir), "marker_reversed": marker[::-1]}
        attacker = deployment("attacker", ["python3", "-c", ATTACKER], 8097,
                              [{"name": "TARGETS", "value": json.dumps(targets)},
                               {"name": "VICTIM_URL", "value": "http://victim:8098/"}])
        r = compose(tower, oc, yaml.safe_dump(attacker), "process")
        assert r.status_code == 201, program_log(tower, box_of(tower, oc, "attacker"), "attacker-0", "attacker")
        handle = box_of(tower, oc, "attacker")
        report = wait_for(lambda: get_json(handle, 8097), "the attacker's report", bound=30)
        worked = {k: report[k]["detail"] for k in ATTACKS if report[k]["ok"]}
        assert not worked, f"attacks that worked: {worked}"
        assert report["legit_service_by_name"] == {"ok": True, "detail": "victim"}
        assert report["whoami"]["detail"] == "65534 65534"
        # on the host, what it wrote is its sandbox's uid's: neither root's nor any user's
        proof = tower.state_dir / "services" / oid / "attacker-0" / "work" / "proof"
        assert os.stat(proof).st_uid == rt.sandbox_uid(oid, "attacker-0") != 0
        for pid in pids_with(b"TARGETS="):
            uid = int(status_fields(Path(f"/proc/{pid}/status").read_text())["Uid"].split()[0])
            assert uid in rt.SANDBOX_UIDS, f"process {pid} of the attacker runs as host uid {uid}"
    finally:
        remove(tower, oc, "attacker", "victim")


def test_a_podman_workload_has_no_capabilities_and_is_not_root(tower, oc):
    oid = oc["overcloud_ID"]
    assert compose(tower, oc, victim("podman-victim"), "process").status_code == 201
    try:
        reporter = deployment("reporter", ["python3", "-c", PODMAN_REPORTER], 8096,
                              [{"name": "VICTIM_URL", "value": "http://victim:8098/"}])
        r = compose(tower, oc, yaml.safe_dump(reporter), "podman")
        assert r.status_code == 201, program_log(tower, box_of(tower, oc, "reporter"), "reporter-0", "reporter")
        report = wait_for(lambda: get_json(box_of(tower, oc, "reporter"), 8096), "the reporter's answer", bound=30)
        inside = status_fields(report["status"])
        assert inside["Uid"].split() == ["65534"] * 4 and inside["Gid"].split() == ["65534"] * 4
        assert inside["CapEff"] == inside["CapPrm"] == inside["CapBnd"] == "0000000000000000"
        assert inside["NoNewPrivs"] == "1"
        inner, outer, _ = report["uid_map"].split()
        assert inner == "0" and int(outer) > 65535  # a user namespace of its own: its root is nobody on the host
        assert report["legit"] == "victim"
        # from the host: the container's process is not root there either
        env = {**os.environ, "CONTAINERS_CONF": str(tower.state_dir / "images" / "containers.conf")}
        pid = subprocess.run(["podman", "inspect", "--format", "{{.State.Pid}}", rt.container_name(oid, "reporter-0", "reporter")],
                             capture_output=True, text=True, env=env).stdout.strip()
        host = status_fields(Path(f"/proc/{pid}/status").read_text())
        assert int(host["Uid"].split()[0]) > 65535 and host["CapEff"] == "0000000000000000" and host["NoNewPrivs"] == "1"
        # what a pattern may not ask for is refused before anything starts, naming the field
        privileged = deployment("priv", ["sleep", "60"], 8095, securityContext={"privileged": True})
        r = compose(tower, oc, yaml.safe_dump(privileged), "podman", wait=False)
        assert r.status_code == 422 and r.json()["field"] == "spec.template.spec.containers[0].securityContext.privileged"
        low = deployment("low", ["sleep", "60"], 8095, securityContext={"capabilities": {"add": ["NET_BIND_SERVICE"]}})
        r = compose(tower, oc, yaml.safe_dump(low), "process", wait=False)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "spec.template.spec.containers[0].securityContext.capabilities.add"
    finally:
        remove(tower, oc, "reporter", "victim")


def test_a_replaced_artifact_is_refused(tower, oc):
    """The cached weed binary replaced under a box: its next start is refused (and the
    replacement never runs); with the real one back, it starts."""
    [weed] = [p for p in (tower.state_dir / "artifact-cache").iterdir() if len(p.name) == 64]
    handle = f"oc-{oc['overcloud_ID'][:8]}-c1"
    sup = _rpc_proxy(Path("/run/overcloud") / f"{handle}.sock").supervisor
    log = tower.state_dir / "local" / "boxes" / handle / "logs" / "weed-volume.err.log"
    pwned = tower.state_dir / "pwned"
    aside = weed.with_name(weed.name + ".aside")
    sup.stopProcess("weed-volume", True)
    os.rename(weed, aside)
    try:
        weed.write_text(f"#!/bin/sh\ntouch {pwned}\nexec sleep 60\n")
        os.chmod(weed, 0o755)
        sup.startProcess("weed-volume", False)
        wait_for(lambda: "replaced after it was fetched" in log.read_text(), "the refusal in the program's log")
        try:
            sup.stopProcess("weed-volume", True)
        except xmlrpc.client.Fault:  # between two refused starts
            pass
        assert not pwned.exists()
    finally:
        os.replace(aside, weed)
    sup.startProcess("weed-volume", True)
    assert sup.getProcessInfo("weed-volume")["statename"] == "RUNNING"


def test_an_image_tar_replaced_in_the_construction_datalake_is_refused(tower, oc):
    """An image this Tower built whose tar comes back from the Construction DataLake changed:
    compose refuses it (422, naming the image) and Podman never imports it."""
    from overcloud.components.construction import ARTIFACTS, ConstructionDataLake
    from overcloud.identity.secrets import SecretBox, load_key

    name, digest = f"sandbox-test-{secrets.token_hex(4)}", "0" * 16
    ref = f"localhost/overcloud/{name}:latest"
    built = b"the rootfs as built"
    gateway = str(next(ipaddress.ip_network(tower.sites[0]["cidr"]).hosts()))
    client = ConstructionDataLake(tower.state_dir, bind_ip=gateway, secrets=SecretBox(load_key(tower.state_dir))).client()
    key = f"images/{name}-{digest}.tar"
    client.put_object(Bucket=ARTIFACTS, Key=key, Body=b"a rootfs put in its place")
    index_path = tower.state_dir / "images" / "index.json"
    index = json.loads(index_path.read_text())
    index[ref] = {"hash": digest, "runtimes": {"podman": {
        "tar": f"/var/cache/overcloud/images/{name}-{digest}.tar", "sha256": hashlib.sha256(built).hexdigest(),
        "published": key}}}
    index_path.write_text(json.dumps(index))
    try:
        body = yaml.safe_dump(deployment("tampered", ["sleep", "60"], 8094)).replace(IMAGE, ref)
        r = compose(tower, oc, body, "podman", wait=False)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "spec.template.spec.containers[0].image"
        assert "refused" in r.json()["message"] and "recorded when it was built" in r.json()["message"]
        assert not Path(index[ref]["runtimes"]["podman"]["tar"]).exists()
        env = {**os.environ, "CONTAINERS_CONF": str(tower.state_dir / "images" / "containers.conf")}
        assert subprocess.run(["podman", "image", "exists", ref], env=env).returncode != 0
    finally:
        index = json.loads(index_path.read_text())
        index.pop(ref, None)
        index_path.write_text(json.dumps(index))
        client.delete_object(Bucket=ARTIFACTS, Key=key)
