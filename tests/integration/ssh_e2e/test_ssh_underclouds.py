"""Inventory and health of the UnderClouds on a Tower with the hosts lab's sites file:
GET /underclouds and `overcloud underclouds` (all four hosts healthy; a host whose sshd is
stopped is unhealthy, named, and the endpoint still answers; sshd back, healthy again), the
unreachable routes for the project's ranges, and WAN health in an OverCloud across ssh-a and
ssh-b (its ssh-b host's wireguard-go killed: DEGRADED naming the host, READY again once the
Tower has started it again; that host's sshd stopped: DEGRADED naming it, READY once back;
its WireGuard UDP blocked: DEGRADED, the host and its silent peers named within ~1 min, READY
once unblocked)."""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import subprocess
import time

import pytest

from lab_tower import HOSTS, teardown_hosts
from towers import SIDE_OVERLAY, SIDE_SITES, TowerProcess

pytestmark = [pytest.mark.root, pytest.mark.timeout(600)]



def _tower(hosts_lab, tmp_path, monkeypatch) -> TowerProcess:
    monkeypatch.setenv("OC_TEST_SITES_FILE", str(hosts_lab.sites_file))
    return TowerProcess(tmp_path / "tower", sites=SIDE_SITES, overlay=SIDE_OVERLAY,
                        OVERCLOUD_SITES_FILE=str(hosts_lab.sites_file)).start()


def _get(tower: TowerProcess) -> tuple[list[dict], float, str]:
    """GET /underclouds: (sites, seconds it took, the raw text). The client gives up after 20 s:
    an endpoint that hangs on a dead host fails here."""
    t0 = time.perf_counter()
    with tower.client() as c:
        r = c.get("/underclouds", timeout=20)
    took = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    return r.json()["underclouds"], took, r.text


def _hosts(sites: list[dict]) -> dict[str, dict]:
    return {h["name"]: h for u in sites if u["kind"] == "ssh" for h in u["hosts"]}


def _until(tower: TowerProcess, ok, what: str, timeout: float = 120) -> tuple[list[dict], list[float]]:
    deadline = time.monotonic() + timeout
    took = []
    while True:
        sites, t, _ = _get(tower)
        took.append(t)
        if ok(sites):
            return sites, took
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout} s: {json.dumps(_hosts(sites), indent=1)[:4000]}")
        time.sleep(0.3)


def _unreachable_routes() -> set[str]:
    from overcloud.underclouds.local import unreachable

    return unreachable.ours()


def _connect_fails_here(address: str) -> int:
    """The errno of a TCP connect from this (root) namespace to ``address``, made only once
    the kernel says the address has our unreachable route: never a packet out of eth0."""
    r = subprocess.run(["ip", "-j", "route", "get", address], capture_output=True, text=True)
    assert r.returncode != 0 and "No route to host" in r.stderr, (r.stdout, r.stderr)  # not routed anywhere
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((address, 9))
    except OSError as exc:
        return exc.errno
    finally:
        s.close()
    raise AssertionError(f"a connect to {address} succeeded")


def test_underclouds_inventory_health_cli_and_unreachable_routes(hosts_lab, tmp_path, monkeypatch):  # noqa: F811
    tower = _tower(hosts_lab, tmp_path, monkeypatch)
    try:
        # all four hosts healthy once prepared (the Tower prepares them at serve)
        sites, took = _until(tower, lambda s: len(_hosts(s)) == 4 and all(h["health"]["healthy"] for h in _hosts(s).values()),
                             "all four hosts healthy")
        print(f"\n[measure] GET /underclouds while the hosts are prepared: {min(took):.3f}-{max(took):.3f}s")
        by_name = {u["name"]: u for u in sites}
        assert {n: u["kind"] for n, u in by_name.items()} == {"local-a": "local", "local-b": "local",
                                                             "ssh-a": "ssh", "ssh-b": "ssh"}
        assert by_name["local-a"]["labels"] == {"overcloud.io/tier": "cloud"}
        assert by_name["local-a"]["bridge"]["name"] == SIDE_SITES[0]["bridge"] and by_name["local-a"]["bridge"]["up"] is True
        assert by_name["local-a"]["healthy"] is True and by_name["local-a"]["capacity"]["cpus"] >= 1
        configs = {c.name: c for c in hosts_lab.host_configs()}
        hosts = _hosts(sites)
        assert sorted(hosts) == sorted(HOSTS)
        for name, h in hosts.items():
            c = configs[name]
            assert h["address"] == c.address and h["box_cidr"] == c.box_cidr
            assert h["lent"] == {"cpus": c.cpus, "memory_mb": c.memory_mb}
            assert h["used"] == {"cpus": 0, "memory_mb": 0, "boxes": 0}
            assert h["free"] == {"cpus": c.cpus, "memory_mb": c.memory_mb}
            hh = h["health"]
            assert hh["reachable"] is True and hh["prepared"] is True and hh["problems"] == []
            peers = {p["host"]: p for p in hh["wan"]["peers"]}
            other = {"och-b1", "och-b2"} if name.startswith("och-a") else {"och-a1", "och-a2"}
            assert set(peers) == other, peers  # peers: the hosts of the other site only
            assert all(p["latest_handshake_age_s"] is not None and p["fresh"] for p in peers.values()), peers
        # no secret in the answer: no key file path or contents, no WireGuard key, sealed or not
        _, _, text = _get(tower)
        keys = json.loads((tower.state_dir / "ssh" / "wan-keys.json").read_text())
        assert not any(k["sealed_private"] in text for k in keys.values())
        key_file = str(configs["och-a1"].key_file)
        assert key_file not in text and "PRIVATE KEY" not in text

        # the CLI: a table, and --json with the same answer; an unreachable Tower and a bad token
        r = tower.cli("underclouds", check=True)
        for name in HOSTS:
            assert name in r.stdout
        assert "ok" in r.stdout and SIDE_SITES[0]["bridge"] in r.stdout
        data = json.loads(tower.cli("underclouds", "--json", check=True).stdout)
        assert {u["name"] for u in data["underclouds"]} == set(by_name)
        r = tower.cli("--token", "wrong", "underclouds")
        assert r.returncode == 2 and "401" in r.stderr, (r.returncode, r.stderr)
        from servers import free_port

        r = tower.cli("--url", f"http://127.0.0.1:{free_port()}", "underclouds")
        assert r.returncode == 1 and "cannot reach the Tower" in r.stderr, (r.returncode, r.stderr)

        # the project's ranges have unreachable routes here: a connect fails at once, locally
        routes = _unreachable_routes()
        assert SIDE_OVERLAY in routes, routes
        for c in configs.values():
            assert c.box_cidr in routes, routes
        for cidr in (SIDE_OVERLAY, configs["och-b1"].box_cidr):
            address = str(next(ipaddress.ip_network(cidr).hosts()) + 4)
            assert _connect_fails_here(address) in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPERM)

        # a host whose sshd is stopped: unhealthy, named, with the reason; the others healthy;
        # the endpoint keeps answering meanwhile
        hosts_lab.stop_sshd("och-b2")
        try:
            sites, took = _until(tower, lambda s: _hosts(s)["och-b2"]["health"]["reachable"] is False,
                                 "och-b2 unreachable", timeout=60)
            hh = _hosts(sites)["och-b2"]["health"]
            assert hh["healthy"] is False and hh["error"] and "och-b2" in hh["error"], hh
            assert any(p.startswith("unreachable") for p in hh["problems"]), hh
            ssh_b = next(u for u in sites if u["name"] == "ssh-b")
            assert ssh_b["healthy"] is False and any(p.startswith("och-b2: unreachable") for p in ssh_b["problems"])
            assert all(_hosts(sites)[n]["health"]["healthy"] for n in ("och-a1", "och-a2", "och-b1"))
            for _ in range(3):
                _, t, _ = _get(tower)
                took.append(t)
            print(f"[measure] GET /underclouds with och-b2's sshd stopped: {min(took):.3f}-{max(took):.3f}s "
                  f"(probe {hh['probe_s']}s)")
        finally:
            hosts_lab.start_sshd("och-b2")
        _until(tower, lambda s: _hosts(s)["och-b2"]["health"]["healthy"], "och-b2 healthy again", timeout=60)
    finally:
        try:
            tower.cleanup()
        finally:
            teardown_hosts(tower.state_dir)
    # the Tower closed (SIGTERM): its claim is gone, and so is every route no other live claim
    # wants (a Tower of another test killed with -9 keeps its own until its state dir goes)
    from overcloud.underclouds.local import unreachable
    from overcloud.underclouds.local.leases import HostLeases

    assert not (tower.state_dir / unreachable.OWNER_FILE).exists()
    claims = HostLeases()
    with claims.lock(unreachable.SPACE):
        live = claims.taken(unreachable.SPACE)
        wanted = {c for claim in live.values() for c in claim["holds"]["cidrs"]}
        assert not any(claim["owner"].startswith(str(tower.state_dir)) for claim in live.values())
        assert _unreachable_routes() <= wanted, (_unreachable_routes(), wanted)


def test_unreachable_routes_stay_while_another_tower_needs_them(tmp_path):
    from overcloud.underclouds.local import unreachable
    from overcloud.underclouds.local.leases import HostLeases

    claims = HostLeases(tmp_path / "claims")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    cidr, only_b = "10.79.250.0/24", "10.79.251.0/24"
    try:
        unreachable.install([cidr], a, "tower-a", claims)
        unreachable.install([cidr, only_b], b, "tower-b", claims)
        assert {cidr, only_b} <= unreachable.ours()
        assert unreachable.release(a, "tower-a", claims) == []  # tower-b still wants both
        assert {cidr, only_b} <= unreachable.ours()
        assert _connect_fails_here("10.79.250.7") in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPERM)
        assert sorted(unreachable.release(b, "tower-b", claims)) == [cidr, only_b]
        assert not {cidr, only_b} & unreachable.ours()
        # a Tower whose state dir is gone (its owner file with it) holds nothing
        unreachable.install([cidr], a, "tower-a", claims)
        (a / unreachable.OWNER_FILE).unlink()
        unreachable.install([only_b], b, "tower-b", claims)
        assert unreachable.release(b, "tower-b", claims) == sorted([cidr, only_b])
    finally:
        for c in (cidr, only_b):
            subprocess.run(["ip", "route", "del", "unreachable", c, "proto", str(unreachable.PROTO), "metric",
                            str(unreachable.METRIC)], capture_output=True)


def _box_host(hosts_lab, address: str) -> str:
    return next(c.name for c in hosts_lab.host_configs()
                if ipaddress.ip_address(address) in ipaddress.ip_network(c.box_cidr))


def test_wan_down_between_sites_makes_the_overcloud_degraded_then_ready(hosts_lab, tmp_path, monkeypatch):  # noqa: F811
    tower = _tower(hosts_lab, tmp_path, monkeypatch)
    try:
        with tower.client() as c:
            d = c.post("/overclouds", json={"provider": "heterogeneous",
                                            "ssh-a": {"number": "1", "size": "small", "post": "yes"},
                                            "ssh-b": {"number": "1", "size": "small"}},
                       params={"wait": "true"}, timeout=300).json()
        assert d["status"] == "READY", (d.get("error"), d.get("error_task"))
        oc = d.get("overcloud_ID") or d.get("id")
        with tower.client() as c:
            detail = c.get(f"/overclouds/{oc}").json()
        b_box = next(b for b in detail["clusters"] if b["site"] == "ssh-b")
        host = _box_host(hosts_lab, b_box["address"])
        # what this Tower's boxes use shows on their hosts
        hosts = _hosts(_get(tower)[0])
        assert hosts[host]["used"]["boxes"] == 1 and hosts[host]["used"]["cpus"] == 0.5, hosts[host]
        # READY for a few intervals: the WAN's health adds nothing while it is well
        time.sleep(3)
        assert tower.wait_status(oc, {"READY", "DEGRADED"})["status"] == "READY"

        # wireguard-go on the ssh-b box's host dies (its PID from the host's own PID file)
        pid = hosts_lab.outside(host, ["cat", "/run/overcloud/wan/ocwg0.pid"]).stdout.strip()
        assert pid.isdigit(), pid
        t0 = time.monotonic()
        assert hosts_lab.outside(host, ["kill", "-KILL", pid]).returncode == 0
        d = tower.wait_status(oc, {"DEGRADED"}, timeout=60)
        degraded = d["fabric"]["degraded"]
        print(f"\n[measure] wireguard-go killed on {host}: DEGRADED after {time.monotonic() - t0:.2f}s: {degraded}")
        assert f"host {host}" in degraded and "not up" in degraded[f"host {host}"], degraded
        # the Tower starts it again (a second probe in a row finds it down), and the OverCloud recovers
        d = tower.wait_status(oc, {"READY"}, timeout=120)
        print(f"[measure] READY again {time.monotonic() - t0:.2f}s after the kill")
        new_pid = hosts_lab.outside(host, ["cat", "/run/overcloud/wan/ocwg0.pid"]).stdout.strip()
        assert new_pid.isdigit() and new_pid != pid
        h = _hosts(_get(tower)[0])[host]["health"]
        assert h["wan"]["interface_up"] is True, h
        # the same host unreachable (its sshd stopped): DEGRADED naming it, READY once it is back
        hosts_lab.stop_sshd(host)
        try:
            d = tower.wait_status(oc, {"DEGRADED"}, timeout=60)
            assert d["fabric"]["degraded"].get(f"host {host}", "").startswith("unreachable"), d["fabric"]["degraded"]
        finally:
            hosts_lab.start_sshd(host)
        tower.wait_status(oc, {"READY"}, timeout=120)
        # WireGuard's UDP blocked on that host (from outside, in its namespaces): the Fabric
        # degrades the OverCloud at once (scrapes across sites fail); within a minute or so the
        # WAN's own check names the host and its silent peers; unblocked, READY again
        block = ("table inet oc_test_block {\n chain i { type filter hook input priority -10; udp dport 51820 drop; }\n"
                 " chain o { type filter hook output priority -10; udp dport 51820 drop; }\n}\n")
        r = hosts_lab.outside(host, ["nft", "-f", "-"], input=block)
        assert r.returncode == 0, r.stderr
        t0 = time.monotonic()
        try:
            deadline = time.monotonic() + 150
            while True:
                d = tower.wait_status(oc, {"DEGRADED"}, timeout=60)
                why = d["fabric"]["degraded"].get(f"host {host}", "")
                if "nothing received" in why:
                    break
                assert time.monotonic() < deadline, d["fabric"]["degraded"]
                time.sleep(1)
            print(f"[measure] UDP 51820 blocked on {host}: the WAN check named it after "
                  f"{time.monotonic() - t0:.1f}s: {why}")
        finally:
            hosts_lab.outside(host, ["nft", "delete", "table", "inet", "oc_test_block"])
        tower.wait_status(oc, {"READY"}, timeout=120)
        print(f"[measure] READY again {time.monotonic() - t0:.1f}s after the block began")
        d = tower.delete_and_wait(oc, timeout=300)
        assert d["status"] == "DELETED", (d.get("error"), d.get("error_task"))
    finally:
        try:
            tower.cleanup()
        finally:
            teardown_hosts(tower.state_dir)
