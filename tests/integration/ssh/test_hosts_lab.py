"""scripts/hosts-lab.sh: one lab at a time, and `down` leaves nothing on the machine."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from hostslab import HOSTS, SCRIPT, leftovers

from overcloud.underclouds.ssh import transport


def test_a_second_up_is_refused_naming_the_running_lab(hosts_lab, tmp_path):
    r = subprocess.run(["bash", str(SCRIPT), "up", str(tmp_path / "other")], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert f"a hosts lab is already up from {hosts_lab.dir}; run: " in r.stderr and f"down {hosts_lab.dir}" in r.stderr
    assert not (tmp_path / "other" / "sites.yaml").exists()
    # the running lab is untouched
    t = transport.SSHTransport(hosts_lab.host_configs())
    try:
        assert all(not isinstance(r, Exception) for r in t.run_all(["true"]).values())
    finally:
        t.close()


def test_down_leaves_nothing_even_what_ran_on_the_hosts_then_up_again(hosts_lab):
    t = transport.SSHTransport(hosts_lab.host_configs())
    mark = str(4000 + os.getpid() % 1000)
    for h in t.hosts:
        # a daemon left running on the host, and a namespace with a veth made on it
        h.run(["sh", "-c", f"setsid sleep {mark} </dev/null >/dev/null 2>&1 &"])
        h.run(["sh", "-c", "ip netns add labbox && ip link add lb0 type veth peer name lb1 netns labbox"])
    t.close()
    transport.shutdown()
    sites_before = hosts_lab.sites_file.read_text()
    assert any(f"sleep\0{mark}".encode() in p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if p.exists())
    hosts_lab.down()
    try:
        assert leftovers(hosts_lab.dir) == []
        alive = []
        for p in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if f"sleep\0{mark}".encode() in p.read_bytes():
                    alive.append(p.parent.name)
            except OSError:
                pass
        assert alive == [], "processes started on the hosts survived down"
        # down again: nothing to do, still fine
        r = subprocess.run(["bash", str(SCRIPT), "down", str(hosts_lab.dir)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    finally:
        hosts_lab.up()  # the session's other tests go on with the lab: same DIR, same keys
    assert hosts_lab.sites_file.read_text() == sites_before  # pins made before the down stay valid
    t = transport.SSHTransport(hosts_lab.host_configs())
    try:
        assert {n: r.stdout for n, r in t.run_all(["hostname"]).items()} == {h: f"{h}\n".encode() for h in HOSTS}
    finally:
        t.close()


def test_a_reboot_loses_what_was_in_memory_and_keeps_the_disk(hosts_lab, ssh_host):
    h = ssh_host("och-a2")
    h.run(["sh", "-c", "echo x > /run/volatile; echo y > /var/lib/overcloud/durable; ip netns add labbox; "
                       "setsid sleep 7777 </dev/null >/dev/null 2>&1 &"])
    netns_before = os.stat("/run/netns/och-a2").st_ino
    hosts_lab.reboot("och-a2")
    # the kept connection died with the host's sshd; the next call connects again (same host key)
    assert h.run(["hostname"]).stdout == b"och-a2\n"
    assert h.connects == 2
    assert h.run(["ls", "/run/volatile"], check=False).returncode != 0
    assert h.get_file("/var/lib/overcloud/durable", 10) == b"y\n"
    assert h.run(["ip", "netns", "list"]).stdout == b""
    assert b"sleep 7777" not in h.run(["ps", "-eo", "args"]).stdout
    assert os.stat("/run/netns/och-a2").st_ino != netns_before
    h.run(["rm", "/var/lib/overcloud/durable"])
