"""wan.py driven over the real SSH transport, on the simulated hosts (scripts/hosts-lab.sh).

The same up/status/down as test_wireguard.py, but every command goes through SSHHost.run to a
host with its own sshd, mount, UTS and PID namespaces and its own /run: so every host uses the
default interface name (ocwg0) and run dir (/run/overcloud/wan), and wireguard-go's PID is the
host's. Each host gets a stand-in for its box bridge (a veth end holding the first address of its
box_cidr) so box subnets can be pinged. The test process reaches the hosts over SSH only; the
lab's ``outside`` (nsenter) is not used.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.fernet import Fernet

from hostslab import hosts_lab  # noqa: F401 - the session fixture

from overcloud.identity.secrets import SecretBox
from overcloud.underclouds.ssh import wan
from overcloud.underclouds.ssh.transport import SSHHost

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

STAND_IN = "ocwtbox"  # the stand-in for a host's box bridge


def first(cidr: str) -> str:
    return cidr.rsplit(".", 1)[0] + ".1"


@pytest.fixture
def wan_lab(hosts_lab):  # noqa: F811
    secrets = SecretBox(Fernet.generate_key())
    sites = hosts_lab.sites()
    configs = [(s.name, h) for s in sites for h in s.hosts]
    ssh = {h.name: SSHHost(h) for _, h in configs}
    plan = wan.WanPlan(tuple(
        wan.WanHost(name=h.name, site=site, wan_address=h.address, lan_address=h.lan_address, box_cidr=h.box_cidr,
                    wg_address=f"10.79.250.{i + 1}", keys=wan.make_keys(secrets.seal))
        for i, (site, h) in enumerate(configs)
    ))
    runs = {name: (lambda argv, input=None, _h=host: _h.run(list(argv), input=input, check=False)) for name, host in ssh.items()}
    for h in plan.hosts:
        ssh[h.name].run(["sh", "-c", 'ip link add "$1" type veth peer name "$1-p" && ip addr add "$2/24" dev "$1" '
                         '&& ip link set "$1" up && ip link set "$1-p" up && sysctl -qw net.ipv4.ip_forward=1',
                         "sh", STAND_IN, first(h.box_cidr)])
    yield plan, secrets, ssh, runs
    for h in plan.hosts:
        try:
            wan.down(h, runs[h.name])
        finally:
            ssh[h.name].run(["ip", "link", "del", STAND_IN], check=False)
            ssh[h.name].close()


def test_wireguard_between_sites_over_ssh(wan_lab):
    plan, secrets, ssh, runs = wan_lab
    t0 = time.monotonic()
    with ThreadPoolExecutor(len(plan.hosts)) as pool:
        states = dict(zip([h.name for h in plan.hosts],
                          pool.map(lambda h: wan.up(plan, h.name, runs[h.name], secrets.open), plan.hosts)))
    t_up = time.monotonic()
    a1, a2, b1, b2 = (plan.hosts[i] for i in range(4))
    assert (a1.site, a2.site, b1.site, b2.site) == ("ssh-a", "ssh-a", "ssh-b", "ssh-b")

    def ping(src: wan.WanHost, dst: wan.WanHost) -> bool:
        res = ssh[src.name].run(["ping", "-c1", "-W1", "-I", first(src.box_cidr), first(dst.box_cidr)], check=False)
        return res.returncode == 0

    while not ping(a1, b2):
        assert time.monotonic() - t_up < 15, "a1's box subnet never reached b2's through WireGuard"
    t_ping = time.monotonic()
    print(f"\nover SSH: up of 4 hosts in parallel {t_up - t0:.2f} s; first box-subnet ping across sites {t_ping - t_up:.2f} s after")
    for name, st in states.items():
        assert st.interface == "ocwg0" and st.backend == "wireguard-go" and st.pid and st.created
    assert ping(a2, b1) and ping(b1, a1) and ping(a1, a2) and ping(b2, b1)
    assert "dev ocwg0" in ssh[a1.name].run(["ip", "route", "get", first(b1.box_cidr)]).stdout.decode()
    assert f"via {a2.lan_address}" in ssh[a1.name].run(["ip", "route", "get", first(a2.box_cidr)]).stdout.decode()

    deadline = time.monotonic() + 10
    while not all(wan.status(plan, h.name, runs[h.name]).healthy for h in plan.hosts):
        assert time.monotonic() < deadline, [wan.status(plan, h.name, runs[h.name]).problems for h in plan.hosts]
    assert set(wan.status(plan, a1.name, runs[a1.name]).peers) == {b1.name, b2.name}

    keys = [secrets.open(h.keys.sealed_private) for h in plan.hosts]
    for h in plan.hosts:
        ps = ssh[h.name].run(["ps", "-eo", "pid,args"]).stdout.decode()
        assert f"{states[h.name].pid} /usr/bin/wireguard-go -f ocwg0" in ps  # its PID is the host's
        assert not any(k in ps for k in keys)
        found = ssh[h.name].run(["grep", "-rlF", "-D", "skip", keys[plan.hosts.index(h)], "/run", "/root", "/var/lib/overcloud"],
                                check=False)
        assert found.returncode == 1, found.stdout  # nowhere on the host's disk or /run

    for h in plan.hosts:
        assert wan.down(h, runs[h.name])
        left = ssh[h.name].run(["sh", "-c", f"ip -o link show ocwg0; ip route show proto {wan.ROUTE_PROTO}; "
                                "ls /run/overcloud/wan /run/wireguard 2>/dev/null; pgrep -a wireguard-go"], check=False)
        assert left.stdout.decode().strip() == "", left.stdout
        assert wan.down(h, runs[h.name]) == []
    assert not ping(a1, b2)


def test_a_rebooted_host_comes_back_with_up(wan_lab, hosts_lab):  # noqa: F811
    """A power cycle takes wireguard-go, its PID file (/run) and the host's links and routes; status
    says so, and the same up brings the host back, its peers shaking hands with it again."""
    plan, secrets, ssh, runs = wan_lab
    for h in plan.hosts:
        wan.up(plan, h.name, runs[h.name], secrets.open)
    a1, b1 = plan.hosts[0], plan.hosts[2]
    hosts_lab.reboot(b1.name)
    st = wan.status(plan, b1.name, runs[b1.name])  # the transport reconnects to the new sshd
    assert not st.interface_up and len(st.problems) == 1 and st.problems[0].startswith("interface ocwg0 is not up: ")
    ssh[b1.name].run(["sh", "-c", 'ip link add "$1" type veth peer name "$1-p" && ip addr add "$2/24" dev "$1" '
                      '&& ip link set "$1" up && ip link set "$1-p" up && sysctl -qw net.ipv4.ip_forward=1',
                      "sh", STAND_IN, first(b1.box_cidr)])
    t0 = time.monotonic()
    again = wan.up(plan, b1.name, runs[b1.name], secrets.open)
    assert again.created and again.backend == "wireguard-go"
    while ssh[a1.name].run(["ping", "-c1", "-W1", "-I", first(a1.box_cidr), first(b1.box_cidr)], check=False).returncode:
        assert time.monotonic() - t0 < 15, "a1 never reached the rebooted b1"
    print(f"\nrebooted host: up again and a1's first box ping answered {time.monotonic() - t0:.2f} s")
    assert wan.status(plan, a1.name, runs[a1.name]).peers[b1.name].fresh
