"""Measure the flow agent's CPU (idle, then during a 20 s transfer) under a 1 s scrape; numbers go to docs/fabric.md.

Run as root: .venv/bin/python tests/integration/fabric/measure_agent_cpu.py  (~55 s; uses the ocfab- test namespaces)."""
import json, os, subprocess, sys, time, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fabriclab import *
HZ = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / HZ
SCRAPER = """
import sys, time, urllib.request
n = int(sys.argv[2]); t0 = time.monotonic(); last = ""
for i in range(n):
    last = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
    time.sleep(max(0, t0 + i + 1 - time.monotonic()))
print([l for l in last.splitlines() if l.startswith(("overcloud_flow_agent", "overcloud_flow_bytes_sent"))])
"""
STREAM = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], 9200)); end = time.monotonic() + float(sys.argv[2]); buf = b"x" * 65536; n = 0
while time.monotonic() < end:
    s.sendall(buf); n += len(buf)
s.close(); print(n / 1e6, "MB")
"""
SINK = """
import socket, threading
srv = socket.create_server(("10.213.250.2", 9200))
for _ in range(5):
    c, _ = srv.accept()
    threading.Thread(target=lambda c=c: [None for _ in iter(lambda: c.recv(1 << 16), b"")], daemon=True).start()
"""
netns_pair_up()
procs = Procs()
d = tempfile.mkdtemp()
try:
    open(f"{d}/n.json", "w").write(json.dumps({ADDR_A: "a", ADDR_B: "b"}))
    agent = procs.start(["ip", "netns", "exec", NS_A, PYTHON, "-m", "overcloud.fabric.flowagent", "--listen", f"{ADDR_A}:9109", "--names", f"{d}/n.json"])
    procs.start(["ip", "netns", "exec", NS_B, PYTHON, "-c", SINK])
    time.sleep(1.5)
    url = f"http://{ADDR_A}:9109/metrics"
    c0, t0 = cpu(agent.pid), time.monotonic()
    print(sh("ip", "netns", "exec", NS_A, PYTHON, "-c", SCRAPER, url, "30", timeout=60).stdout)
    c1, t1 = cpu(agent.pid), time.monotonic()
    print(f"idle, 1 s scrape: {(c1-c0):.2f} s CPU over {t1-t0:.1f} s = {100*(c1-c0)/(t1-t0):.2f} % of a core")
    stream = procs.start(["ip", "netns", "exec", NS_A, PYTHON, "-c", STREAM, ADDR_B, "20"], stdout=subprocess.PIPE)
    c0, t0 = cpu(agent.pid), time.monotonic()
    print(sh("ip", "netns", "exec", NS_A, PYTHON, "-c", SCRAPER, url, "20", timeout=60).stdout)
    c1, t1 = cpu(agent.pid), time.monotonic()
    print(stream.communicate(timeout=10)[0].decode().strip())
    print(f"transfer, 1 s scrape: {(c1-c0):.2f} s CPU over {t1-t0:.1f} s = {100*(c1-c0)/(t1-t0):.2f} % of a core")
finally:
    procs.stop_all(); netns_pair_down(); import shutil; shutil.rmtree(d)
