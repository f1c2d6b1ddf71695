"""The lab's sites file is a valid ssh sites definition, and each host is what the file says."""

from __future__ import annotations

import ipaddress

from hostslab import SITES

from overcloud.underclouds.ssh.sites import ssh_sites_from_env
from overcloud.underclouds.ssh.transport import SSHTransport


def test_the_lab_sites_file_loads_and_every_pin_is_the_hosts_real_key(hosts_lab):
    sites = ssh_sites_from_env({"OVERCLOUD_SITES_FILE": str(hosts_lab.sites_file)})
    assert {s.name: tuple(h.name for h in s.hosts) for s in sites} == SITES
    assert {s.name: s.labels["overcloud.io/tier"] for s in sites} == {"ssh-a": "cloud", "ssh-b": "edge"}
    hosts = [h for s in sites for h in s.hosts]
    for h in hosts:
        assert ipaddress.ip_address(h.address) in ipaddress.ip_network("10.77.0.0/24")
        assert ipaddress.ip_network(h.box_cidr).subnet_of(ipaddress.ip_network("10.79.0.0/16"))
        assert h.key_file == hosts_lab.dir / "client_key"
        assert h.host_key.split()[:2] == (hosts_lab.host_dir(h.name) / "etc-ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        assert h.cpus > 0 and h.memory_mb > 0
    t = SSHTransport(hosts)
    try:
        answers = t.run_all(["hostname"])
        assert {name: r.stdout.decode().strip() for name, r in answers.items()} == {h.name: h.name for h in hosts}
    finally:
        t.close()


def test_hosts_of_a_site_share_a_lan_and_sites_meet_only_on_the_wan(hosts_lab):
    cfg = {h.name: h for h in hosts_lab.host_configs()}
    t = SSHTransport(cfg.values())
    probe = 'timeout 2 bash -c "exec 3<>/dev/tcp/$1/22" 2>/dev/null && echo open || echo closed'

    def reach(src: str, addr: str) -> str:
        return t.host(src).run(["sh", "-c", probe, "probe", addr]).stdout.decode().strip()

    try:
        assert reach("och-a1", cfg["och-a2"].lan_address) == "open"
        assert reach("och-b2", cfg["och-b1"].lan_address) == "open"
        assert reach("och-a1", cfg["och-b1"].lan_address) == "closed"  # another site's private network
        assert reach("och-a1", cfg["och-b1"].address) == "open"  # the WAN
    finally:
        t.close()
