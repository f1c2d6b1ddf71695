"""Faults on ssh sites, through a Tower (issue 11, "Faults and bad input").

One Tower for the module, on a sites file made from the lab's: its hosts, regrouped, plus two
hosts that do not exist (nothing answers at their addresses on the lab's WAN bridge):

* ``ssh-a``: och-a1, och-a2 and ``dead-a3`` (10.77.0.99): placement leaves the dead host out;
* ``ssh-b``: och-b1;
* ``ssh-k``: och-b2, whose pin is och-b1's key (a wrong, or changed, host key);
* ``ssh-d``: ``dead-d1`` (10.77.0.98) alone: a create that needs it must fail.

Every check of "nothing left" looks at every lab host from the outside (its network
namespaces, this Tower's box lease files there) and at the Tower's own ssh state (overlay
leases, the hosts each OverCloud touched). Waits are bounded; no duration is asserted.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import asyncssh
import pytest
import yaml

from towers import SIDE_OVERLAY, SIDE_SITES, TowerProcess

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(900)]

LAB_HOSTS = ("och-a1", "och-a2", "och-b1", "och-b2")
DEAD_TIMEOUT = 2  # the dead hosts' connect_timeout (s)


def _body(sites: dict[str, int], *, fabric: bool = False) -> dict:
    """The native body: clusters per site, the Post on the first site, no DataLake (it is not
    what these tests are about, and it makes every create slower); the Fabric when asked."""
    return {"sites": [{"undercloud": s, "clusters": n, "size": "small", "post": i == 0}
                      for i, (s, n) in enumerate(sites.items())],
            "datalake": {"enabled": False}, "fabric": {"enabled": fabric}}


def _fingerprint(key_line: str) -> str:
    return asyncssh.import_public_key(key_line).get_fingerprint("sha256")


def _sites_file(lab, path: Path) -> Path:
    sites = {s["name"]: s for s in yaml.safe_load(lab.sites_file.read_text())}
    hosts = {h["name"]: h for s in sites.values() for h in s["hosts"]}

    def dead(name: str, address: str, lan: str, cidr: str) -> dict:
        return {**hosts["och-a1"], "name": name, "address": address, "lan_address": lan, "box_cidr": cidr,
                "connect_timeout": DEAD_TIMEOUT}

    wrong = {**hosts["och-b2"], "host_key": hosts["och-b1"]["host_key"]}
    out = [
        {**sites["ssh-a"], "hosts": [hosts["och-a1"], hosts["och-a2"],
                                     dead("dead-a3", "10.77.0.99", "10.78.1.99", "10.79.9.0/24")]},
        {**sites["ssh-b"], "hosts": [hosts["och-b1"]]},
        {"name": "ssh-k", "kind": "ssh", "labels": {}, "hosts": [wrong]},
        {"name": "ssh-d", "kind": "ssh", "labels": {}, "hosts": [dead("dead-d1", "10.77.0.98", "10.78.2.98",
                                                                      "10.79.8.0/24")]},
    ]
    path.write_text(yaml.safe_dump(out, sort_keys=False))
    return path


def _teardown_hosts(lab, state_dir: Path) -> None:
    """What the Tower left on the lab's hosts (asserted empty), then their bridges and WAN."""
    from overcloud.underclouds.ssh.driver import clear_hosts_after

    left = clear_hosts_after(lab.sites(), state_dir)
    assert not left, [r.name for r in left][:10]


@pytest.fixture(scope="module")
def faults_tower(hosts_lab, tmp_path_factory):  # noqa: F811
    d = tmp_path_factory.mktemp("faults")
    sites = _sites_file(hosts_lab, d / "sites.yaml")
    tower = TowerProcess(d / "tower", sites=SIDE_SITES, overlay=SIDE_OVERLAY, OVERCLOUD_SITES_FILE=str(sites))
    tower.start()
    try:
        yield tower
    finally:
        try:
            tower.cleanup()
        finally:
            for h in LAB_HOSTS:  # a test that failed half way may leave one stopped
                if "sshd" not in hosts_lab.pids(h) or not _sshd_alive(hosts_lab, h):
                    hosts_lab.start_sshd(h)
            _teardown_hosts(hosts_lab, tower.state_dir)


def _sshd_alive(lab, host: str) -> bool:
    pid = lab.pids(host).get("sshd")
    return bool(pid) and Path(f"/proc/{pid}").exists()


def _oc(d: dict) -> str:
    return d.get("overcloud_ID") or d.get("id")


def _post(tower: TowerProcess, body: dict) -> str:
    with tower.client() as c:
        r = c.post("/overclouds", json=body)
    assert r.status_code in (200, 201, 202), r.text
    return _oc(r.json())


def _create(tower: TowerProcess, body: dict, timeout: float = 300) -> dict:
    oc = _post(tower, body)
    return tower.wait_status(oc, {"READY", "FAILED"}, timeout=timeout)


def _on_hosts(lab, oc: str) -> dict[str, str]:
    """What carries the OverCloud's id on each lab host: network namespaces, box lease files."""
    found = {}
    for h in LAB_HOSTS:
        netns = lab.outside(h, ["ip", "netns", "list"]).stdout
        leases = lab.outside(h, ["sh", "-c", "cat /var/lib/overcloud/host/*/leases/*.json 2>/dev/null; true"]).stdout
        hits = [line for line in netns.splitlines() if oc[:8] in line]
        if oc in leases:
            hits.append("a box lease")
        if hits:
            found[h] = ", ".join(hits)
    return found


def _on_tower(tower: TowerProcess, oc: str) -> list[str]:
    """The Tower's own ssh state naming the OverCloud (overlay lease, claims, touched hosts)."""
    root = tower.state_dir / "ssh"
    hits = []
    for f in root.rglob("*"):
        if f.is_file() and "host-bundle" not in f.parts:
            if oc in f.name or oc in f.read_text(errors="replace"):
                hits.append(str(f.relative_to(root)))
    return hits


def _assert_nothing_left(lab, tower, oc: str) -> None:
    assert _on_hosts(lab, oc) == {}, f"left on the hosts: {_on_hosts(lab, oc)}"
    assert _on_tower(tower, oc) == [], f"left in the Tower's ssh state: {_on_tower(tower, oc)}"


def _wait_task(tower: TowerProcess, oc: str, tasks: set[str], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    with tower.client() as c:
        while time.monotonic() < deadline:
            wf = c.get(f"/overclouds/{oc}/workflow").json()["workflows"]["create_overcloud"]
            running = [x["task"] for x in wf if x["state"] == "RUNNING" and x["task"] in tasks]
            if running:
                return running[0]
            if c.get(f"/overclouds/{oc}").json()["status"] in ("READY", "FAILED"):
                break
            time.sleep(0.02)
    raise AssertionError(f"none of {tasks} ran")


def _hosts_of(tower: TowerProcess, oc: str) -> dict[str, str]:
    """Box name -> lab host (from the box address: 10.79.<n>.x is host n's box_cidr)."""
    with tower.client() as c:
        d = c.get(f"/overclouds/{oc}").json()
    by_net = {"1": "och-a1", "2": "och-a2", "3": "och-b1", "4": "och-b2"}
    return {b["name"]: by_net[b["address"].split(".")[2]] for b in [d["post"], *d["clusters"]]}


# -- unreachable hosts ---------------------------------------------------------------------------

def test_a_dead_host_is_left_out_of_placement_and_the_site_still_works(faults_tower, hosts_lab):
    """ssh-a has a dead host beside two good ones: a create there is READY on the good ones
    (one dead host no longer fails every ssh operation), and delete (whose check for leftovers
    asks every host) is DELETED with nothing left."""
    d = _create(faults_tower, _body({"ssh-a": 2}))
    oc = _oc(d)
    assert d["status"] == "READY", d.get("error")
    assert set(_hosts_of(faults_tower, oc).values()) <= {"och-a1", "och-a2"}
    d = faults_tower.delete_and_wait(oc)
    assert d["status"] == "DELETED", d.get("error")
    _assert_nothing_left(hosts_lab, faults_tower, oc)


def test_no_room_but_on_a_dead_host_is_refused_naming_it(faults_tower, hosts_lab):
    """More than och-a1 and och-a2 lend (4 CPUs): refused at placement, naming the dead host
    and why it was left out; nothing made anywhere."""
    d = _create(faults_tower, _body({"ssh-a": 8}))
    oc = _oc(d)
    assert d["status"] == "FAILED"
    msg = str(d["error"])
    print(f"\n[fault] {msg}")
    assert "no host of the site has room" in msg and "dead-a3 (10.77.0.99:22)" in msg, msg
    assert f"within {DEAD_TIMEOUT} s" in msg or "cannot connect" in msg, msg
    _assert_nothing_left(hosts_lab, faults_tower, oc)


def test_a_create_that_needs_a_dead_host_fails_naming_it_and_leaves_nothing(faults_tower, hosts_lab):
    """The Post and a cluster on ssh-a, a cluster on ssh-d (one dead host): FAILED naming
    dead-d1 and the timeout; the boxes made meanwhile on ssh-a are gone, and so are the
    Tower's overlay lease and its record of the hosts touched."""
    d = _create(faults_tower, _body({"ssh-a": 1, "ssh-d": 1}))
    oc = _oc(d)
    assert d["status"] == "FAILED"
    msg = str(d["error"])
    print(f"\n[fault] {msg}")
    assert "no host of site ssh-d can take boxes" in msg and "dead-d1 (10.77.0.98:22)" in msg, msg
    assert f"within {DEAD_TIMEOUT} s" in msg or "cannot connect" in msg, msg
    _assert_nothing_left(hosts_lab, faults_tower, oc)
    d = faults_tower.delete_and_wait(oc)  # a FAILED create is still deletable, dead host or not
    assert d["status"] == "DELETED", d.get("error")


# -- host keys -----------------------------------------------------------------------------------

def test_a_wrong_host_key_fails_the_create_naming_host_and_fingerprints(faults_tower, hosts_lab):
    sites = {s["name"]: s for s in yaml.safe_load(hosts_lab.sites_file.read_text())}
    keys = {h["name"]: h["host_key"] for s in sites.values() for h in s["hosts"]}
    offered, pinned = _fingerprint(keys["och-b2"]), _fingerprint(keys["och-b1"])
    d = _create(faults_tower, _body({"ssh-k": 1}))
    oc = _oc(d)
    assert d["status"] == "FAILED"
    msg = str(d["error"])
    print(f"\n[fault] {msg}")
    assert "och-b2" in msg and "host key refused" in msg and offered in msg and pinned in msg, msg
    # no secret: neither the client's private key nor anything of it
    private = (hosts_lab.dir / "client_key").read_text()
    body = "".join(private.splitlines()[1:-1])
    assert "PRIVATE KEY" not in msg and body[:40] not in msg
    assert body[:40] not in faults_tower.log.read_text()
    _assert_nothing_left(hosts_lab, faults_tower, oc)
    # the other hosts work meanwhile: och-b1 on ssh-b
    d = _create(faults_tower, _body({"ssh-b": 1}))
    assert d["status"] == "READY", d.get("error")
    assert faults_tower.delete_and_wait(_oc(d))["status"] == "DELETED"
    _assert_nothing_left(hosts_lab, faults_tower, _oc(d))


# -- sshd killed mid-create ------------------------------------------------------------------------

def test_sshd_killed_mid_create_fails_it_and_its_leftovers_go_when_sshd_is_back(faults_tower, hosts_lab):
    """och-a2's sshd (and its sessions) killed while the Fabric is being deployed: the create
    is FAILED naming och-a2 and reverted as far as the hosts answer; och-a2's boxes stay while
    it is silent. With sshd back the Tower sweeps them by itself, without a DELETE (its leftover
    sweeper: nothing left on any host nor on the Tower, and the OverCloud's events say what was
    removed); a DELETE afterwards has nothing to do and ends DELETED."""
    oc = _post(faults_tower, _body({"ssh-a": 2}, fabric=True))
    task = _wait_task(faults_tower, oc, {"fabric", "clusters"})
    hosts_lab.stop_sshd("och-a2")
    try:
        d = faults_tower.wait_status(oc, {"READY", "FAILED"}, timeout=180)
        assert d["status"] == "FAILED", f"killed while {task} ran"
        assert "och-a2" in str(d["error"]), d["error"]
        left = _on_hosts(hosts_lab, oc)
        print(f"\n[fault] sshd of och-a2 killed while {task} ran: {d['error']}")
        print(f"[fault] left while sshd is down: {left}")
        assert "och-a2" in left, left  # nothing can reach them: the revert could not
        time.sleep(6)  # more than one sweep interval (5 s): a silent host keeps what it holds
        assert "och-a2" in _on_hosts(hosts_lab, oc)
    finally:
        hosts_lab.start_sshd("och-a2")
    back = time.monotonic()
    deadline = back + 90
    while (_on_hosts(hosts_lab, oc) or _on_tower(faults_tower, oc)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _on_hosts(hosts_lab, oc) and not _on_tower(faults_tower, oc), (
        f"90 s after sshd of och-a2 is back, still left on the hosts: {_on_hosts(hosts_lab, oc)}; "
        f"in the Tower's ssh state: {_on_tower(faults_tower, oc)}")
    print(f"[fault] och-a2's leftovers swept {time.monotonic() - back:.1f} s after its sshd was back, no DELETE")
    with faults_tower.client() as c:
        d = c.get(f"/overclouds/{oc}").json()
        events = c.get(f"/overclouds/{oc}/events", params={"after": 0}).text
    assert d["status"] == "FAILED", d["status"]  # the sweep changes what is on the hosts, not the record
    assert "event: leftovers" in events and '"och-a2"' in events, events[-2000:]
    swept = [line for line in events.splitlines() if '"och-a2"' in line and '"removed"' in line]
    assert swept and '"clean": true' in swept[-1] and oc[:8] in swept[-1], swept
    d = faults_tower.delete_and_wait(oc, timeout=180)  # nothing to do, and it still works
    if d["status"] == "FAILED":  # preserve needs the Post; nothing to preserve here (no DataLake)
        with faults_tower.client() as c:
            c.delete(f"/overclouds/{oc}", params={"preserve": "false"})
        d = faults_tower.wait_status(oc, {"DELETED", "FAILED"}, timeout=180)
    assert d["status"] == "DELETED", d.get("error")
    _assert_nothing_left(hosts_lab, faults_tower, oc)


# -- a host rebooted ------------------------------------------------------------------------------

def test_a_rebooted_host_turns_the_overcloud_degraded_naming_its_boxes(faults_tower, hosts_lab):
    """A READY OverCloud on ssh-a; the host without the Post power-cycles (its namespaces,
    processes, /run gone; its disk kept): DEGRADED naming exactly the boxes that were there;
    delete is DELETED and leaves nothing (the host is prepared again on the way)."""
    d = _create(faults_tower, _body({"ssh-a": 2}, fabric=True))
    oc = _oc(d)
    assert d["status"] == "READY", d.get("error")
    where = _hosts_of(faults_tower, oc)
    victim = next(h for h in ("och-a1", "och-a2") if h != where["p0"])
    lost = sorted(n for n, h in where.items() if h == victim)
    assert lost, where
    hosts_lab.reboot(victim)
    deadline = time.monotonic() + 90
    with faults_tower.client() as c:
        while True:
            d = c.get(f"/overclouds/{oc}").json()
            degraded = (d.get("fabric") or {}).get("degraded") or {}
            if d["status"] == "DEGRADED" and set(lost) <= set(degraded):
                break
            if time.monotonic() > deadline:
                log = [line for line in faults_tower.log.read_text().splitlines() if victim in line][-30:]
                raise AssertionError(f"still {d['status']} ({degraded}) after the reboot of {victim}; "
                                     f"lab: {hosts_lab.pids(victim)}; log:\n" + "\n".join(log))
            time.sleep(0.5)
    print(f"\n[fault] {victim} rebooted; degraded: {degraded}")
    assert where["p0"] not in degraded, degraded
    d = faults_tower.delete_and_wait(oc, timeout=180)
    assert d["status"] == "DELETED", d.get("error")
    _assert_nothing_left(hosts_lab, faults_tower, oc)


# -- the Tower killed mid-create -------------------------------------------------------------------

@pytest.mark.parametrize("kill_in", [{"acquire_boxes", "overlay_network"}, {"fabric"}])
def test_tower_killed_mid_create_on_ssh_sites_resumes_to_ready(faults_tower, hosts_lab, kill_in):
    """kill -9 of the Tower while the create runs on ssh-a and ssh-b; the Tower started again
    on the same state dir resumes it: READY, then DELETED with nothing left."""
    oc = _post(faults_tower, _body({"ssh-a": 1, "ssh-b": 1}, fabric=True))
    task = _wait_task(faults_tower, oc, kill_in)
    faults_tower.kill9()
    faults_tower.start()
    d = faults_tower.wait_status(oc, {"READY", "FAILED"}, timeout=240)
    assert d["status"] == "READY", f"killed while {task} ran: {d.get('error')}"
    d = faults_tower.delete_and_wait(oc, timeout=180)
    assert d["status"] == "DELETED", d.get("error")
    _assert_nothing_left(hosts_lab, faults_tower, oc)


# -- key files --------------------------------------------------------------------------------------

@pytest.mark.parametrize("problem", ["missing", "unreadable"])
def test_a_bad_key_file_stops_the_tower_at_start_naming_the_path(tmp_path, hosts_lab, problem):
    """``overcloud serve`` with a sites file whose key file is missing (or not a key): exit 2
    and one line naming the site, host and path; no traceback, nothing of the key shown."""
    import subprocess
    import sys

    key = tmp_path / "client_key"
    if problem == "unreadable":
        key.write_text("not a key at all\n")
        key.chmod(0o600)
    sites = yaml.safe_load(hosts_lab.sites_file.read_text())
    for s in sites:
        for h in s["hosts"]:
            h["key_file"] = str(key)
    path = tmp_path / "sites.yaml"
    path.write_text(yaml.safe_dump(sites))
    env = {**os.environ, "OVERCLOUD_STATE_DIR": str(tmp_path / "state"), "OVERCLOUD_SITES": "[]",
           "OVERCLOUD_SITES_FILE": str(path)}
    r = subprocess.run([str(Path(sys.executable).parent / "overcloud"), "serve", "--port", "1"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert str(key) in r.stderr and "och-a1" in r.stderr and "ssh-a" in r.stderr, r.stderr
    assert re.search(r"^error: ", r.stderr, re.M), r.stderr
    assert "not a key at all" not in r.stderr
