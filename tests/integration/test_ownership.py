"""Two Towers on one host, with different state dirs and the SAME bridges and sites (issue 10.6):
they never hand out the same address, and neither one's sweep, nor its restart, touches the
other's OverClouds — namespaces, links, nftables tables, cgroups, /etc/netns and Podman
containers included."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from kernel import leftovers
from towers import TowerProcess, local_host, wait_for

from overcloud.composition.images import HOST_CACHE, content_hash, tar_name
from overcloud.config import tower_identity
from overcloud.underclouds.base import BoxSpec, resolve_flavor

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SMART = ROOT / "patterns" / "smart_energy"
IMAGE = "localhost/overcloud/smart-energy:latest"
# one set of sites for both Towers (their own: no other test uses these bridges)
SHARED_SITES = [
    {"name": "local-a", "kind": "local", "bridge": "oct-e", "cidr": "10.213.114.0/24", "labels": {"overcloud.io/tier": "cloud"}},
    {"name": "local-b", "kind": "local", "bridge": "oct-f", "cidr": "10.213.115.0/24", "labels": {"overcloud.io/tier": "edge"}},
]
SHARED_OVERLAY = "10.253.0.0/16"
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
      containers:
        - name: web
          image: IMAGE
          imagePullPolicy: Never
          command: [python3, -m, http.server, "8070"]
          ports: [{containerPort: 8070, name: http}]
          resources: {requests: {cpu: 50m, memory: 32Mi}}
          readinessProbe: {tcpSocket: {port: 8070}, periodSeconds: 1}
""".replace("IMAGE", IMAGE)


class Side:
    """One Tower with one READY OverCloud running a Podman workload."""

    def __init__(self, tower: TowerProcess):
        self.tower = tower
        self.id = tower_identity(tower.state_dir)
        self.oc: dict = {}

    @property
    def oid(self) -> str:
        return self.oc["overcloud_ID"]

    def handle(self, box: str) -> str:
        return f"oc-{self.oid[:8]}-{box}"

    def detail(self) -> dict:
        with self.tower.client() as c:
            return c.get(f"/overclouds/{self.oid}").json()

    def web(self) -> dict:
        with self.tower.client() as c:
            return c.get(f"/overclouds/{self.oid}/services/web").json()

    def containers(self) -> dict[str, str]:
        """{container id: "<status> since <start>"} of this OverCloud's containers, from Podman."""
        for _ in range(10):  # a container listed may be gone before it is inspected (replaced): list again
            ids = subprocess.run(["podman", "ps", "-a", "-q", "--no-trunc", "--filter", f"label=overcloud.io/overcloud={self.oid}"],
                                 capture_output=True, text=True, check=True).stdout.split()
            if not ids:
                return {}
            r = subprocess.run(["podman", "inspect", "--format", "{{.Id}} {{.State.Status}} since {{.State.StartedAt}}", *ids],
                               capture_output=True, text=True)
            if r.returncode == 0:
                return dict(line.split(" ", 1) for line in r.stdout.splitlines())
            time.sleep(0.2)
        raise AssertionError(f"podman inspect kept failing for this OverCloud's containers: {r.stderr.strip()}")

    def serves(self) -> bool:
        """The workload answers from the Post, across the shared bridge (VXLAN over it)."""
        d = self.detail()
        box = next(b for b in d["clusters"] if b["name"] == self.web()["replicas"][0]["box"])
        url = f"http://{box['overlay_address']}:8070/"
        r = subprocess.run(["ip", "netns", "exec", self.handle("p0"), "python3", "-c",
                            f"import urllib.request; urllib.request.urlopen({url!r}, timeout=3).read()"],
                           capture_output=True, text=True, timeout=15)
        return r.returncode == 0

    def snapshot(self) -> dict:
        """What the host holds of this OverCloud: netns, links, cgroups, /etc/netns, sockets,
        box dirs, leases, containers (not processes: probes come and go), each box's nftables
        tables, and the containers' ids and states (a container started again has a new id)."""
        left = sorted(x for x in leftovers(self.oid, self.tower.state_dir) if not x.startswith("process "))
        tables = {}
        for b in [self.detail()["post"], *self.detail()["clusters"]]:
            h = self.handle(b["name"])
            tables[h] = subprocess.run(["ip", "netns", "exec", h, "nft", "list", "tables"], capture_output=True,
                                       text=True).stdout.split("\n")
        return {"left": left, "tables": tables, "containers": self.containers()}


def _setup(side: Side) -> None:
    t = side.tower
    t.cli("images", "build", str(SMART), "--runtime", "podman", check=True, timeout=600)
    with t.client() as c:
        side.oc = c.post("/overclouds", json={"provider": "local", "number": "1", "size": "small"},
                         params={"wait": "true"}, timeout=240).json()
        assert side.oc["status"] == "READY", side.oc.get("error")
        r = c.post(f"/overclouds/{side.oid}/services", content=WEB, params={"runtime": "podman", "wait": "true", "timeout": "60"},
                   headers={"Content-Type": "application/yaml"}, timeout=180)
        logs = {f.name: f.read_text()[-600:] for f in (t.state_dir / "local" / "boxes").glob("*/logs/w-web-*.log")}
        assert r.status_code == 201, (r.text, logs)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    root = tmp_path_factory.mktemp("ownership")
    a = Side(TowerProcess(root / "a", sites=SHARED_SITES, overlay=SHARED_OVERLAY))
    b = Side(TowerProcess(root / "b", sites=SHARED_SITES, overlay=SHARED_OVERLAY))
    try:
        a.tower.start()
        b.tower.start()
        _setup(a)
        _setup(b)
        yield a, b
    finally:
        # delete on both first: a Tower tears its sites down only once no box is on the bridges
        for s in (a, b):
            if s.oc and s.tower.proc is not None and s.tower.proc.poll() is None:
                s.tower.delete_and_wait(s.oid)
        a.tower.cleanup()
        b.tower.cleanup()


def test_two_towers_on_the_same_bridges_share_no_address(two):
    a, b = two
    da, db = a.detail(), b.detail()
    addresses = lambda d: {d["devops_post"], *d["logical_cluster"]}  # noqa: E731
    assert not addresses(da) & addresses(db), (addresses(da), addresses(db))
    assert da["overlay"]["vni"] != db["overlay"]["vni"] and da["overlay"]["subnet"] != db["overlay"]["subnet"]
    assert a.id != b.id
    assert a.serves() and b.serves()


def test_each_sweep_spares_the_other_towers_overclouds(two):
    a, b = two
    # an orphan of A's own: a box, and a container labelled as A's, of an OverCloud A does not know
    orphan = uuid.uuid4().hex
    local_host(a.tower.state_dir, SHARED_SITES, SHARED_OVERLAY).site("local-b").acquire(
        [BoxSpec(orphan, "c1", "cluster", "local-b", resolve_flavor("small"))])
    subprocess.run(["podman", "run", "-d", "--name", f"oc-{orphan[:12]}-x", "--network", "none", "--pull", "never",
                    "--label", f"overcloud.io/overcloud={orphan}", "--label", f"overcloud.io/tower={a.id}",
                    IMAGE, "sleep", "600"], check=True, capture_output=True,
                   env={**os.environ, "CONTAINERS_CONF": str(a.tower.state_dir / "images" / "containers.conf")})
    assert any(x.startswith("container ") for x in leftovers(orphan, a.tower.state_dir))
    before_a, before_b = a.snapshot(), b.snapshot()
    assert any(x.startswith("container ") for x in before_b["left"]) and all(v.startswith("running ") for v in before_b["containers"].values())

    listed = json.loads(a.tower.cli("-o", "json", "sweep", check=True).stdout)
    assert {r["overcloud_id"] for r in listed} == {orphan}, listed
    assert {"netns", "veth", "cgroup", "container"} <= {r["kind"] for r in listed}
    assert json.loads(b.tower.cli("-o", "json", "sweep", check=True).stdout) == []  # A's are not B's orphans

    a.tower.cli("sweep", "--yes", check=True)
    assert leftovers(orphan, a.tower.state_dir) == []
    b.tower.cli("sweep", "--yes", check=True)  # nothing of B's to sweep, and nothing of A's
    assert b.snapshot() == before_b
    assert a.snapshot() == before_a
    for s in (a, b):
        assert s.detail()["status"] == "READY" and s.web()["status"] == "READY"
        assert s.serves()


def test_a_tower_restarting_leaves_the_other_towers_overclouds_alone(two):
    a, b = two
    for restarting, other, how in ((a, b, "kill9"), (b, a, "stop")):
        before = other.snapshot()
        getattr(restarting.tower, how)()
        restarting.tower.start()
        wait_for(lambda: restarting.web()["status"] == "READY", "the workload READY after its Tower's restart", bound=60)
        assert other.snapshot() == before, "the other Tower's containers, namespaces or cgroups changed"
        assert other.serves() and restarting.serves()


def test_another_state_dirs_build_of_the_same_image_name_does_not_change_what_runs(two, tmp_path):
    """`overcloud images build` from a third state dir, of an image with A's name but other
    content, moves the host's ``:latest``; A's containers run A's build by content hash, so a
    container of A's started again runs what A built (its rootfs here has no python3 at all)."""
    a, _ = two
    podman_env = {**os.environ, "CONTAINERS_CONF": str(a.tower.state_dir / "images" / "containers.conf")}
    [mine] = [r for r in json.loads(a.tower.cli("-o", "json", "images", "list", check=True).stdout) if r["image"] == IMAGE]
    other_dir = tmp_path / "pattern" / "images" / "smart-energy"
    shutil.copytree(SMART / "images" / "smart-energy", other_dir)
    (other_dir / "src" / "another_build.py").write_text("# another state dir's build of the same name\n")
    other_hash = content_hash(other_dir)
    # its rootfs tar, placed in the host cache where the build looks first (no mirror needed)
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "rootfs" / "hello").write_text("not a python image\n")
    tar = HOST_CACHE / tar_name("smart-energy", other_hash)
    subprocess.run(["tar", "-C", str(tmp_path / "rootfs"), "-cf", str(tar), "hello"], check=True)
    third = TowerProcess(tmp_path / "c", sites=SHARED_SITES, overlay=SHARED_OVERLAY)  # its CLI only
    try:
        third.cli("images", "build", str(tmp_path / "pattern"), "--runtime", "podman", check=True, timeout=300)
        latest = subprocess.run(["podman", "image", "inspect", "--format", '{{index .Labels "overcloud.io/hash"}}', IMAGE],
                                capture_output=True, text=True, env=podman_env).stdout.strip()
        assert latest == other_hash  # the third state dir's build is the host's :latest now
        rebuilt = json.loads(a.tower.cli("-o", "json", "images", "build", str(SMART), "--runtime", "podman", check=True).stdout)
        assert [r["built"] for r in rebuilt] == [False]  # A's build is still there: nothing to redo

        before = a.containers()
        [name] = subprocess.run(["podman", "ps", "--filter", f"label=overcloud.io/overcloud={a.oid}", "--format", "{{.Names}}"],
                                capture_output=True, text=True, check=True).stdout.split()
        subprocess.run(["podman", "kill", name], capture_output=True, env=podman_env)
        wait_for(lambda: (c := a.containers()) and c.keys() != before.keys() and
                 all(v.startswith("running ") for v in c.values()), "A's container started again", bound=60)
        image = subprocess.run(["podman", "inspect", "--format", "{{.ImageName}}", name], capture_output=True, text=True,
                               env=podman_env).stdout.strip()
        assert image == IMAGE.replace(":latest", f":{mine['hash']}")
        wait_for(a.serves, "A's workload answers again, from A's own build", bound=60)
    finally:
        tar.unlink(missing_ok=True)
        # give :latest back to the build the other tests and benchmarks use, then drop the other
        subprocess.run(["podman", "tag", IMAGE.replace(":latest", f":{mine['hash']}"), IMAGE], capture_output=True, env=podman_env)
        subprocess.run(["podman", "rmi", IMAGE.replace(":latest", f":{other_hash}")], capture_output=True, env=podman_env)
