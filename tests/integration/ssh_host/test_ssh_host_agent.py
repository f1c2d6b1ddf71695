"""The host agent as a remote host runs it: the bundle installed by hostprep, run by Debian's
/usr/bin/python3 (-I -S, empty environment), never the venv. hello (also with the venv and
our source tree hidden in a private mount namespace), a make-box / destroy-box round trip on a
test bridge, resuming a make-box killed with -9, sweep, and bad input answered as JSON.

Own bridge, CIDRs and names (ocsbh, 10.213.232.0/24, overlay 10.250.232.0/24, site sbh-a),
so it never touches another test's or a running Tower's sites. Needs root."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import overcloud
from overcloud.underclouds.local import box_handle, net
from overcloud.underclouds.ssh import hostprep

pytestmark = [pytest.mark.root, pytest.mark.timeout(240)]

BRIDGE = "ocsbh"
SITE = {"name": "sbh-a", "bridge": BRIDGE, "cidr": "10.213.232.0/24"}
OVERLAY = "10.250.232.0/24"


@pytest.fixture(scope="module")
def host(artifact, runner, tmp_path_factory, agent):
    """The bundle installed into a temporary host root; the site made there by the agent;
    everything the Tower id made swept and the site torn down afterwards."""
    root = tmp_path_factory.mktemp("host-root")
    tower_id = secrets.token_hex(8)
    installed = hostprep.install_bundle(runner, artifact.path, artifact.sha256, tower_id=tower_id, root=str(root))
    print(f"\ninstall {installed.seconds:.3f}s")
    base = {"tower_id": tower_id, "sites": [SITE], "overlay_cidr": OVERLAY, "max_boxes": 8}

    def call(op: str, req: dict | bytes | None = None, **kw):
        body = req if isinstance(req, bytes) else {**base, **(req or {})}
        return agent(runner, installed.path, op, body, **kw)

    t0 = time.perf_counter()
    status, answer, err = call("ensure-site")
    print(f"ensure-site {time.perf_counter() - t0:.3f}s")
    assert status == 0 and answer["ok"], (answer, err)
    yield call, installed, root, tower_id
    status, answer, _ = call("list-tagged")
    left = {r["overcloud_id"] for r in answer["result"].get("resources", [])}
    if left:
        call("sweep", {"overcloud_ids": sorted(left)})
    status, answer, err = call("teardown-site")
    assert status == 0 and answer["ok"], (answer, err)
    assert not Path(f"/sys/class/net/{BRIDGE}").exists()


def spec(oc: str, name: str = "c1", size: str = "small") -> dict:
    return {"overcloud_id": oc, "name": name, "role": "cluster", "site": SITE["name"], "size": size}


def test_hello_runs_on_debians_python_without_the_venv(host, runner, agent, make_runner):
    """With the venv and our source tree hidden (tmpfs over them, in a mount namespace of its
    own), hello still answers: everything comes from the installed bundle."""
    _, installed, _, _ = host
    src = str(Path(overcloud.__file__).resolve().parents[1])
    hide = f"mount -t tmpfs none {sys.prefix} && mount -t tmpfs none {src} && exec \"$@\""
    hidden = make_runner(runner.cwd, ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh"])
    t0 = time.perf_counter()
    status, answer, err = agent(hidden, installed.path, "hello")
    print(f"\nhello {time.perf_counter() - t0:.3f}s")
    assert status == 0 and answer["ok"], (answer, err)
    assert answer["result"]["executable"] == "/usr/bin/python3" and answer["result"]["python"] >= "3.11"
    assert answer["result"]["bundle"]["sha256"] == installed.sha256 and answer["result"]["bundle"]["unpacked"]
    assert set(answer["result"]["bundle"]["distributions"]) == {"pyroute2", "supervisor"}
    for name, origin in answer["result"]["modules"].items():
        assert origin and origin.startswith(installed.path + "/"), (name, origin)
    assert answer["result"]["os"]["id"] == "debian" and int(answer["result"]["os"]["version_id"]) >= 12
    caps = answer["result"]["capabilities"]
    assert set(caps) == {"wireguard_kernel", "wireguard_go", "cgroup_v2", "cap_net_admin"} and caps["cap_net_admin"]
    probe = subprocess.run(["ip", "link", "add", "ocwgt-hello", "type", "wireguard"], capture_output=True).returncode == 0
    if probe:
        subprocess.run(["ip", "link", "del", "ocwgt-hello"], capture_output=True)
    assert caps["wireguard_kernel"] is probe  # False here: this kernel has none (FACTS.md)
    assert answer["result"]["cpus"] >= 1 and 0 < answer["result"]["memory_mb"]["available"] <= answer["result"]["memory_mb"]["total"]
    assert os.path.isdir(sys.prefix)  # hidden only in that namespace


def _pids_of(handle: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", handle], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _nothing_left(handle: str) -> list[str]:
    left = []
    if os.path.exists(f"/run/netns/{handle}"):
        left.append("netns")
    if subprocess.run(["ip", "link", "show", net.host_veth_name(handle)], capture_output=True).returncode == 0:
        left.append("veth")
    if os.path.exists(f"/etc/netns/{handle}"):
        left.append("/etc/netns")
    return left


def test_make_and_destroy_a_box(host):
    call, installed, root, tower_id = host
    oc = uuid.uuid4().hex
    t0 = time.perf_counter()
    status, answer, err = call("make-box", {"specs": [spec(oc)]})
    print(f"\nmake-box {time.perf_counter() - t0:.3f}s")
    assert status == 0 and answer["ok"], (answer, err)
    [box] = answer["result"]["boxes"]
    handle = box_handle(oc, "c1")
    assert box["handle"] == handle and box["address"].startswith("10.213.232.") and box["site"] == "sbh-a"
    assert box["extra"]["box_dir"] == str(root / tower_id / "boxes" / handle)
    assert os.path.exists(f"/run/netns/{handle}")
    # the box's supervisord is the bundle's, run by Debian's python3
    sup = [p for p in _pids_of(handle) if "supervisord" in _cmdline(p)]
    assert sup and _cmdline(sup[0]).startswith(f"/usr/bin/python3 -IS {installed.path}/bin/supervisord -c "), _cmdline(sup[0])
    r = subprocess.run(["ip", "netns", "exec", handle, "ip", "-4", "-o", "addr", "show", "eth0"], capture_output=True, text=True)
    assert f"{box['address']}/24" in r.stdout

    status, again, err = call("make-box", {"specs": [spec(oc)]})  # idempotent: the same box
    assert status == 0 and again["result"]["boxes"] == answer["result"]["boxes"], (again, err)
    status, tagged, _ = call("list-tagged", {"overcloud_id": oc})
    kinds = {r["kind"] for r in tagged["result"]["resources"]}
    assert {"netns", "veth", "cgroup", "lease", "statedir", "process"} <= kinds, kinds

    t0 = time.perf_counter()
    status, gone, err = call("destroy-box", {"boxes": answer["result"]["boxes"]})
    print(f"destroy-box {time.perf_counter() - t0:.3f}s")
    assert status == 0 and gone == {"ok": True, "result": {"destroyed": [handle]}}, (gone, err)
    assert _nothing_left(handle) == []
    status, tagged, _ = call("list-tagged", {"overcloud_id": oc})
    assert tagged["result"]["resources"] == []
    status, again, err = call("destroy-box", {"boxes": answer["result"]["boxes"]})  # gone already: fine
    assert status == 0 and again["ok"], (again, err)


def test_a_make_box_killed_midway_is_finished_by_the_next_call(host, runner):
    """A Tower killed with -9 leaves its op half done on the host (here: the agent itself is
    killed once the box's namespace exists); the same op again finishes the box, and
    destroy-box then removes everything."""
    call, installed, _, tower_id = host
    oc = uuid.uuid4().hex
    handle = box_handle(oc, "k1")
    import json

    req = json.dumps({"tower_id": tower_id, "sites": [SITE], "overlay_cidr": OVERLAY, "max_boxes": 8,
                      "specs": [spec(oc, "k1")]}).encode()
    proc = subprocess.Popen(hostprep.agent_command(installed.path, "make-box"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                            cwd=runner.cwd)
    proc.stdin.write(req)
    proc.stdin.close()
    deadline = time.monotonic() + 30
    while not os.path.exists(f"/run/netns/{handle}") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    print(f"\nagent killed midway: {killed}")
    status, answer, err = call("make-box", {"specs": [spec(oc, "k1")]})
    assert status == 0 and answer["result"]["boxes"][0]["handle"] == handle, (answer, err)
    assert [p for p in _pids_of(handle) if "supervisord" in _cmdline(p)]
    status, gone, err = call("destroy-box", {"boxes": answer["result"]["boxes"]})
    assert status == 0, (gone, err)
    assert _nothing_left(handle) == []
    assert call("list-tagged", {"overcloud_id": oc})[1]["result"]["resources"] == []


def test_a_destroy_box_cut_short_is_finished_by_the_next_call(host):
    """What a destroy-box killed midway leaves (its processes killed, cgroups and host veth
    removed; namespace, /etc/netns, state dir and lease still there), made by hand at that
    exact point (a real kill -9 lands too late: the whole destroy takes milliseconds once the
    box's processes are gone); destroy-box again removes the rest."""
    from overcloud.boxes.cgroups import Cgroups

    call, _, _, _ = host
    oc = uuid.uuid4().hex
    handle = box_handle(oc, "d1")
    status, made, err = call("make-box", {"specs": [spec(oc, "d1")]})
    assert status == 0, (made, err)
    for pid in _pids_of(handle):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _pids_of(handle) and time.monotonic() < deadline:
        time.sleep(0.01)
    Cgroups().remove(handle)
    subprocess.run(["ip", "link", "del", made["result"]["boxes"][0]["extra"]["host_veth"]], check=True)
    assert _nothing_left(handle) == ["netns", "/etc/netns"]  # and the lease and state dir
    status, gone, err = call("destroy-box", {"boxes": made["result"]["boxes"]})
    assert status == 0 and gone["ok"], (gone, err)
    assert _nothing_left(handle) == []
    assert call("list-tagged", {"overcloud_id": oc})[1]["result"]["resources"] == []


def test_sweep_removes_an_overclouds_boxes(host):
    call, _, _, _ = host
    oc = uuid.uuid4().hex
    status, answer, err = call("make-box", {"specs": [spec(oc, "s1"), spec(oc, "s2")]})
    assert status == 0 and len(answer["result"]["boxes"]) == 2, (answer, err)
    status, swept, err = call("sweep", {"overcloud_ids": [oc]})
    assert status == 0 and {r["kind"] for r in swept["result"]["removed"]} >= {"netns", "veth"}, (swept, err)
    for b in answer["result"]["boxes"]:
        assert _nothing_left(b["handle"]) == []
    assert call("list-tagged", {"overcloud_id": oc})[1]["result"]["resources"] == []


@pytest.mark.parametrize("op,req,needle", [
    ("make-box", b"{not json", "the request is not JSON"),
    ("make-box", b"[1, 2]", "the request must be a JSON object"),
    ("no-such-op", {}, "unknown op 'no-such-op'; ops: hello, ensure-site"),
    ("ensure-site", {"tower_id": "../../etc"}, "tower_id must be the Tower id (16 hex digits)"),
    ("make-box", {"specs": [{"overcloud_id": "ab" * 16, "name": "../x", "role": "cluster", "site": "sbh-a"}]},
     "specs[0].name must be a box name"),
    ("make-box", {"specs": [{"overcloud_id": "ab" * 16, "name": "c1", "role": "cluster", "site": "sbh-a",
                             "size": "huge"}]}, "specs[0].size is not a known size"),
    ("make-box", {"specs": [{"overcloud_id": "ab" * 16, "name": "c1", "role": "cluster", "site": "elsewhere"}]},
     "no local site 'elsewhere' (have sbh-a)"),
    ("make-box", {"sites": [{"name": "x", "bridge": "a-bridge-name-too-long", "cidr": "10.0.0.0/24"}], "specs": []},
     "specs must be a list of 1 to 256"),
    ("ensure-site", {"sites": [{"name": "x", "bridge": "a-bridge-name-too-long", "cidr": "10.0.0.0/24"}]},
     "sites[0].bridge must be an interface name of at most 15 characters"),
    ("ensure-site", {"sites": [{"name": "x", "bridge": "ocx", "cidr": "10.0.0.1/24"}]},
     "sites[0].cidr must be an IPv4 network like 10.79.1.0/24 (its host bits zero)"),
    ("destroy-box", {"boxes": [{"handle": "../../etc"}]}, "boxes[0] is not a box object"),
    ("sweep", {"overcloud_ids": ["*"]}, "overcloud_ids must be a list of OverCloud ids in hex"),
])
def test_bad_input_is_a_json_error_a_person_can_act_on(host, op, req, needle):
    call, _, _, _ = host
    status, answer, err = call(op, req)
    message = answer["error"]["message"]
    expected_status = 1 if "no local site" in needle else 2
    assert status == expected_status and answer["ok"] is False, answer
    assert needle in message, message
    assert "Traceback" not in err and "Traceback" not in message


def test_our_modules_run_from_the_bundle(host, runner):
    """``module <name>``: how box programs and BoxSession.run_module run our Python on a host."""
    _, installed, _, _ = host
    base = [hostprep.HOST_PYTHON, "-IS", installed.path, "module"]
    r = runner([*base, "overcloud.fabric.flowagent", "--help"])
    assert r.returncode == 0 and b"python -m overcloud.fabric.flowagent" in r.stdout, r.stderr[-1000:]
    for name, needle in (("overcloud.no_such_module", b"no module overcloud.no_such_module in this bundle"),
                         ("os", b"module must be one of ours")):
        r = runner([*base, name])
        assert r.returncode == 2 and needle in r.stdout and b"Traceback" not in r.stderr, (r.stdout, r.stderr)
