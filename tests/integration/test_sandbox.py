"""A workload is not root on the host, and cannot break out of its box (issue 10), on a small
real OverCloud.

* A hostile pattern, under the process runtime and Podman, tries every attack of the issue
  (hostile_workload.py): read the Tower's ``admin.token``, ``secret.key`` and environment,
  another replica's files and ``/proc/<pid>/environ``, open raw sockets to spoof ARP and sniff,
  reach a host listener at every gateway, use the filer and master without keys, stop or reload
  Prometheus, open a cached artifact for writing. Every attempt fails, while it still writes
  and reads S3 with its keys, calls a Service by name and writes its own directory.
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
import socket
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
HOSTILE = Path(__file__).parent / "hostile_workload.py"

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


@pytest.fixture
def host_listener():
    """A listener on every host address, as a careless host service would have."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


@pytest.mark.parametrize("runtime", ["process", "podman"])
def test_every_attack_of_a_hostile_workload_fails_and_its_legitimate_work_does_not(tower, oc, host_listener, runtime):
    """The attacker's view in one place (hostile_workload.py): every attack of issue 10 from
    inside a composed replica fails, while it still uses S3 with its keys and a Service by name."""
    oid = oc["overcloud_ID"]
    post_ip = oc["post"]["overlay_address"]
    marker = "victim-" + secrets.token_hex(8)
    assert compose(tower, oc, victim(marker), runtime).status_code == 201
    try:
        # a replica's launch files are under its box's dir (composition.controller._workdir)
        victim_dir = tower.state_dir / "local" / "boxes" / box_of(tower, oc, "victim") / "replicas" / "victim-0"
        victim_pids = wait_for(lambda: pids_with(marker.encode()), "the victim's process")
        # the targets are real: root on the host finds the marker where the attacker will look
        assert any(marker.encode() in p.read_bytes() for p in victim_dir.rglob("*") if p.is_file())
        artifacts = {p.name: p.stat().st_mtime for p in (tower.state_dir / "artifact-cache").iterdir()}
        gateways = [str(next(ipaddress.ip_network(site["cidr"]).hosts())) for site in tower.sites]
        targets = {
            "token": str(tower.state_dir / "admin.token"), "secret_key": str(tower.state_dir / "secret.key"),
            "victim_dir": str(victim_dir), "victim_pids": victim_pids, "tower_pid": tower.proc.pid,
            "state_dir": str(tower.state_dir), "marker_reversed": marker[::-1],
            "artifact_glob": str(tower.state_dir / "artifact-cache" / "*"),
            "gateway": gateways[0], "gateways": gateways, "host_port": host_listener,
            "filer": f"http://{post_ip}:8888", "master": f"http://{post_ip}:9333", "prometheus": f"http://{post_ip}:9090",
        }
        attacker = deployment("attacker", ["python3", "-c", HOSTILE.read_text()], 8097,
                              [{"name": "ATTACK_TARGETS", "value": json.dumps(targets)},
                               {"name": "VICTIM_URL", "value": "http://victim:8098/"}])  # starts after the victim
        r = compose(tower, oc, yaml.safe_dump(attacker), runtime)
        handle = box_of(tower, oc, "attacker")
        assert r.status_code == 201, program_log(tower, handle, "attacker-0", "attacker")
        report = wait_for(lambda: get_json(handle, 8097), "the attacker's report", bound=30)
        print(json.dumps(report, indent=1))
        attacks = [k for k in report if not k.startswith("legit_") and k != "whoami"]
        assert len(attacks) >= 16, attacks
        worked = {k: report[k]["detail"] for k in attacks if report[k]["ok"]}
        assert not worked, f"attacks that worked under {runtime}: {worked}"
        # stopped by the system, not by a bug of the attacker's own
        buggy = {k: report[k]["detail"] for k in attacks if report[k]["detail"].split(":")[0] in
                 ("NameError", "AttributeError", "KeyError", "TypeError", "IndexError", "ValueError")}
        assert not buggy, buggy
        for legit in ("legit_s3_with_keys", "legit_service_by_name", "legit_write_own_dir"):
            assert report[legit]["ok"], (legit, report[legit]["detail"])
        assert report["whoami"]["detail"].startswith("65534\t") and " caps 0000000000000000" in report["whoami"]["detail"]
        # Prometheus is still there, and no artifact changed
        assert subprocess.run(["ip", "netns", "exec", handle, "python3", "-c",
                               f"import urllib.request; urllib.request.urlopen('http://{post_ip}:9090/-/ready', timeout=3)"],
                              capture_output=True, timeout=20).returncode == 0
        assert {p.name: p.stat().st_mtime for p in (tower.state_dir / "artifact-cache").iterdir()} == artifacts
        if runtime == "process":
            # on the host, what it wrote is its sandbox's uid's: neither root's nor any user's
            proof = tower.state_dir / "local" / "boxes" / box_of(tower, oc, "attacker") / "replicas" / "attacker-0" / "work" / "proof"
            assert os.stat(proof).st_uid == rt.sandbox_uid(oid, "attacker-0") != 0
            for pid in pids_with(b"ATTACK_TARGETS="):
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

    def running() -> bool:
        # supervisord may already be starting it again by itself (autorestart after a refusal)
        state = sup.getProcessInfo("weed-volume")["statename"]
        if state in ("STOPPED", "EXITED", "FATAL"):
            try:
                sup.startProcess("weed-volume", False)
            except xmlrpc.client.Fault:
                pass
        return state == "RUNNING"

    wait_for(running, "weed-volume running on the real binary again")


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
