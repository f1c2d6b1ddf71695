"""A hostile pattern (issue 10): its workload tries every attack we found, under both runtimes,
and every attempt fails, while the same workload's legitimate work (S3 with its keys, a Service
called by name) still works. The attacks themselves are in hostile_workload.py."""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from kernel import leftovers
from towers import wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SMART = ROOT / "patterns" / "smart_energy"
IMAGE = "localhost/overcloud/smart-energy:latest"
ATTACKS = ["read_tower_token", "read_tower_secret_key", "read_other_env_files", "read_other_proc_environ",
           "arp_spoof", "sniff", "reach_host_listener_0", "reach_host_listener_1", "filer_without_keys",
           "master_without_keys", "prometheus_quit", "prometheus_reload", "replace_artifact"]


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


@pytest.fixture
def host_listener():
    """A listener on every host address, as a careless host service would have."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 0))
    s.listen(16)
    s.settimeout(0.2)
    yield s.getsockname()[1]
    s.close()


def pattern(targets: dict, marker: str) -> str:
    code = (Path(__file__).parent / "hostile_workload.py").read_text()
    victim = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "victim"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "victim"}}, "template": {
            "metadata": {"labels": {"app": "victim"}},
            "spec": {"containers": [{
                "name": "victim", "image": IMAGE, "imagePullPolicy": "Never",
                "env": [{"name": "VICTIM_SECRET", "value": marker}],
                "command": ["python3", "-c", "import http.server as h\nclass H(h.BaseHTTPRequestHandler):\n"
                            " def do_GET(s):\n  s.send_response(200); s.send_header('Content-Length','6'); s.end_headers(); s.wfile.write(b'victim')\n"
                            " def log_message(s, *a): pass\nh.ThreadingHTTPServer(('0.0.0.0', 8098), H).serve_forever()"],
                "ports": [{"containerPort": 8098, "name": "http"}],
                "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}},
                "readinessProbe": {"tcpSocket": {"port": 8098}, "periodSeconds": 1}}]}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "victim"},
               "spec": {"selector": {"app": "victim"}, "ports": [{"port": 8098, "targetPort": "http"}]}}
    attacker = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "attacker"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "attacker"}}, "template": {
            "metadata": {"labels": {"app": "attacker"}},
            "spec": {"containers": [{
                "name": "attacker", "image": IMAGE, "imagePullPolicy": "Never",
                # naming the victim's Service makes the attacker start after it is ready
                "env": [{"name": "VICTIM_URL", "value": "http://victim:8098/"},
                        {"name": "ATTACK_TARGETS", "value": json.dumps(targets)}],
                "command": ["python3", "-c", code],
                "ports": [{"containerPort": 8097, "name": "report"}],
                "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}},
                "readinessProbe": {"tcpSocket": {"port": 8097}, "periodSeconds": 1}}]}}}}
    return yaml.safe_dump_all([victim, service, attacker])


def in_box(handle: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", handle, *argv], capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize("runtime", ["process", "podman"])
def test_every_attack_of_a_hostile_workload_fails_and_its_legitimate_work_does_not(tower, oc, host_listener, runtime):
    oid = oc["overcloud_ID"]
    post, c1 = oc["post"], oc["clusters"][0]
    post_ip = post["overlay_address"]
    gateways = [str(next(ipaddress.ip_network(s["cidr"]).hosts())) for s in tower.sites]
    marker = "victim-" + secrets.token_hex(8)
    targets = {
        "token": str(tower.state_dir / "admin.token"),
        "secret_key": str(tower.state_dir / "secret.key"),
        "env_glob": str(tower.state_dir / "services" / oid / "*" / "*env"),
        "artifact_glob": str(tower.state_dir / "artifact-cache" / "*"),
        "marker_reversed": marker[::-1],
        "gateway": gateways[0],
        "gateways": gateways,
        "host_port": host_listener,
        "filer": f"http://{post_ip}:8888",
        "master": f"http://{post_ip}:9333",
        "prometheus": f"http://{post_ip}:9090",
    }
    artifacts_before = {p.name: p.stat().st_mtime for p in (tower.state_dir / "artifact-cache").iterdir()}
    with tower.client() as c:
        r = c.post(f"/overclouds/{oid}/services", content=pattern(targets, marker),
                   headers={"Content-Type": "application/yaml"},
                   params={"runtime": runtime, "wait": "true", "timeout": "60"}, timeout=90)
        assert r.status_code == 201, r.text
    try:
        box = c1["handle"] if "handle" in c1 else None
        handles = [h for h in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                   if h.endswith("-c1") and oid[:8] in h] if box is None else [box]
        assert handles, "the cluster box's namespace"
        got = wait_for(lambda: in_box(handles[0], "python3", "-c",
                                      "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:8097/', timeout=3).read().decode())").stdout,
                       "the attacker's report", bound=30)
        report = json.loads(got)
        print(json.dumps(report, indent=1))
        succeeded = {k: report[k]["detail"] for k in ATTACKS if report[k]["ok"]}
        assert not succeeded, f"attacks that worked under {runtime}: {succeeded}"
        # stopped by the system, not by a bug of the attacker's own
        buggy = {k: report[k]["detail"] for k in ATTACKS if report[k]["detail"].split(":")[0] in
                 ("NameError", "AttributeError", "KeyError", "TypeError", "IndexError", "ValueError")}
        assert not buggy, buggy
        for legit in ("legit_s3_with_keys", "legit_service_by_name"):
            assert report[legit]["ok"], (legit, report[legit]["detail"])
        uid = report["whoami"]["detail"].split()[0]
        assert uid != "0", report["whoami"]
        # Prometheus is still there, and no artifact changed
        assert in_box(handles[0], "python3", "-c",
                      f"import urllib.request; urllib.request.urlopen('http://{post_ip}:9090/-/ready', timeout=3)").returncode == 0
        after = {p.name: p.stat().st_mtime for p in (tower.state_dir / "artifact-cache").iterdir()}
        assert after == artifacts_before
    finally:
        with tower.client() as c:
            for name in ("attacker", "victim"):
                c.delete(f"/overclouds/{oid}/services/{name}")
