"""The Visible Fabric on real OverClouds: targets UP, flows in the topology, PromQL through the
Tower, DEGRADED and back, and a Datastore that survives being killed."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from towers import wait_for

from overcloud.boxes.netns import NetnsTransport
from overcloud.boxes.supervision import _rpc_proxy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def oc(tower):
    d = tower.create_two_site(1, 1, timeout=180)
    yield d
    tower.delete_and_wait(d["overcloud_ID"])


def test_every_target_is_up_and_labelled_with_its_box(tower, oc):
    oid = oc["overcloud_ID"]
    assert oc["fabric"]["status"] == "deployed" and oc["fabric"]["targets"] >= 9
    tasks = {t["task"]: t for t in oc["workflow"]["workflows"]["create_overcloud"]}
    assert "all UP" in tasks["fabric"]["message"]
    with tower.client() as c:
        res = c.get(f"/overclouds/{oid}/metrics", params={"query": "up"}).json()["result"]
    assert {r["metric"]["job"] for r in res} == {"node", "flow", "prometheus", "seaweedfs"}
    assert all(r["value"][1] == "1" for r in res)
    assert {r["metric"]["box"] for r in res if r["metric"]["job"] == "node"} == {"p0", "c1", "c2"}
    with tower.client() as c:  # the box's own use, not the host's (see docs/fabric.md)
        mem = c.get(f"/overclouds/{oid}/metrics", params={"query": "overcloud_box_memory_bytes"}).json()["result"]
    assert {r["metric"]["box"] for r in mem} == {"p0", "c1", "c2"}
    assert all(0 < float(r["value"][1]) < 4 * 1024**3 for r in mem)


def test_a_tcp_transfer_between_two_cluster_boxes_shows_as_an_edge(tower, oc):
    c1, c2 = oc["clusters"]
    srv = NetnsTransport(c2["handle"]).listen_tcp(c2["overlay_address"], 7200)
    stop = threading.Event()

    def sink():
        conn, _ = srv.accept()
        while conn.recv(1 << 16):
            pass
        conn.close()

    threading.Thread(target=sink, daemon=True).start()
    sender = NetnsTransport(c1["handle"]).connect_tcp(c2["overlay_address"], 7200)

    def pump():
        chunk = b"x" * 65536
        end = time.monotonic() + 15  # bounded
        while not stop.is_set() and time.monotonic() < end:
            sender.sendall(chunk)
            time.sleep(0.002)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        def edge():
            with tower.client() as c:
                flows = c.get(f"/overclouds/{oc['overcloud_ID']}/topology").json()["flows"]
            return next((f for f in flows if f["src"] == "c1" and f["dst"] == "c2" and f["bytes_per_s"] > 0), None)

        found = wait_for(edge, "edge c1 -> c2 with a rate")
        assert found["connections"] >= 1
        # the edge names the port it is for, served by c2 (nothing OverCloud knows listens on 7200)
        assert {"port": 7200, "server": "c2", "service": None, "replica": None, "program": None} in [
            {k: v for k, v in p.items() if k != "bytes_per_s"} for p in found["ports"]], found

        def scraped_by_prometheus():  # the Post's Prometheus scraping c2: named after the program serving it
            with tower.client() as c:
                flows = c.get(f"/overclouds/{oc['overcloud_ID']}/topology").json()["flows"]
            return [p for f in flows if f["src"] == "c2" and f["dst"] == "p0" for p in f["ports"]
                    if p["program"] == "node-exporter" and p["server"] == "c2" and p["port"] == 9100]
        wait_for(scraped_by_prometheus, "flows c2 -> p0 named after node-exporter")
    finally:
        stop.set()
        t.join()
        sender.close()
        srv.close()


def test_promql_errors_are_400_with_prometheus_message_and_unknown_ids_404(tower, oc):
    oid = oc["overcloud_ID"]
    with tower.client() as c:
        r = c.get(f"/overclouds/{oid}/metrics", params={"query": "sum(up"})
        assert r.status_code == 400 and "parse error" in r.json()["message"]
        now = time.time()
        r = c.get(f"/overclouds/{oid}/metrics", params={"query": "up", "start": now - 20000, "end": now, "step": 1})
        assert r.status_code == 400 and "11000" in r.json()["message"]
        r = c.get(f"/overclouds/{oid}/metrics", params={"query": "up", "start": now - 60, "end": now, "step": 5})
        assert r.status_code == 200 and r.json()["resultType"] == "matrix"
        assert c.get(f"/overclouds/{'f' * 32}/metrics", params={"query": "up"}).status_code == 404
        assert c.get(f"/overclouds/{'f' * 32}/topology").status_code == 404


def test_a_silent_node_exporter_degrades_the_overcloud_and_recovery_restores_it(tower, oc):
    oid, c1 = oc["overcloud_ID"], oc["clusters"][0]
    rpc = _rpc_proxy(f"/run/overcloud/{c1['handle']}.sock").supervisor
    rpc.stopProcess("node-exporter")
    try:
        d = wait_for(lambda: (lambda x: x if x["status"] == "DEGRADED" else None)(
            tower.client().get(f"/overclouds/{oid}").json()), "DEGRADED")
        assert "c1" in d["fabric"]["degraded"] and "node-exporter" in d["fabric"]["degraded"]["c1"]
    finally:
        rpc.startProcess("node-exporter")
    wait_for(lambda: tower.client().get(f"/overclouds/{oid}").json()["status"] == "READY", "back to READY")
    with tower.client() as c:
        text = c.get(f"/overclouds/{oid}/events", params={"after": 0}).text
    assert "event: health" in text and '"degraded"' in text and '"recovered"' in text


def test_killed_prometheus_is_restarted_with_its_scrape_config(tower, oc):
    oid, post = oc["overcloud_ID"], oc["post"]
    rpc = _rpc_proxy(f"/run/overcloud/{post['handle']}.sock").supervisor
    pid = rpc.getProcessInfo("prometheus")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: rpc.getProcessInfo("prometheus")["pid"] not in (0, pid), "prometheus restarted by supervisord")

    def all_up():
        r = tower.client().get(f"/overclouds/{oid}/metrics", params={"query": "up"})
        if r.status_code != 200:
            return False
        res = r.json()["result"]
        return len(res) >= 9 and all(x["value"][1] == "1" for x in res)

    wait_for(all_up, "every target UP again")


def test_cli_topology_and_top(tower, oc):
    oid = oc["overcloud_ID"]
    text = tower.cli("topology", oid, check=True).stdout
    assert "site local-a" in text and "site local-b" in text and "prometheus" in text
    dot = tower.cli("-o", "dot", "topology", oid, check=True).stdout
    assert dot.startswith("digraph overcloud") and '"p0"' in dot
    top = tower.cli("top", oid, "--count", "1", check=True).stdout
    assert "c1" in top and "c2" in top
