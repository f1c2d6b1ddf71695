"""The fabric's parts with real processes: the flow agent between two test namespaces, and
Prometheus + node-exporter on loopback driven by overcloud.fabric.prometheus."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import httpx

import pytest

from fabriclab import (
    ADDR_A, ADDR_B, NS_A, NS_B, PYTHON, Procs, free_port, netns_pair_down, netns_pair_up, scrape_in_ns, sh, wait_for,
)
from overcloud.fabric import prometheus as prom

pytestmark = pytest.mark.root

AGENT_PORT = 9109
SINK_PORT = 9200
MB = 1024 * 1024

SINK = """
import socket, sys, threading
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
def drain(c):
    with c:
        while c.recv(1 << 16):
            pass
for _ in range(20):
    c, _ = srv.accept()
    threading.Thread(target=drain, args=(c,), daemon=True).start()
"""

# Sends N bytes, says so, then keeps the connection open until told to close (a line on stdin).
SENDER = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(b"x" * int(sys.argv[3]))
print("sent", flush=True)
if sys.argv[4] == "hold":
    sys.stdin.readline()
s.close()
"""


@pytest.fixture
def procs():
    p = Procs()
    yield p
    p.stop_all()


@pytest.fixture
def netns_pair():
    netns_pair_up()
    yield
    netns_pair_down()
    left = sh("ip", "netns", "list").stdout
    assert NS_A not in left and NS_B not in left


def _pair(metric: str, src="a", dst="b", sa=ADDR_A, da=ADDR_B) -> str:
    """A's flows to B's sink: labelled with the sink's port, which the far end (dst) listens on."""
    return (f'{metric}{{src_box="{src}",dst_box="{dst}",src_addr="{sa}",dst_addr="{da}",'
            f'port="{SINK_PORT}",listener="dst"}}')


SENT = _pair("overcloud_flow_bytes_sent_total")
CONNS = 'overcloud_flow_connections{src_box="a",dst_box="b"}'


def test_flow_agent_counts_bytes_between_namespaces(netns_pair, procs, tmp_path):
    names = tmp_path / "names.json"
    names.write_text(json.dumps({ADDR_A: "a", ADDR_B: "b"}))
    url = f"http://{ADDR_A}:{AGENT_PORT}/metrics"
    agent = procs.start(["ip", "netns", "exec", NS_A, PYTHON, "-m", "overcloud.fabric.flowagent",
                         "--listen", f"{ADDR_A}:{AGENT_PORT}", "--names", str(names), "--interval", "0.2"],
                        log=tmp_path / "agent.log")
    procs.start(["ip", "netns", "exec", NS_B, PYTHON, "-c", SINK, ADDR_B, str(SINK_PORT)])
    first = wait_for(lambda: scrape_in_ns(NS_A, url), 10, "agent answering")
    assert first.get(SENT, 0) == 0 and "overcloud_flow_agent_sockets" in first

    # A held connection: counted while open, gauge at 1.
    size = 4 * MB
    sender = procs.start(["ip", "netns", "exec", NS_A, PYTHON, "-c", SENDER, ADDR_B, str(SINK_PORT), str(size), "hold"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert sender.stdout.readline().strip() == b"sent"
    during = wait_for(lambda: (m := scrape_in_ns(NS_A, url)).get(SENT, 0) >= size and m, 10, "bytes acked")
    assert during[CONNS] == 1
    assert during[_pair("overcloud_flow_bytes_received_total")] >= 0

    # Closed: the counter stays (monotonic), the gauge goes back to 0.
    sender.stdin.write(b"close\n")
    sender.stdin.flush()
    sender.wait(5)
    after = wait_for(lambda: (m := scrape_in_ns(NS_A, url)).get(CONNS) == 0 and m, 10, "connection gone")
    assert after[SENT] >= during[SENT] >= size

    # A connection that lives and dies between two scans still counts (socket-destroy events).
    short = 2 * MB
    sh("ip", "netns", "exec", NS_A, PYTHON, "-c", SENDER, ADDR_B, str(SINK_PORT), str(short), "close")
    final = wait_for(lambda: (m := scrape_in_ns(NS_A, url)).get(SENT, 0) >= after[SENT] + short and m, 10,
                     "short connection counted")
    assert final[CONNS] == 0

    # Names are re-read on change; an unknown address is labelled with itself.
    time.sleep(0.01)
    names.write_text(json.dumps({ADDR_A: "a"}))
    relabelled = wait_for(lambda: (m := scrape_in_ns(NS_A, url)).get(_pair("overcloud_flow_bytes_sent_total", dst=ADDR_B))
                          and m, 5, "relabelled")
    assert relabelled[_pair("overcloud_flow_bytes_sent_total", dst=ADDR_B)] >= final[SENT]

    # This box serving: a client in B sends to a sink in A. The flow is named by A's port, and
    # A is the end that listens (listener="src"), whatever ephemeral port B's client used.
    procs.start(["ip", "netns", "exec", NS_A, PYTHON, "-c", SINK, ADDR_A, str(SINK_PORT)])
    wait_for(lambda: sh("ip", "netns", "exec", NS_B, PYTHON, "-c", SENDER, ADDR_A, str(SINK_PORT), str(short), "close",
                        check=False).returncode == 0, 10, "sink in A answering")
    served = (f'overcloud_flow_bytes_received_total{{src_box="a",dst_box="{ADDR_B}",src_addr="{ADDR_A}",'
              f'dst_addr="{ADDR_B}",port="{SINK_PORT}",listener="src"}}')
    assert wait_for(lambda: scrape_in_ns(NS_A, url).get(served, 0) >= short, 10, "bytes served by A counted")
    assert agent.poll() is None


def _node(procs, tmp_path, name):
    port = free_port()
    p = procs.start(prom.node_exporter_argv(f"127.0.0.1:{port}"), log=tmp_path / f"{name}.log")
    return p, f"127.0.0.1:{port}"


def test_prometheus_datastore(procs, tmp_path):
    n1, inst1 = _node(procs, tmp_path, "node1")
    n2, inst2 = _node(procs, tmp_path, "node2")
    prom_port = free_port()
    url = f"http://127.0.0.1:{prom_port}"
    prom_inst = f"127.0.0.1:{prom_port}"
    here = {"site": "s1"}
    targets = {
        "prometheus": [{"target": prom_inst, "labels": {"box": "post", **here}}],
        "node": [{"target": inst1, "labels": {"box": "b1", **here}}],
    }
    config = tmp_path / "prometheus.yml"
    prom.write_config(config, prom.scrape_config(1, targets))
    t0 = time.monotonic()
    server = procs.start(prom.prometheus_argv(config, tmp_path / "data", prom_inst, "1d"), log=tmp_path / "prom.log")
    ready = prom.wait_ready(url, 15)
    up = prom.wait_all_up(url, [prom_inst, inst1], 20)
    print(f"prometheus ready {ready:.2f}s, all up {time.monotonic() - t0:.2f}s after start")
    boxes = {t["instance"]: t["box"] for t in prom.targets_health(url)}
    assert boxes == {prom_inst: "post", inst1: "b1"}

    # The lifecycle API is off: nobody who merely reaches the port can stop or reload it.
    for path in ("/-/quit", "/-/reload"):
        r = httpx.post(url + path, timeout=5)
        assert r.status_code == 403 and "Lifecycle API is not enabled" in r.text, (path, r.status_code, r.text)
    assert prom.wait_ready(url, 5) >= 0 and server.poll() is None

    # A new scrape job and target: regenerate, SIGHUP (the Tower sends it through supervisord),
    # same process; reload returns once Prometheus serves the new job.
    hup = lambda: server.send_signal(signal.SIGHUP)  # noqa: E731
    targets["node"].append({"target": inst2, "labels": {"box": "b2", **here}})
    targets["node2"] = [{"target": inst2, "labels": {"box": "b2", **here}}]
    text = prom.scrape_config(1, targets)
    prom.write_config(config, text)
    t1 = time.monotonic()
    prom.reload(url, hup, text)
    reloaded = time.monotonic() - t1
    # targets follow the applied config within Prometheus' discovery update interval (5 s)
    wait_for(lambda: "node2" in {t["job"] for t in prom.targets_health(url)}, 15, "job node2 a target", step=0.25)
    prom.wait_all_up(url, [prom_inst, inst1, inst2], 20)
    print(f"reload {reloaded * 1000:.0f} ms, new target up {time.monotonic() - t1:.2f}s after it")
    assert server.poll() is None
    del targets["node2"]
    text = prom.scrape_config(1, targets)
    prom.write_config(config, text)
    prom.reload(url, hup, text)
    # A broken config is refused and the running one kept.
    config.write_text("scrape_configs: [{job_name: x, static_configs: nope}]\n")
    with pytest.raises(RuntimeError, match="refused"):
        prom.reload(url, hup, "scrape_configs: [{job_name: x}]\n", timeout=5)
    assert server.poll() is None
    wait_for(lambda: {t["job"] for t in prom.targets_health(url)} == {"prometheus", "node"}, 15, "job node2 gone", step=0.25)

    # a reloaded pool restarts its targets (staleness markers): both are back within a scrape or two
    wait_for(lambda: {r["metric"]["box"] for r in prom.query(url, 'up{job="node"}')["result"]} == {"b1", "b2"},
             10, "up of b1 and b2", step=0.25)
    now = time.time()
    assert prom.query_range(url, "up", now - 60, now, 15)["resultType"] == "matrix"

    with pytest.raises(prom.PromQLError) as bad:
        prom.query(url, "sum(rate(up[1m])")
    assert bad.value.status == 400 and "parse error" in bad.value.message

    # Over the point limit: refused before sending (nothing listens on port 1).
    with pytest.raises(prom.PromQLError) as many:
        prom.query_range("http://127.0.0.1:1", "up", now - 86400, now, 1)
    assert many.value.status == 400 and "86401 points" in many.value.message and "11000" in many.value.message

    # A dead exporter shows as down, with Prometheus' error.
    procs.stop(n1)
    killed = time.monotonic()
    def down():
        t = {x["instance"]: x for x in prom.targets_health(url)}[inst1]
        return t["health"] == "down" and t
    t = wait_for(down, 10, "node1 down", step=0.25)
    print(f"killed exporter down after {time.monotonic() - killed:.2f}s: {t['lastError']}")
    assert t["lastError"] and t["job"] == "node"
    with pytest.raises(TimeoutError, match=inst1):
        prom.wait_all_up(url, [inst1, inst2], 1)
    assert up < 20 and n2.poll() is None


def test_missing_binary_names_the_debian_package(monkeypatch):
    monkeypatch.setattr(prom, "PROMETHEUS_DEBIAN", "/nonexistent/prometheus")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(prom.BinaryMissing, match="apt-get install prometheus"):
        prom.prometheus_binary()
    with pytest.raises(ValueError, match="site"):
        prom.scrape_config(1, {"node": [{"target": "127.0.0.1:9100", "labels": {"box": "b"}}]})
