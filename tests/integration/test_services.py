"""Service composition on real OverClouds: bad input refused before anything starts, the
smart-energy pattern end to end on Podman, a rolling update that keeps the Service answering,
and stitching, restart and re-placement on the process runtime."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from kernel import leftovers
from towers import wait_for

from overcloud.boxes.supervision import _rpc_proxy
from overcloud.composition.pattern import MAX_PATTERN_BYTES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SMART = ROOT / "patterns" / "smart_energy"
PATTERN = (SMART / "smart-energy.yaml").read_text()
IMAGE = "localhost/overcloud/smart-energy:latest"


@pytest.fixture(scope="module")
def oc(tower):
    for runtime in ("podman", "process"):
        tower.cli("images", "build", str(SMART), "--runtime", runtime, check=True, timeout=600)
    d = tower.create_two_site(2, 2)
    yield d
    assert tower.delete_and_wait(d["overcloud_ID"])["status"] == "DELETED"
    assert leftovers(d["overcloud_ID"], tower.state_dir) == []  # containers and nested cgroups included


def handle(oc, box: str) -> str:
    return f"oc-{oc['overcloud_ID'][:8]}-{box}"


def in_box(oc, box: str, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess:
    """A command in a box the way a person runs one: `ip netns exec` gives it the box's /etc/hosts."""
    return subprocess.run(["ip", "netns", "exec", handle(oc, box), *argv], capture_output=True, text=True, timeout=timeout)


def http_json(oc, box: str, url: str):
    r = in_box(oc, box, "python3", "-c", f"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen({url!r}, timeout=3).read().decode())")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def get_text(oc, box: str, url: str) -> str | None:
    r = in_box(oc, box, "python3", "-c", f"import urllib.request,sys; sys.stdout.write(urllib.request.urlopen({url!r}, timeout=3).read().decode())")
    return r.stdout if r.returncode == 0 else None


def post(tower, oc, body, **params):
    with tower.client() as c:
        return c.post(f"/overclouds/{oc['overcloud_ID']}/services", content=body, params=params,
                      headers={"Content-Type": "application/yaml"}, timeout=180)


def services(tower, oc) -> dict:
    with tower.client() as c:
        return {s["name"]: s for s in c.get(f"/overclouds/{oc['overcloud_ID']}/services").json()}


WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {overcloud.io/tier: edge}
      containers:
        - name: web
          image: IMAGE
          imagePullPolicy: Never
          # answers with its replica's name, so a client can tell replicas apart
          command: [python3, -c, "import http.server as h, os\\nclass H(h.BaseHTTPRequestHandler):\\n def do_GET(s):\\n  b = os.environ['OVERCLOUD_REPLICA'].encode(); s.send_response(200); s.send_header('Content-Length', str(len(b))); s.end_headers(); s.wfile.write(b)\\n def log_message(s, *a): pass\\nh.ThreadingHTTPServer(('0.0.0.0', 8070), H).serve_forever()"]
          ports: [{containerPort: 8070, name: http}]
          resources: {requests: {cpu: 50m, memory: 32Mi}}
          readinessProbe: {httpGet: {path: /, port: 8070}, periodSeconds: 1}
          livenessProbe: {tcpSocket: {port: 8070}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
""".replace("IMAGE", IMAGE)


@pytest.mark.parametrize("edit,status,manifest,field,words", [
    (lambda t: t.replace("kind: Service", "kind: Ingress"), 422, "document 2", "kind", "not supported"),
    (lambda t: t.replace("imagePullPolicy: Never", "imagePullPolicy: Never\n          stdin: true"), 422, "Deployment/web",
     "spec.template.spec.containers[0].stdin", "not supported"),
    (lambda t: t.replace(IMAGE, "localhost/overcloud/never-built:latest"), 422, "Deployment/web",
     "spec.template.spec.containers[0].image", "not built"),
    (lambda t: t.replace("tier: edge", "tier: moon"), 422, "Deployment/web", "spec.template.spec", "no box matches"),
    (lambda t: t.replace("memory: 32Mi", "memory: 2Gi"), 422, "Deployment/web", "spec.template.spec", "largest free is"),
    (lambda t: t + "---\n" + t.split("---")[1], 422, "Service/web", "metadata.name", "two Services"),
])
def test_bad_patterns_are_refused_and_nothing_starts(tower, oc, edit, status, manifest, field, words):
    r = post(tower, oc, edit(WEB), runtime="process")
    assert r.status_code == status, r.text
    body = r.json()
    assert (body["manifest"], body.get("field")) == (manifest, field) and words in body["message"], body
    assert services(tower, oc) == {}


def test_a_pattern_over_10_mib_is_refused(tower, oc):
    r = post(tower, oc, b"#" * (MAX_PATTERN_BYTES + 1))
    assert r.status_code == 413 and "10 MiB" in r.json()["message"]
    with tower.client() as c:
        r = c.post(f"/overclouds/{oc['overcloud_ID']}/services", content=b"", headers={"Content-Type": "application/yaml"})
    assert r.status_code == 400


def test_dry_run_places_and_orders_without_starting(tower, oc):
    r = tower.cli("-o", "json", "compose", oc["overcloud_ID"], str(SMART), "--dry-run", check=True)
    plan = json.loads(r.stdout)
    sites = {a["replica"]: a["site"] for a in plan["placement"]}
    assert sites["broker-0"] == sites["sensors-0"] == sites["sensors-1"] == "local-b"
    assert sites["collector-0"] == sites["dashboard-0"] == "local-a"
    assert {a["box"] for a in plan["placement"] if a["replica"].startswith("sensors")} == {"c3", "c4"}  # spread
    assert plan["start_order"][0] == ["broker", "notifier"]
    assert services(tower, oc) == {}


def test_smart_energy_end_to_end_on_podman(tower, oc):
    oid = oc["overcloud_ID"]
    r = post(tower, oc, PATTERN, runtime="podman", wait="true", timeout="60")
    assert r.status_code == 201, r.text
    svc = services(tower, oc)
    assert all(s["status"] == "READY" for s in svc.values()), svc
    broker_box = svc["broker"]["replicas"][0]["box"]
    cloud_box = svc["analyzer"]["replicas"][0]["box"]
    # the dashboard is a NodePort: it answers on its box's site address, from this host
    [url] = svc["dashboard"]["services"][0]["urls"]
    assert url.endswith(":30850")
    assert httpx.get(url + "/", timeout=5, trust_env=False).status_code == 200
    device = "sensors-0-pi0"
    normal = wait_for(lambda: http_json(oc, cloud_box, "http://collector:8000/latest").get(device), "first reading")
    assert normal["mode"] == "normal"
    # inject overheating from an edge box: `mqtt` resolves there (stitching)
    pub = in_box(oc, broker_box, "mosquitto_pub", "-h", "mqtt", "-t", f"se/fault/{device}", "-m", '{"kind": "overheat"}')
    assert pub.returncode == 0, pub.stderr
    injected = time.time()

    def acted():
        a = http_json(oc, cloud_box, "http://analyzer:8010/anomalies")
        hits = [x for x in a["anomalies"] if x["device"] == device and "applied_at" in x]
        return hits[0] if hits else None

    anomaly = wait_for(acted, "anomaly with power_save applied", bound=10)
    assert "CPU temperature" in anomaly["reason"] and anomaly["applied_at"] - injected < 10
    saved = wait_for(lambda: (lambda r: r if r and r["mode"] == "power_save" else None)(
        http_json(oc, cloud_box, "http://collector:8000/latest").get(device)), "power-save reading", bound=10)
    assert saved["power_w"] < normal["power_w"]  # the device obeyed: its power draw dropped
    notes = wait_for(lambda: [n for n in http_json(oc, cloud_box, "http://notifier:8060/notifications")
                              if n["device"] == device], "notification", bound=10)
    assert notes[0]["action"] == "power_save"
    # every reading lands in the DataLake, partitioned by device and hour
    with tower.client() as c:
        creds = c.get(f"/overclouds/{oid}/datalake/credentials").json()
    listing = in_box(oc, cloud_box, "python3", "-c", (
        "import boto3,sys; s=boto3.client('s3',endpoint_url=sys.argv[1],aws_access_key_id=sys.argv[2],"
        "aws_secret_access_key=sys.argv[3],region_name='us-east-1');"
        "print('\\n'.join(o['Key'] for o in s.list_objects_v2(Bucket=sys.argv[4],Prefix='readings/').get('Contents',[])))"),
        creds["s3_endpoint"], creds["access_key"], creds["secret_key"], creds["buckets"][0])
    assert listing.returncode == 0, listing.stderr
    assert any(k.startswith(f"readings/device={device}/hour=") for k in listing.stdout.split()), listing.stdout
    # the keys the containers got in their environment are shown nowhere
    with tower.client() as c:
        shown = c.get(f"/overclouds/{oid}/services").text + c.get(f"/overclouds/{oid}/services/collector?logs=200").text
    assert creds["secret_key"] not in shown and creds["secret_key"] not in tower.log.read_text()
    # workloads show in the Fabric topology and the detail
    with tower.client() as c:
        topo = c.get(f"/overclouds/{oid}/topology").json()
        detail = c.get(f"/overclouds/{oid}").json()
    placed = {w["replica"] for s in topo["sites"] for b in s["boxes"] for w in b["workloads"]}

    def flows_to_broker():  # clients' connections to the broker's VIP are named after the Service
        with tower.client() as c:
            return [f for f in c.get(f"/overclouds/{oid}/topology").json()["flows"] if f["dst"] == "svc/mqtt"]
    to_broker = wait_for(flows_to_broker, "flows to svc/mqtt", bound=20)
    assert {f["src"] for f in to_broker} >= {broker_box, cloud_box}
    assert {(p["service"], p["port"]) for f in to_broker for p in f["ports"]} == {("mqtt", 1883)}, to_broker

    def served_by_broker():  # the broker's own box names the replica serving port 1883
        with tower.client() as c:
            return [p for f in c.get(f"/overclouds/{oid}/topology").json()["flows"] if f["src"] == broker_box
                    for p in f["ports"] if p["replica"] == "broker-0" and p["port"] == 1883 and p["server"] == broker_box]
    wait_for(served_by_broker, "flows from the broker's box named after broker-0", bound=20)
    assert {"broker-0", "sensors-0", "analyzer-0", "dashboard-0"} <= placed
    assert {s["name"] for s in detail["services"]} == set(svc)
    # the collector's own metrics reach the OverCloud's Prometheus (its config was regenerated
    # when the collector became ready), labelled with the service and the replica
    def scraped():
        with tower.client() as c:
            res = c.get(f"/overclouds/{oid}/metrics", params={"query": f'se_power_watts{{device="{device}"}}'}).json()
        return res["result"]
    series = wait_for(scraped, "collector metrics in Prometheus", bound=20)
    assert series[0]["metric"]["service"] == "collector" and series[0]["metric"]["replica"] == "collector-0"
    # a killed container is restarted and counted
    podman_env = {**os.environ, "CONTAINERS_CONF": str(tower.state_dir / "images" / "containers.conf")}
    kill = subprocess.run(["podman", "kill", f"oc-{oid[:12]}-notifier-0-notifier"], capture_output=True, text=True, env=podman_env)
    assert kill.returncode == 0, kill.stderr
    wait_for(lambda: (lambda s: s["replicas"][0]["restarts"] >= 1 and s["status"] == "READY")(services(tower, oc)["notifier"]),
             "notifier restarted and READY", bound=30)
    # removing the services removes their containers
    for name in list(svc):
        with tower.client() as c:
            assert c.delete(f"/overclouds/{oid}/services/{name}").status_code == 200
    left = subprocess.run(["podman", "ps", "-a", "--filter", f"label=overcloud.io/overcloud={oid}", "--format", "{{.Names}}"],
                          capture_output=True, text=True, env=podman_env)
    assert left.stdout.strip() == ""
    assert services(tower, oc) == {}
    # the image went into the Construction DataLake at this first compose; when Podman loses it
    # (and the host's tar is gone too), the next compose fetches it from there and imports it
    def published():
        rows = json.loads(tower.cli("-o", "json", "images", "list", check=True).stdout)
        return [r for r in rows if r["image"] == IMAGE and r["runtimes"].get("podman", {}).get("published")]
    [row] = wait_for(published, "image cached in the Construction DataLake", bound=60)
    tar = row["runtimes"]["podman"]["tar"]
    content_tag = IMAGE.replace(":latest", f":{row['hash']}")  # what containers run; :latest is an alias
    assert subprocess.run(["podman", "rmi", "-f", IMAGE, content_tag], capture_output=True, env=podman_env).returncode == 0
    os.unlink(tar)
    r = post(tower, oc, WEB, runtime="podman", wait="true", timeout="60")
    assert r.status_code == 201, r.text
    assert Path(tar).exists()
    with tower.client() as c:
        assert c.delete(f"/overclouds/{oid}/services/web").status_code == 200


# A client in box c1 asking the Service by name every 20 ms until told to stop (a file) or
# for at most 120 s / 6000 requests; prints what answered, in order, and every failure.
CLIENT = """
import json, os, sys, time, urllib.request
stop, seen, failed, n = sys.argv[1], [], [], 0
t0 = time.monotonic()
while not os.path.exists(stop) and time.monotonic() - t0 < 120 and n < 6000:
    n += 1
    try:
        who = urllib.request.urlopen("http://web/", timeout=2).read().decode()
        if not seen or seen[-1] != who:
            seen.append(who)
    except Exception as exc:
        failed.append(repr(exc))
    time.sleep(0.02)
print(json.dumps({"requests": n, "seen": seen, "failed": failed}))
"""


def put(tower, oc, body, **params):
    with tower.client() as c:
        return c.put(f"/overclouds/{oc['overcloud_ID']}/services", content=body, params=params,
                     headers={"Content-Type": "application/yaml"}, timeout=180)


def version(n: int, replicas: int = 1, command: str | None = None) -> str:
    """WEB with env VERSION=n (a changed pod template), ``replicas``, and maybe another command."""
    text = WEB.replace("replicas: 1", f"replicas: {replicas}").replace(
        "imagePullPolicy: Never", f"imagePullPolicy: Never\n          env: [{{name: VERSION, value: '{n}'}}]")
    if command:
        text = "\n".join(f"          command: {command}" if line.strip().startswith("command:") else line
                         for line in text.splitlines())
    return text


def test_apply_rolls_out_a_changed_template_without_losing_the_service(tower, oc, tmp_path):
    oid = oc["overcloud_ID"]
    assert put(tower, oc, version(1), runtime="process", wait="true", timeout="30").status_code == 200  # creates
    assert services(tower, oc)["web"]["replicas"][0]["name"] == "web-0"
    # the same pattern again changes nothing
    same = put(tower, oc, version(1), runtime="process").json()
    assert same["actions"]["web"]["action"] == "unchanged"
    # the plan of a changed template: which fields, the next generation; nothing changes yet
    path = tmp_path / "v2.yaml"
    path.write_text(version(2))
    plan = json.loads(tower.cli("-o", "json", "apply", oid, str(path), "--dry-run", check=True).stdout)
    assert plan["actions"]["web"]["action"] == "update" and plan["actions"]["web"]["generation"] == 2
    assert plan["actions"]["web"]["changed"] == ["containers[web].env"], plan["actions"]
    assert [r["name"] for r in services(tower, oc)["web"]["replicas"]] == ["web-0"]

    stop = tmp_path / "stop"
    client = subprocess.Popen(["ip", "netns", "exec", handle(oc, "c1"), "python3", "-c", CLIENT, str(stop)],
                              stdout=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: get_text(oc, "c1", "http://web/") == "web-0", "the client's first answer", bound=10)
        # v2, one replica: a second one starts beside it (the other edge box), then the old one stops
        r = put(tower, oc, version(2), wait="true", timeout="60")
        assert r.status_code == 200 and r.json()["services"][0]["status"] == "READY", r.text
        web = services(tower, oc)["web"]
        assert [(x["name"], x["generation"]) for x in web["replicas"]] == [("web-1", 2)] and web["generation"] == 2
        assert web["replicas"][0]["box"] != "c1" and web["replicas"][0]["site"] == "local-b"
        # v3 and two replicas: one more fits beside, the other needs an old one's box (port 8070)
        r = put(tower, oc, version(3, replicas=2), wait="true", timeout="60")
        assert r.json()["actions"]["web"]["action"] == "update", r.text
        web = services(tower, oc)["web"]
        assert web["status"] == "READY" and {x["generation"] for x in web["replicas"]} == {3}
        assert {x["box"] for x in web["replicas"]} == {"c3", "c4"}
    finally:
        stop.touch()
        out, _ = client.communicate(timeout=30)
    seen = json.loads(out)
    # every request was answered, first by the old replicas, then by the new ones
    assert seen["failed"] == [] and seen["requests"] > 20, seen
    assert seen["seen"][0] == "web-0" and "web-1" in seen["seen"] and set(seen["seen"][-2:]) <= {"web-2", "web-3"}, seen

    # a template whose container exits: the rollout stops at the first new replica, the other
    # old one keeps serving, and the service says what it waits for
    broken = put(tower, oc, version(4, replicas=2, command='[sh, -c, "exit 3"]'))
    assert broken.status_code == 202, broken.text
    stuck = wait_for(lambda: (lambda s: s if s["status"] == "UPDATING" and any(
        x["generation"] == 4 and x["restarts"] >= 1 for x in s["replicas"]) else None)(services(tower, oc)["web"]),
        "the broken replica retried", bound=30)
    assert "waiting for web-" in stuck["message"], stuck
    [survivor] = [x["name"] for x in stuck["replicas"] if x["generation"] == 3]
    assert {get_text(oc, "c1", "http://web/") for _ in range(3)} == {survivor}
    # applying a good template again replaces the broken replica first
    r = put(tower, oc, version(3, replicas=2), wait="true", timeout="60")
    assert r.status_code == 200, r.text
    web = services(tower, oc)["web"]
    assert web["status"] == "READY" and web["generation"] == 5 and {x["generation"] for x in web["replicas"]} == {5}
    with tower.client() as c:
        stream = c.get(f"/overclouds/{oid}/events", timeout=30).text
        assert c.delete(f"/overclouds/{oid}/services/web").status_code == 200
    events = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: ")]
    assert {e.get("rolled_out") for e in events if e.get("name") == "web"} >= {2, 3, 5}, events


HANG = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: hang}
spec:
  replicas: 1
  selector: {matchLabels: {app: hang}}
  template:
    metadata: {labels: {app: hang}}
    spec:
      containers:
        - name: hang
          image: IMAGE
          imagePullPolicy: Never
          # accepts connections and never answers: its HTTP probe waits out timeoutSeconds
          command: [python3, -c, "import socket\\ns = socket.create_server(('0.0.0.0', 8090))\\nheld = []\\nwhile True: held.append(s.accept()[0])"]
          ports: [{containerPort: 8090}]
          readinessProbe: {httpGet: {path: /, port: 8090}, periodSeconds: 1, timeoutSeconds: 30}
""".replace("IMAGE", IMAGE)


def test_a_hanging_probe_does_not_hold_up_other_services(tower, oc):
    """Probes run beside the controller: one waiting out a 30 s timeout does not delay the
    readiness of anything else."""
    oid = oc["overcloud_ID"]
    assert post(tower, oc, HANG, runtime="process").status_code == 202
    wait_for(lambda: services(tower, oc)["hang"]["replicas"][0]["state"] == "STARTING", "hang started", bound=20)
    r = post(tower, oc, WEB, runtime="process", wait="true", timeout="15")
    assert r.status_code == 201, r.text  # READY while hang's probe is still waiting
    hang = services(tower, oc)["hang"]
    assert hang["status"] == "STARTING" and not hang["replicas"][0]["ready"]
    with tower.client() as c:
        for name in ("web", "hang"):
            assert c.delete(f"/overclouds/{oid}/services/{name}").status_code == 200


def test_process_runtime_stitching_restart_and_replacement(tower, oc):
    oid = oc["overcloud_ID"]
    r = post(tower, oc, WEB, runtime="process", wait="true", timeout="30")
    assert r.status_code == 201, r.text
    web = services(tower, oc)["web"]
    first = web["replicas"][0]
    assert first["site"] == "local-b" and web["runtime"] == "process"
    # a client in the other site reaches the Service by name: its VIP, port 80 -> replicas' 8070
    vip = web["services"][0]["vip"]
    assert vip.startswith("198.18.") and in_box(oc, "c1", "getent", "hosts", "web").stdout.split()[0] == vip
    assert get_text(oc, "c1", "http://web/") == "web-0"
    # its process killed: supervisord starts it again, the restart is counted
    sup = _rpc_proxy(Path("/run/overcloud") / f"{handle(oc, first['box'])}.sock").supervisor
    pid = sup.getProcessInfo("w-web-0-web")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (lambda s: s["replicas"][0]["restarts"] >= 1 and s["status"] == "READY")(services(tower, oc)["web"]),
             "web restarted", bound=30)
    # scaled to 2: the second replica needs the other edge box (port 8070 is taken on the first)
    r = tower.cli("scale", oid, "web", "2", check=True)
    assert "web-1@" in r.stdout
    two = wait_for(lambda: (lambda s: s if s["status"] == "READY" and len(s["replicas"]) == 2 else None)(
        services(tower, oc)["web"]), "two web replicas", bound=30)
    assert {x["box"] for x in two["replicas"]} == {"c3", "c4"}
    # requests to the one name are spread over both replicas
    assert {get_text(oc, "c1", "http://web/") for _ in range(6)} == {"web-0", "web-1"}
    with tower.client() as c:
        r = c.patch(f"/overclouds/{oid}/services/web", json={"replicas": 3})
        assert r.status_code == 422 and "port 8070 is taken" in r.json()["message"], r.text
        assert c.patch(f"/overclouds/{oid}/services/web", json={"replicas": 1}).json()["removed"] == [f"web-1@{two['replicas'][1]['box']}"]
    # its box's supervisord killed: the replica moves to the other edge box within 30 s
    sup_pid = sup.getPID()
    os.kill(sup_pid, signal.SIGKILL)
    moved = wait_for(lambda: (lambda s: s if s["status"] == "READY" and s["replicas"][0]["box"] != first["box"] else None)(
        services(tower, oc)["web"]), "web re-placed", bound=30)
    new = moved["replicas"][0]
    assert new["site"] == "local-b"
    assert in_box(oc, "c1", "getent", "hosts", "web").stdout.split()[0] == vip  # the name keeps its VIP
    assert wait_for(lambda: get_text(oc, "c1", "http://web/") == "web-0", "the VIP leads to the moved replica", bound=10)
    with tower.client() as c:
        assert c.delete(f"/overclouds/{oid}/services/web").status_code == 200
        assert c.get(f"/overclouds/{oid}/services/web").status_code == 404
    assert in_box(oc, "c1", "getent", "hosts", "web").returncode != 0

