"""OpenStackProvider against the OpenStack lab (real Keystone, Nova with our compute driver booting
namespace instances, Neutron with our ML2 driver, Glance, Placement).

Each test has its own Tower id, so it sees only what it made; at its end nothing of that Tower
may be left, listed by tag through the APIs. Calls and waiting are printed (no assertion on time).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import secrets
import socket
import time
import uuid

import pytest
import yaml

from overcloud.underclouds.base import UnderCloudError
from overcloud.underclouds.cloud.config import load_cloud_sites_file
from overcloud.underclouds.cloud.openstack import OpenStackProvider, os_tag
from overcloud.underclouds.cloud.provider import (
    TAG_BOX, TAG_BOX_CIDR, TAG_HOST_KEY, TAG_OVERCLOUD, TAG_TOWER, CloudQuotaExceeded, CloudServerFailed,
    CloudUnavailable, ServerRequest, network_name, server_name,
)
from overcloud.underclouds.cloud.userdata import client_key, new_host_key, user_data

SITE = "openstack-1"
FAST_RETRY = {"attempts": 4, "base": 0.2, "cap": 2.0}


def _connect(clouds_file, cloud):
    import openstack.config
    import openstack.connection
    region = openstack.config.OpenStackConfig(config_files=[str(clouds_file)], vendor_files=[], secure_files=[],
                                              load_envvars=False).get_one(cloud=cloud)
    return openstack.connection.Connection(config=region)


@pytest.fixture(scope="module")
def site_config(openstack_lab):
    sites = {s.name: s for s in load_cloud_sites_file(openstack_lab.sites_file)}
    return sites[SITE]


@pytest.fixture(scope="module")
def admin(openstack_lab):
    path = openstack_lab.admin_clouds_file
    if not path.is_file():  # the lab keeps its admin entry in clouds.yaml
        path = openstack_lab.clouds_file
    clouds = yaml.safe_load(path.read_text())["clouds"]
    conn = _connect(path, "overcloud-lab-admin" if "overcloud-lab-admin" in clouds else next(iter(clouds)))
    yield conn
    conn.close()


@pytest.fixture
def make_provider(site_config):
    """Providers of one Tower id for this test; at the end everything of that Tower is swept and
    the listing by tag must be empty."""
    tower = secrets.token_hex(8)
    made: list[OpenStackProvider] = []

    def make(config=None, tower_id=None) -> OpenStackProvider:
        p = OpenStackProvider(config or site_config, tower_id or tower)
        p.retry = dict(FAST_RETRY)
        made.append(p)
        return p

    yield make
    p = OpenStackProvider(site_config, tower)
    left = p.list_tagged()
    if left:
        p.sweep({r.overcloud_id for r in left})
    assert p.list_tagged() == [], "left after the test's sweep"
    for q in made:
        q.close()
    p.close()


@pytest.fixture(scope="module")
def tower_key(tmp_path_factory):
    _path, public = client_key(tmp_path_factory.mktemp("towerkey"))
    return public


def _requests(cfg, oc: str, boxes: list[str], tower_key: str, flavor="small", tower_id="") -> list[ServerRequest]:
    pool = list(ipaddress.IPv4Network(cfg.box_pool).subnets(new_prefix=26))
    start = int(oc[:6], 16) % (len(pool) - len(boxes))
    out = []
    for i, box in enumerate(boxes):
        hk = new_host_key()
        name = server_name(oc, box)
        out.append(ServerRequest(
            overcloud_id=oc, box=box, name=name, flavor=flavor if isinstance(flavor, str) else flavor[i],
            user_data=user_data(cfg.user, tower_key, hk, hostname=name),
            tags={TAG_OVERCLOUD: oc, TAG_TOWER: tower_id, TAG_BOX: box, TAG_HOST_KEY: hk.public,
                  TAG_BOX_CIDR: str(pool[start + i])}))
    return out


def _sshd_answers(address: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, 22), timeout=2) as s:
                return s.recv(64).startswith(b"SSH-")
        except OSError:
            time.sleep(0.5)
    return False


class Meter:
    """API calls and seconds (and seconds waiting on the cloud) of a stretch of provider calls."""

    def __init__(self, p: OpenStackProvider):
        self.p = p
        self.rows: list[tuple[str, int, float, float]] = []

    def __call__(self, label, fn, *args, **kw):
        before = self.p.stats.snapshot()
        t0 = time.monotonic()
        try:
            return fn(*args, **kw)
        finally:
            after = self.p.stats.snapshot()
            self.rows.append((label, after["calls"] - before["calls"], time.monotonic() - t0,
                              after["wait_s"] - before["wait_s"]))

    def show(self):
        for label, calls, secs, waited in self.rows:
            print(f"  {label:28s} {calls:4d} calls {secs:7.2f} s (waiting on the cloud {waited:6.2f} s)")


def _kinds(p, oc):
    out: dict[str, int] = {}
    for r in p.list_tagged(oc):
        out[r.kind] = out.get(r.kind, 0) + 1
    return out


def test_make_find_delete_everything(make_provider, site_config, tower_key, admin):
    p = make_provider()
    oc = uuid.uuid4().hex
    m = Meter(p)
    m("check", p.check)
    lim = m("limits", p.limits)
    assert lim.flavors["small"][0] >= 1 and lim.max_instances is not None
    assert {"networks", "ports", "security_groups"} <= set(lim.quotas), lim.quotas
    net = m("ensure_network", p.ensure_network, oc, tower_key)
    assert ipaddress.IPv4Network(net.cidr).subnet_of(ipaddress.IPv4Network(site_config.network.cidr_pool))
    m("allow_wan_peers", p.allow_wan_peers, oc, ["192.0.2.10/32"])
    reqs = _requests(site_config, oc, ["p0", "c1", "c2", "c3"], tower_key, tower_id=p.tower_id)
    made = m("create_servers (4)", p.create_servers, net, reqs)
    assert [s.name for s in made] == [r.name for r in reqs]
    up = m("wait_servers (4)", p.wait_servers, [s.id for s in made], 300)
    for s, r in zip(up, reqs):
        assert s.status == "active" and s.box == r.box
        assert ipaddress.IPv4Address(s.private_address) in ipaddress.IPv4Network(net.cidr)
        assert s.tags[TAG_HOST_KEY] == r.tags[TAG_HOST_KEY] and s.tags[TAG_BOX_CIDR] == r.tags[TAG_BOX_CIDR]
        assert s.tags[TAG_OVERCLOUD] == oc and s.tags[TAG_TOWER] == p.tower_id
    # the namespace instances really booted the user data far enough for sshd to answer
    assert all(_sshd_answers(s.private_address) for s in up)

    # idempotent: the same calls again find everything, make nothing
    again = m("ensure_network again", p.ensure_network, oc, tower_key)
    assert again.ids == net.ids and again.cidr == net.cidr
    assert [s.id for s in m("create_servers again", p.create_servers, net, reqs)] == [s.id for s in made]
    servers = [s for s in admin.compute.servers(all_projects=True, tags=os_tag(TAG_OVERCLOUD, oc))]
    assert sorted(s.name for s in servers) == sorted(r.name for r in reqs)

    # what the cloud holds: tags on every Neutron resource, the rules, the ports' address pairs
    kinds = _kinds(p, oc)
    assert kinds == {"server": 4, "port": 4, "security_group": 1, "subnet": 1, "network": 1, "key_pair": 1}, kinds
    rules = list(admin.network.security_group_rules(security_group_id=net.ids["security_group"]))
    got = {(r.protocol, r.port_range_min, r.remote_ip_prefix, r.remote_group_id) for r in rules if r.direction == "ingress"}
    assert ("tcp", 22, site_config.ssh_cidrs[0], None) in got
    assert ("udp", 4789, None, net.ids["security_group"]) in got
    assert ("udp", 51820, "192.0.2.10/32", None) in got
    ports = {pt.name: pt for pt in admin.network.ports(network_id=net.ids["network"]) if pt.name}
    assert ports[reqs[0].name].allowed_address_pairs[0]["ip_address"] == reqs[0].tags[TAG_BOX_CIDR]
    assert {s.name for s in p.list_servers()} == {r.name for r in reqs}

    m("delete_servers (4)", p.delete_servers, [s.id for s in made], 300)
    assert p.list_servers(oc) == []
    assert _kinds(p, oc) == {"security_group": 1, "subnet": 1, "network": 1, "key_pair": 1}  # the ports went too
    m("delete_network", p.delete_network, oc, 120)
    m("delete_network again", p.delete_network, oc, 120)
    m("delete_servers again", p.delete_servers, [s.id for s in made], 60)
    assert p.list_tagged(oc) == []
    print("\nOpenStack provider, 4 servers:")
    m.show()


def test_resume_after_a_crash_half_way(make_provider, site_config, tower_key, admin):
    """A Tower died after making the network (untagged, as a crash between Neutron's create and
    the tagging leaves it), one server, and the port of the second: a new provider with the same
    Tower id finds all of it and makes only what is missing."""
    oc = uuid.uuid4().hex
    first = make_provider()
    marker = first._marker(oc)
    member = first._connect()
    untagged = member.network.create_network(name=network_name(oc), description=marker)
    net1 = first.ensure_network(oc, tower_key)
    assert net1.ids["network"] == untagged.id
    reqs = _requests(site_config, oc, ["p0", "c1"], tower_key, tower_id=first.tower_id)
    [s0] = first.create_servers(net1, reqs[:1])
    first._make_port(net1, reqs[1])
    first.close()  # the crash

    second = make_provider()
    net2 = second.ensure_network(oc, tower_key)
    assert net2.ids == net1.ids and net2.cidr == net1.cidr
    made = second.create_servers(net2, reqs)
    assert made[0].id == s0.id
    up = second.wait_servers([s.id for s in made], 300)
    assert [s.status for s in up] == ["active", "active"]
    names = [s.name for s in admin.compute.servers(all_projects=True, tags=os_tag(TAG_OVERCLOUD, oc))]
    assert sorted(names) == sorted(r.name for r in reqs)  # one server per name, no duplicate
    ports = [pt.name for pt in admin.network.ports(network_id=net2.ids["network"]) if pt.name]
    assert sorted(ports) == sorted(r.name for r in reqs)
    assert set(admin.network.get_network(untagged.id).tags) >= {os_tag(TAG_OVERCLOUD, oc), os_tag(TAG_TOWER, second.tower_id)}
    gone = second.sweep({oc})
    assert {r.kind for r in gone} >= {"server", "network", "port", "security_group", "key_pair"}
    assert second.list_tagged() == []


@pytest.fixture
def project_quota(admin, site_config):
    """Set the member project's Nova quotas for one test; the old values come back after it."""
    probe = OpenStackProvider(site_config, "0" * 16)
    project = probe._connect().current_project_id
    probe.close()
    before = admin.compute.get_quota_set(project)
    before_net = admin.network.get_quota(project)
    changed: dict[str, int] = {}
    changed_net: dict[str, int] = {}

    def set_(network: bool = False, **values):
        if network:
            changed_net.update({k: getattr(before_net, k) for k in values if k not in changed_net})
            admin.network.update_quota(project, **values)
        else:
            changed.update({k: getattr(before, k) for k in values if k not in changed})
            admin.compute.update_quota_set(project, **values)

    yield set_
    if changed:
        admin.compute.update_quota_set(project, **changed)
    if changed_net:
        admin.network.update_quota(project, **changed_net)


def test_quota_exceeded_before_anything_is_made(make_provider, site_config, tower_key, project_quota):
    p = make_provider()
    oc = uuid.uuid4().hex
    used = p.limits().used_instances or 0
    project_quota(instances=used + 1)
    reqs = _requests(site_config, oc, ["p0", "c1", "c2", "c3"], tower_key, tower_id=p.tower_id)
    with pytest.raises(CloudQuotaExceeded) as err:
        p.check_quota(oc, reqs)
    assert err.value.numbers["instances"] == {"limit": used + 1, "used": used, "asked": 4}
    assert "instances" in str(err.value)
    assert p.list_tagged(oc) == []  # nothing made

    # Neutron's quotas count too: no room for one more network
    nets = p.limits().quotas["networks"]["used"]
    project_quota(network=True, networks=nets)
    with pytest.raises(CloudQuotaExceeded) as err:
        p.check_quota(oc, reqs[:1])
    assert err.value.numbers["networks"] == {"limit": nets, "used": nets, "asked": 1}
    assert p.list_tagged(oc) == []
    project_quota(network=True, networks=nets + 1)

    # Nova's own refusal (another user took the quota between check and create) is the same error
    net = p.ensure_network(oc, tower_key)
    with pytest.raises(CloudQuotaExceeded) as err:
        for r in reqs:
            p.create_servers(net, [r])
    assert err.value.numbers["instances"]["limit"] == used + 1
    print("\nquota refusal:", json.dumps(err.value.numbers), str(err.value))


@pytest.fixture
def nowhere_flavor(admin):
    """A flavor no compute host can take (it requires a trait none has): the scheduler finds no
    valid host and Nova puts the server in ERROR with that fault."""
    f = admin.compute.create_flavor(name=f"oc-nowhere-{secrets.token_hex(3)}", ram=256, vcpus=1, disk=1)
    admin.compute.create_flavor_extra_specs(f, {"trait:CUSTOM_OVERCLOUD_NOWHERE": "required"})
    yield f.name
    admin.compute.delete_flavor(f, ignore_missing=True)


def test_server_in_error_is_reported_then_everything_deleted(make_provider, site_config, tower_key, nowhere_flavor):
    cfg = dataclasses.replace(site_config, flavors={**site_config.flavors, "large": nowhere_flavor})
    p = make_provider(cfg)
    oc = uuid.uuid4().hex
    net = p.ensure_network(oc, tower_key)
    reqs = _requests(cfg, oc, ["p0", "c1"], tower_key, flavor=["small", "large"], tower_id=p.tower_id)
    made = p.create_servers(net, reqs)
    with pytest.raises(CloudServerFailed) as err:
        p.wait_servers([s.id for s in made], 300)
    assert err.value.server == made[1].id
    assert "valid host" in (err.value.fault or "") and "valid host" in str(err.value)
    print("\nERROR server:", err.value)
    # the revert: everything made goes, confirmed
    p.delete_servers([s.id for s in made], 300)
    p.delete_network(oc, 120)
    assert p.list_tagged(oc) == []


def test_keystone_down_half_way(openstack_lab, make_provider, site_config, tower_key, caplog):
    """Keystone stops after the network is made: a provider that needs a token (a Tower that
    started meanwhile) retries, then fails with a reason and no secret; once Keystone is back,
    everything made is deleted."""
    caplog.set_level(logging.DEBUG)
    p = make_provider()
    oc = uuid.uuid4().hex
    net = p.ensure_network(oc, tower_key)
    reqs = _requests(site_config, oc, ["p0"], tower_key, tower_id=p.tower_id)
    made = p.create_servers(net, reqs)
    openstack_lab.stop_keystone()
    try:
        fresh = make_provider()
        with pytest.raises(CloudUnavailable) as err:
            fresh.wait_servers([s.id for s in made], 120)
        assert fresh.stats.retries == FAST_RETRY["attempts"] - 1
        assert "does not answer" in str(err.value)
        # the provider that holds a token: the services may still accept it (their token cache)
        try:
            p.wait_servers([s.id for s in made], 60)
            print("\nwith Keystone down, a provider holding a token still worked")
        except UnderCloudError as exc:
            print(f"\nwith Keystone down, a provider holding a token failed: {exc}")
    finally:
        openstack_lab.start_keystone()
    clouds = yaml.safe_load(openstack_lab.clouds_file.read_text())["clouds"]
    for entry in clouds.values():
        for k, v in (entry.get("auth") or {}).items():
            if "secret" in k or "password" in k:
                assert str(v) not in str(err.value) and str(v) not in caplog.text
    after = make_provider()
    after.delete_servers([s.id for s in made], 300)
    after.delete_network(oc, 120)
    assert after.list_tagged(oc) == []


def test_application_credential_and_a_wrong_secret(openstack_lab, make_provider, site_config, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    clouds = yaml.safe_load(openstack_lab.clouds_file.read_text())
    name = next(n for n, c in clouds["clouds"].items() if c.get("auth_type") == "v3applicationcredential")
    good = make_provider(dataclasses.replace(site_config, cloud=name))
    good.check()  # the application credential works on its own (member role)
    assert good.list_servers() == []
    secret = clouds["clouds"][name]["auth"]["application_credential_secret"]
    wrong = f"wrong-{secrets.token_hex(12)}"
    clouds["clouds"][name]["auth"]["application_credential_secret"] = wrong
    (tmp_path / "clouds.yaml").write_text(yaml.safe_dump(clouds))
    bad = make_provider(dataclasses.replace(site_config, cloud=name, clouds_file=tmp_path / "clouds.yaml"))
    with pytest.raises(CloudUnavailable) as err:
        bad.check()
    text = str(err.value)
    assert "refused the credentials" in text and name in text
    assert bad.stats.retries == 0  # a 401 is not retried
    for s in (secret, wrong):
        assert s not in text and s not in caplog.text
    print("\nwrong secret:", text)


@pytest.fixture
def external_network(admin):
    """An external network as a cloud's public one (Neutron only: no instance is on it, nothing is
    routed off the machine); 203.0.113.0/24 is a documentation range."""
    net = admin.network.create_network(name=f"oc-test-ext-{secrets.token_hex(3)}", is_router_external=True)
    admin.network.create_subnet(network_id=net.id, ip_version=4, cidr="203.0.113.0/24", enable_dhcp=False)
    yield net.name
    for port in admin.network.ports(network_id=net.id):  # gateway ports of routers a failed test left
        if port.device_owner == "network:router_gateway":
            admin.network.update_router(port.device_id, external_gateway_info={})
    admin.network.delete_network(net, ignore_missing=True)


def test_router_and_floating_ips(make_provider, site_config, tower_key, external_network):
    cfg = dataclasses.replace(site_config, network=dataclasses.replace(
        site_config.network, external_network=external_network, floating_ip=True))
    p = make_provider(cfg)
    oc = uuid.uuid4().hex
    m = Meter(p)
    net = m("ensure_network (router)", p.ensure_network, oc, tower_key)
    assert "router" in net.ids
    assert m("ensure_network again", p.ensure_network, oc, tower_key).ids == net.ids  # one interface, one router
    reqs = _requests(cfg, oc, ["p0", "c1"], tower_key, tower_id=p.tower_id)
    made = m("create_servers (2, FIPs)", p.create_servers, net, reqs)
    up = m("wait_servers (2)", p.wait_servers, [s.id for s in made], 300)
    for s in up:
        assert ipaddress.IPv4Address(s.public_address) in ipaddress.IPv4Network("203.0.113.0/24")
        assert ipaddress.IPv4Address(s.private_address) in ipaddress.IPv4Network(net.cidr)
    assert {s.public_address for s in p.list_servers(oc)} == {s.public_address for s in up}
    kinds = _kinds(p, oc)
    assert kinds == {"server": 2, "port": 2, "floating_ip": 2, "router": 1, "security_group": 1, "subnet": 1,
                     "network": 1, "key_pair": 1}, kinds
    m("delete_servers (2, FIPs)", p.delete_servers, [s.id for s in made], 300)
    m("delete_network (router)", p.delete_network, oc, 120)
    assert p.list_tagged(oc) == []
    print("\nOpenStack provider with router and floating IPs:")
    m.show()
