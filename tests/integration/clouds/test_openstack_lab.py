"""The OpenStack lab itself (scripts/openstack-lab.sh, docs/underclouds.md "OpenStack lab").

Through openstacksdk only, as a user of the cloud would: a network, subnet, security group, key
pair and a server with cloud-init user data that makes a user with a key; the server goes ACTIVE
as a namespace instance at its fixed IP, SSH to that address as that user works; delete leaves
no namespace or bridge. Then the lab's own rules: one lab per machine (a second `up` is refused,
naming the DIR), `down` leaves no process, namespace, bridge or marker, a stale marker does not
block the next `up`. Times are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import asyncssh
import pytest
import yaml

from overcloud.underclouds.cloud.config import load_cloud_sites_file

REPO = Path(__file__).resolve().parents[3]
OSLAB = REPO / "scripts" / "openstack-lab.sh"
MARKER = Path("/run/overcloud-openstack-lab.dir")


def _connect(clouds_file: Path, cloud: str):
    import openstack.config
    import openstack.connection

    region = openstack.config.OpenStackConfig(config_files=[str(clouds_file)], vendor_files=[], secure_files=[],
                                              load_envvars=False).get_one(cloud=cloud)
    return openstack.connection.Connection(config=region)


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _links() -> set[str]:
    return {p.name for p in Path("/sys/class/net").iterdir()}


def _starttime(pid: int) -> str | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def _rooted_in(root: str) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.readlink(p / "root") == root:
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


def _status(lab) -> dict:
    r = subprocess.run(["bash", str(OSLAB), "status", str(lab.dir)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


async def _ssh(address: str, user: str, key: asyncssh.SSHKey, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with asyncssh.connect(address, username=user, client_keys=[key], known_hosts=None,
                                        connect_timeout=5) as conn:
                r = await conn.run("id -un; sudo -n id -un; hostname", check=True)
                return r.stdout
        except (OSError, asyncssh.Error):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def test_server_with_user_data_is_reachable_by_ssh_and_delete_leaves_nothing(openstack_lab):
    # the password entry and the application credential both authenticate
    for cloud in ("overcloud-lab", "overcloud-lab-appcred"):
        c = _connect(openstack_lab.clouds_file, cloud)
        assert c.authorize()
        c.close()
    conn = _connect(openstack_lab.clouds_file, "overcloud-lab-appcred")
    tag = secrets.token_hex(4)
    name = f"labtest-{tag}"
    third = 200 + secrets.randbelow(50)
    key = asyncssh.generate_private_key("ssh-ed25519")
    pub = key.export_public_key().decode().strip()
    user_data = (
        "#cloud-config\n"
        "users:\n"
        "  - name: labuser\n"
        '    sudo: "ALL=(ALL) NOPASSWD:ALL"\n'
        "    shell: /bin/bash\n"
        "    lock_passwd: true\n"
        f'    ssh_authorized_keys: ["{pub}"]\n'
    )
    made: dict[str, object] = {}
    try:
        t0 = time.monotonic()
        net = made["network"] = conn.network.create_network(name=name)
        conn.network.create_subnet(network_id=net.id, name=name, ip_version=4, cidr=f"10.90.{third}.0/24")
        sg = made["sg"] = conn.network.create_security_group(name=name)
        conn.network.create_security_group_rule(security_group_id=sg.id, direction="ingress", protocol="tcp",
                                                port_range_min=22, port_range_max=22,
                                                remote_ip_prefix="10.90.0.0/16")
        kp = made["keypair"] = conn.compute.create_keypair(name=name, public_key=pub)
        image = conn.image.find_image("debian-12-overcloud", ignore_missing=False)
        flavor = conn.compute.find_flavor("m1.small", ignore_missing=False)
        assert (flavor.vcpus, flavor.ram) == (1, 512)
        server = made["server"] = conn.compute.create_server(
            name=name, image_id=image.id, flavor_id=flavor.id, networks=[{"uuid": net.id}],
            security_groups=[{"name": sg.name}], key_name=kp.name, tags=[f"labtest:{tag}"],
            user_data=base64.b64encode(user_data.encode()).decode())
        server = conn.compute.wait_for_server(server, status="ACTIVE", wait=300)
        active_s = time.monotonic() - t0
        address = server.addresses[name][0]["addr"]
        assert address.startswith(f"10.90.{third}.")
        assert server.power_state == 1  # RUNNING: the instance's init lives
        instance = "osi-" + server.id.replace("-", "")[:8]
        bridge = "osb-" + net.id.replace("-", "")[:8]
        assert instance in _netns()
        addrs = subprocess.run(["ip", "-4", "-br", "addr", "show", "dev", bridge], capture_output=True,
                               text=True, check=True).stdout
        assert f"10.90.{third}.1/24" in addrs  # the subnet's gateway, in the root namespace
        assert [s.id for s in conn.compute.servers(tags=f"labtest:{tag}")] == [server.id]

        out = asyncio.run(_ssh(address, "labuser", key))
        assert out.split()[:3] == ["labuser", "root", name]
        ssh_s = time.monotonic() - t0

        t1 = time.monotonic()
        conn.compute.delete_server(server)
        conn.compute.wait_for_delete(server, wait=120)
        del made["server"]
        delete_s = time.monotonic() - t1
        assert instance not in _netns()
        assert bridge not in _links()  # it had only this instance
        print(f"\nOpenStack lab: ACTIVE {active_s:.1f} s, SSH as the user-data user {ssh_s:.1f} s after create, "
              f"delete confirmed {delete_s:.1f} s")
    finally:
        if "server" in made:
            conn.compute.delete_server(made["server"], ignore_missing=True)
            conn.compute.wait_for_delete(made["server"], wait=120)
        if "keypair" in made:
            conn.compute.delete_keypair(made["keypair"], ignore_missing=True)
        if "sg" in made:
            conn.network.delete_security_group(made["sg"], ignore_missing=True)
        if "network" in made:
            conn.network.delete_network(made["network"], ignore_missing=True)
        conn.close()
    conn = _connect(openstack_lab.clouds_file, "overcloud-lab")
    assert not list(conn.compute.servers(tags=f"labtest:{tag}"))
    assert not list(conn.network.networks(name=name))
    assert not list(conn.network.security_groups(name=name))
    conn.close()


def test_power_state_is_what_runs_and_start_boots_it_again(openstack_lab):
    """An instance whose processes die (a crash) is SHUTDOWN for Nova, which stops the server
    (SHUTOFF); starting it boots the namespace instance again, cloud-init and SSH included."""
    conn = _connect(openstack_lab.clouds_file, "overcloud-lab")
    name = f"labtest-{secrets.token_hex(4)}"
    key = asyncssh.generate_private_key("ssh-ed25519")
    pub = key.export_public_key().decode().strip()
    user_data = ("#cloud-config\nusers:\n  - name: labuser\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n"
                 f"    lock_passwd: true\n    ssh_authorized_keys: [\"{pub}\"]\n")
    net = conn.network.create_network(name=name)
    server = None
    try:
        conn.network.create_subnet(network_id=net.id, name=name, ip_version=4,
                                   cidr=f"10.90.{200 + secrets.randbelow(50)}.0/24")
        server = conn.compute.create_server(
            name=name, image_id=conn.image.find_image("debian-12-overcloud", ignore_missing=False).id,
            flavor_id=conn.compute.find_flavor("m1.small", ignore_missing=False).id,
            networks=[{"uuid": net.id}], user_data=base64.b64encode(user_data.encode()).decode())
        server = conn.compute.wait_for_server(server, status="ACTIVE", wait=300)
        address = server.addresses[name][0]["addr"]
        instance = "osi-" + server.id.replace("-", "")[:8]
        pids = (openstack_lab.dir / "instances" / instance / "pids").read_text().split()
        init = int(pids[pids.index("init") + 1])
        os.kill(init, 9)  # its PID namespace ends with it: every process of the instance
        t0 = time.monotonic()
        server = conn.compute.wait_for_server(server, status="SHUTOFF", wait=120, interval=2)
        print(f"\nOpenStack lab: a crashed instance seen SHUTOFF after {time.monotonic() - t0:.1f} s")
        assert server.power_state == 4  # SHUTDOWN
        assert instance not in _netns()  # stopping cleaned what the crash left
        conn.compute.start_server(server)
        server = conn.compute.wait_for_server(server, status="ACTIVE", wait=300)
        assert server.power_state == 1
        assert asyncio.run(_ssh(address, "labuser", key)).split()[:2] == ["labuser", "root"]
    finally:
        if server is not None:
            conn.compute.delete_server(server, ignore_missing=True)
            conn.compute.wait_for_delete(server, wait=120)
        conn.network.delete_network(net, ignore_missing=True)
        conn.close()


def test_a_second_up_is_refused_naming_the_lab(openstack_lab, tmp_path):
    other = tmp_path / "other-lab"
    r = subprocess.run(["bash", str(OSLAB), "up", str(other)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert str(openstack_lab.dir) in r.stderr
    assert not (other / "clouds.yaml").exists()
    assert _status(openstack_lab)["up"] is True


def test_down_leaves_nothing_a_failed_up_neither_then_up_again_past_a_stale_marker(openstack_lab):
    st = _status(openstack_lab)
    procs = [(p["pid"], _starttime(p["pid"])) for p in st["processes"] if p["alive"]]
    assert {p["role"] for p in st["processes"]} >= {"keystone", "nova-api", "nova-compute", "neutron-server",
                                                     "rabbitmq", "mariadb", "placement", "glance-api"}
    chroot = json.loads((openstack_lab.dir / "lab.json").read_text())["chroot"]
    t0 = time.monotonic()
    openstack_lab.down()
    down_s = time.monotonic() - t0
    assert [p for p, s in procs if s is not None and _starttime(p) == s] == []
    assert _rooted_in(chroot) == []
    assert not [n for n in _netns() if n.startswith("osi-")]
    assert not [n for n in _links() if n.startswith("osb-")]
    assert not MARKER.exists()
    assert _status(openstack_lab)["up"] is False

    # an up that fails half way (Nova's API port taken once the services are starting) removes
    # what it made and names the step
    import socket

    p = subprocess.Popen(["bash", str(OSLAB), "up", str(openstack_lab.dir)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    squatter = socket.socket()
    try:
        deadline = time.monotonic() + 120
        while not (openstack_lab.dir / "pids").exists():  # the port check is behind: services start
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() else "no start"
            time.sleep(0.05)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", 24303))
        squatter.listen()
        _, err = p.communicate(timeout=600)
    finally:
        squatter.close()
    assert p.returncode != 0
    assert "nova-api" in err and "removing what it made" in err
    assert _rooted_in(chroot) == []
    assert not MARKER.exists()
    assert not any(_starttime(int(line.split()[1])) == line.split()[2]
                   for line in (openstack_lab.dir / "pids").read_text().splitlines()) \
        if (openstack_lab.dir / "pids").exists() else True

    # a lab whose processes were all killed without `down` (a machine's session ending) leaves its
    # marker: the next up goes ahead
    MARKER.write_text(f"{openstack_lab.dir}\n")
    t1 = time.monotonic()
    openstack_lab.up()
    up_s = time.monotonic() - t1
    assert _status(openstack_lab)["up"] is True
    sites = {s.name: s for s in load_cloud_sites_file(openstack_lab.sites_file)}
    site = sites["openstack-1"]
    assert (site.kind, site.cloud, site.image, site.user) == ("openstack", "overcloud-lab", "debian-12-overcloud",
                                                               "overcloud")
    assert site.network.cidr_pool == "10.90.0.0/16" and site.box_pool == "10.96.0.0/16"
    clouds = yaml.safe_load(openstack_lab.clouds_file.read_text())["clouds"]
    assert set(clouds) == {"overcloud-lab", "overcloud-lab-appcred"}  # the admin is in its own file
    admin_file = openstack_lab.dir / "clouds-admin.yaml"
    assert set(yaml.safe_load(admin_file.read_text())["clouds"]) == {"overcloud-lab-admin"}
    for f in (openstack_lab.clouds_file, admin_file):
        assert oct(f.stat().st_mode & 0o777) == "0o600"
    print(f"\nOpenStack lab: down {down_s:.1f} s, up again {up_s:.1f} s (chroot cached)")


@pytest.fixture(autouse=True)
def _needs_root():
    assert os.geteuid() == 0, "the OpenStack lab needs root"
