"""Reaching services from where the user is (issue 11, point 6), on the local UnderCloud:
a NodePort Service is published on its replica's box's site address and answers the Tower's
machine there; a ClusterIP Service and every other port of a box are not reachable from the
site network; another OverCloud's boxes do not reach it through the overlay; bad nodePorts
are 422 naming the field; deleting the Service takes the publication away (refused). The
DataLake's S3, and only S3, is published on the Post's site address: S3 with the OverCloud's
keys works from here, anonymous requests are refused, the filer, master and volume ports are
not reachable there."""

from __future__ import annotations

import socket
import subprocess

import boto3
import botocore.config
import botocore.exceptions
import httpx
import pytest
from towers import wait_for

pytestmark = pytest.mark.slow
IMAGE = "localhost/overcloud/smart-energy:latest"
from test_services import SMART  # noqa: E402
from test_services import WEB as WEB_CLUSTER_IP  # noqa: E402

# test_services' web Deployment and Service, the Service made a NodePort (no nodePort asked:
# a free one), plus a ClusterIP Service onto the replica's own port
WEB = WEB_CLUSTER_IP.replace("metadata: {name: web}\nspec:\n  selector:",
                             "metadata: {name: web}\nspec:\n  type: NodePort\n  selector:") + """---
apiVersion: v1
kind: Service
metadata: {name: web-internal}
spec:
  selector: {app: web}
  ports: [{port: 8070}]
"""
assert "type: NodePort" in WEB

API = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  replicas: 1
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers:
        - name: api
          image: IMAGE
          imagePullPolicy: Never
          command: [python3, -m, http.server, "8090"]
          ports: [{containerPort: 8090}]
          resources: {requests: {cpu: 50m, memory: 32Mi}}
---
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  type: NodePort
  selector: {app: api}
  ports: [{port: 8090, nodePort: NODEPORT}]
""".replace("IMAGE", IMAGE)


@pytest.fixture(scope="module")
def ocs(tower):
    tower.cli("images", "build", str(SMART), "--runtime", "process", check=True, timeout=600)
    a = tower.create_two_site(1, 1)
    with tower.client() as c:  # a second OverCloud, as small as it gets
        b = c.post("/overclouds", params={"wait": "true"}, timeout=240, json={
            "sites": [{"undercloud": "local-a", "clusters": 1, "size": "small", "post": True}],
            "datalake": {"enabled": False}, "fabric": {"enabled": False}}).json()
    assert b["status"] == "READY", b
    yield a, b
    for d in (a, b):
        assert tower.delete_and_wait(d["overcloud_ID"])["status"] == "DELETED"


def compose(tower, oc, body: str, method: str = "POST"):
    with tower.client() as c:
        return c.request(method, f"/overclouds/{oc['overcloud_ID']}/services", content=body, timeout=180,
                         params={"runtime": "process", "wait": "true", "timeout": "60"},
                         headers={"Content-Type": "application/yaml"})


def service(tower, oc, name: str) -> dict:
    with tower.client() as c:
        return c.get(f"/overclouds/{oc['overcloud_ID']}/services/{name}").json()


def connects(addr: str, port: int, timeout: float = 1.5) -> str:
    """From this host (the Tower's machine): 'open', 'refused' or 'timeout'."""
    try:
        socket.create_connection((addr, port), timeout=timeout).close()
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "timeout"


def in_box(oc, box: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", f"oc-{oc['overcloud_ID'][:8]}-{box}", *argv],
                          capture_output=True, text=True, timeout=15)


def test_a_nodeport_is_reached_from_the_host_and_nothing_else_is(tower, ocs):
    a, b = ocs
    r = compose(tower, a, WEB)
    assert r.status_code == 201, r.text
    web = service(tower, a, "web")
    [published] = [s for s in web["services"] if s["name"] == "web"]
    [internal] = [s for s in web["services"] if s["name"] == "web-internal"]
    box = next(x for x in [a["post"], *a["clusters"]] if x["name"] == web["replicas"][0]["box"])
    node_port = published["node_ports"][0]
    assert published["type"] == "NodePort" and 30000 <= node_port <= 32767  # none asked: a free one
    assert published["urls"] == [f"http://{box['address']}:{node_port}"]
    assert internal["type"] == "ClusterIP" and internal["urls"] == [] and "node_ports" not in internal
    # the printed URL answers from this host, served by the replica
    got = httpx.get(published["urls"][0], timeout=5, trust_env=False)
    assert got.status_code == 200 and got.text == "web-0"
    # the ClusterIP Service's endpoint (the replica's own port) is not reachable from the site network,
    # nor is any other port of the box (its supervisord's health 9001, node-exporter 9100)
    for port in (8070, 9001, 9100):
        assert connects(box["address"], port) == "timeout", port
    # a second OverCloud's box cannot reach the NodePort, nor the replica, through the overlay
    probe = ("import socket,sys\nfor a in sys.argv[1:]:\n h,p=a.rsplit(':',1)\n"
             " try: socket.create_connection((h,int(p)),timeout=1.5).close(); print(a,'open')\n"
             " except OSError as e: print(a,'closed')\n")
    # nor at the box's site address, which the host would route to it from another bridge: a
    # published port is for where the user is (the host), not for other OverClouds' boxes
    targets = [f"{box['overlay_address']}:{node_port}", f"{box['overlay_address']}:8070", f"{published['vip']}:80",
               f"{box['address']}:{node_port}"]
    out = in_box(b, b["clusters"][0]["name"], "python3", "-c", probe, *targets)
    assert out.returncode == 0 and out.stdout.split() == [w for t in targets for w in (t, "closed")], out
    # the same pattern applied again keeps its nodePort (and changes nothing)
    again = compose(tower, a, WEB, method="PUT")
    assert again.status_code == 200 and again.json()["actions"]["web"]["action"] == "unchanged", again.text
    assert service(tower, a, "web")["services"][0]["node_ports"] == [node_port]
    # deleting the Service takes the publication away: refused at once
    with tower.client() as c:
        assert c.delete(f"/overclouds/{a['overcloud_ID']}/services/web").status_code == 200
    assert connects(box["address"], node_port) == "refused"


@pytest.mark.parametrize("node_port,words", [("29999", "from 30000 to 32767"), ("TAKEN", "already published by Service/web")])
def test_bad_nodeports_are_refused_naming_the_field(tower, ocs, node_port, words):
    a, _ = ocs
    if node_port == "TAKEN":
        r = compose(tower, a, WEB)
        assert r.status_code in (201, 409), r.text
        node_port = str(service(tower, a, "web")["services"][0]["node_ports"][0])
    r = compose(tower, a, API.replace("NODEPORT", node_port))
    assert r.status_code == 422, r.text
    body = r.json()
    assert (body["manifest"], body["field"]) == ("Service/api", "spec.ports[0].nodePort") and words in body["message"], body
    with tower.client() as c:
        assert "api" not in {s["name"] for s in c.get(f"/overclouds/{a['overcloud_ID']}/services").json()}
        c.delete(f"/overclouds/{a['overcloud_ID']}/services/web")  # the boxes' ports free for the next test


def test_the_datalake_s3_alone_is_published_on_the_posts_site_address(tower, ocs):
    a, _ = ocs
    oid = a["overcloud_ID"]
    with tower.client() as c:
        detail = c.get(f"/overclouds/{oid}").json()
        creds = c.get(f"/overclouds/{oid}/datalake/credentials").json()
    post = a["post"]["address"]
    url = detail["datalake"]["published"]["s3"]
    assert url == f"http://{post}:8333"
    s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id=creds["access_key"],
                      aws_secret_access_key=creds["secret_key"], region_name="us-east-1",
                      config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                                    connect_timeout=3, read_timeout=10))
    bucket = creds["buckets"][0]
    s3.put_object(Bucket=bucket, Key="from-the-host.txt", Body=b"hello from the Tower's machine")
    assert s3.get_object(Bucket=bucket, Key="from-the-host.txt")["Body"].read() == b"hello from the Tower's machine"
    # anonymous requests are refused
    for method, path in (("GET", f"/{bucket}/from-the-host.txt"), ("GET", f"/{bucket}"), ("GET", "/"),
                         ("PUT", f"/{bucket}/anon.txt")):
        r = httpx.request(method, url + path, content=b"x" if method == "PUT" else None, timeout=5, trust_env=False)
        assert r.status_code == 403, (method, path, r.status_code, r.text[:200])
    # wrong keys too
    bad = boto3.client("s3", endpoint_url=url, aws_access_key_id=creds["access_key"], aws_secret_access_key="x" * 40,
                       region_name="us-east-1", config=botocore.config.Config(s3={"addressing_style": "path"},
                                                                             retries={"max_attempts": 1}))
    with pytest.raises(botocore.exceptions.ClientError):
        bad.get_object(Bucket=bucket, Key="from-the-host.txt")
    # the filer, the master and the volume servers are not reachable on site addresses
    for port in (8888, 9333, 8080, 18888, 19333, 18080):
        assert connects(post, port) == "timeout", port
    for box in a["clusters"]:
        assert connects(box["address"], 8080) == "timeout", box
    s3.delete_object(Bucket=bucket, Key="from-the-host.txt")


def test_overcloud_demo_prints_the_published_urls(tower, ocs):
    a, _ = ocs
    oid = a["overcloud_ID"]
    # a dashboard already composed (demo then only prints): the web pattern under that name
    dash = WEB.replace("name: web}", "name: dashboard}").replace("app: web", "app: dashboard") \
              .replace("[{port: 80, targetPort: http}]", "[{port: 80, targetPort: http, nodePort: 30850}]")
    dash = dash.split("---\napiVersion: v1\nkind: Service\nmetadata: {name: web-internal}")[0]
    # a container port of its own, whatever earlier tests left composed (a whole-suite run before
    # the bad-nodePort test freed its Service: 422 "port 8070 is taken on every box in site local-b")
    dash = dash.replace("8070", "8071")
    r = compose(tower, a, dash)
    assert r.status_code == 201, r.text
    [url] = service(tower, a, "dashboard")["services"][0]["urls"]
    out = tower.cli("demo", oid, "--pattern", str(SMART), check=True, timeout=600).stdout
    assert f"dashboard      {url}/" in out, out
    assert f"http://{a['post']['address']}:8333" in out, out
    assert httpx.get(url, timeout=5, trust_env=False).text == "dashboard-0"
    # the OverCloud's detail and `overcloud show` say what is published too
    with tower.client() as c:
        listed = {s["name"]: s["urls"] for s in c.get(f"/overclouds/{oid}").json()["services"]}
    assert listed["dashboard"] == [url]
    shown = tower.cli("show", oid, check=True).stdout
    assert f"published  dashboard      {url}" in shown and f"datalake S3    http://{a['post']['address']}:8333" in shown, shown
    with tower.client() as c:
        assert c.delete(f"/overclouds/{oid}/services/dashboard").status_code == 200
