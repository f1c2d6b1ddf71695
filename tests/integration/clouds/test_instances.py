"""Namespace instances (lab/instance.py): what the cloud labs boot a server as.

Real instances: the cached rootfs (built on first use, ~70 s once per machine), overlayfs,
namespaces, cloud-init from the NoCloud seed, sshd. The user data is the drivers' own
(overcloud.underclouds.cloud.userdata), reached over SSH with asyncssh pinning the host key it gave.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import asyncssh
import pytest

from overcloud.underclouds.cloud import userdata
from overcloud.underclouds.ssh import hostprep

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "lab"))
import instance  # noqa: E402  (lab/instance.py)

pytestmark = pytest.mark.root

# addresses of these tests: inside the AWS lab's VPC range, far from what its provider allocates first
NET_A = ("h5t-a", "10.91.250.1/24", "10.91.250.5/24")
NET_B = ("h5t-b", "10.91.251.1/24", "10.91.251.5/24")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    client_path, client_pub = userdata.client_key(d)
    return {"client": asyncssh.read_private_key(str(client_path)), "client_pub": client_pub,
            "host": userdata.new_host_key()}


def our_user_data(keys) -> str:
    return userdata.user_data("overcloud", keys["client_pub"], keys["host"])


def ssh_run(address: str, keys, commands: list[str]) -> list[asyncssh.SSHCompletedProcess]:
    """Each command over one SSH connection as `overcloud`, the host key pinned (no TOFU)."""

    async def go():
        host_key = asyncssh.import_public_key(keys["host"].public)
        async with asyncssh.connect(address, username="overcloud", client_keys=[keys["client"]],
                                    known_hosts=([host_key], [], []), connect_timeout=10) as conn:
            return [await conn.run(c, check=False) for c in commands]

    return asyncio.run(go())


def leftovers(name: str, state_dir: Path, bridge: str, pids: list[int]) -> list[str]:
    """What of an instance is still on the machine."""
    left = []
    if Path("/run/netns", name).exists():
        left.append(f"netns {name}")
    for link in (bridge, instance._host_veth(name)):
        if Path("/sys/class/net", link).exists():
            left.append(f"link {link}")
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat[stat.rindex(")") + 2] != "Z":  # (a zombie is dead: its parent has not reaped it yet)
                left.append(f"process {pid}: {stat}")
    for h in Path("/sys/fs/cgroup").iterdir():
        if (h / instance.CGROUP_PARENT / name).exists():
            left.append(f"cgroup {h / instance.CGROUP_PARENT / name}")
    needle = str(state_dir / name)
    for mi in Path("/proc").glob("[0-9]*/mountinfo"):
        with contextlib.suppress(OSError):
            if needle in mi.read_text():
                left.append(f"a mount of {needle} in {mi}")
    return left


def guard_bridges() -> set[str]:
    r = subprocess.run(["nft", "-j", "list", "set", "inet", instance.NFT_TABLE, "bridges"], capture_output=True, text=True)
    return set() if r.returncode != 0 else instance._guard_elements(r.stdout)


def test_schema_accepts_our_user_data_and_refuses_broken_ones(keys):
    assert instance.schema_check(our_user_data(keys)) == []
    problems = instance.schema_check("#cloud-config\nusers: 5\n")
    assert problems and any("users" in p for p in problems), problems
    assert instance.schema_check("#cloud-config\nusers: [\n")  # not YAML
    r = subprocess.run([sys.executable, str(REPO / "lab/instance.py"), "schema", "/dev/stdin"],
                       input="#cloud-config\nssh_keys: 3\n", capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "ssh_keys" in r.stdout


def test_boot_ssh_sudo_boxes_then_kill_leaves_nothing(tmp_path, keys):
    br, gw, addr = NET_A
    name = "h5t-inst1"
    ud = tmp_path / "user-data"
    ud.write_text(our_user_data(keys))
    state = tmp_path / "instances"
    r = subprocess.run([sys.executable, str(REPO / "lab/instance.py"), "boot", "--name", name, "--state-dir",
                        str(state), "--bridge", br, "--gateway", gw, "--address", addr, "--user-data", str(ud)],
                       capture_output=True, text=True, timeout=300)
    pids = [int(line.split()[1]) for line in (state / name / "pids").read_text().splitlines()] \
        if (state / name / "pids").exists() else []
    try:
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["name"] == name and info["address"] == "10.91.250.5" and info["pid"] in pids
        assert info["cloud_init_errors"] == [], info
        listed = instance.list_instances(state)
        assert [(i["name"], i["running"], i["address"]) for i in listed] == [(name, True, addr)]

        out = ssh_run("10.91.250.5", keys, [
            "id -un; hostname",
            "sudo -n id -u",
            # a box: a nested network namespace with a veth, nft inside it, reached from the instance
            "sudo -n sh -c 'ip netns add b1 && ip link add vb1 type veth peer name eth0 netns b1 && "
            "ip addr add 10.5.0.1/24 dev vb1 && ip link set vb1 up && ip -n b1 addr add 10.5.0.2/24 dev eth0 && "
            "ip -n b1 link set eth0 up && ip netns exec b1 nft add table inet box && "
            "ip netns exec b1 nft list tables && ping -c1 -W2 10.5.0.2 >/dev/null && echo box-ok; ip netns del b1'",
            # the process runtime's sandbox: setpriv, unshare, bwrap with a user namespace (not possible chrooted)
            "sudo -n unshare --mount --propagation private sh -c 'bwrap --unshare-user --uid 1000 --gid 1000 "
            "--unshare-pid --cap-drop ALL --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib "
            "--symlink usr/lib64 /lib64 --proc /proc --dev /dev --new-session id -u'",
            "sudo -n ls /etc/ssh/ | grep ^ssh_host_",
            "cat /proc/1/cmdline | tr '\\0' ' '",
        ])
        assert [o.exit_status for o in out] == [0] * len(out), [(o.stdout, o.stderr) for o in out]
        assert out[0].stdout.split() == ["overcloud", name]
        assert out[1].stdout.strip() == "0"
        assert "box-ok" in out[2].stdout and "table inet box" in out[2].stdout
        assert out[3].stdout.strip() == "1000"
        assert "ssh_host_ed25519_key" in out[4].stdout  # the key the user data gave (pinned above)
        assert "overcloud-lab-init" in out[5].stdout  # its own PID namespace: our init is PID 1

        # the ssh path's host check (the packages the Tower requires) passes on the instance
        def run(argv, input=None):
            import shlex

            return ssh_run("10.91.250.5", keys, [shlex.join(argv)])[0]

        facts = hostprep.check_host(run, name)
        assert facts.os_id == "debian" and facts.python

        # a second boot of a running instance is refused
        with pytest.raises(instance.InstanceError, match="runs already"):
            instance.boot(name, state, br, gw, addr, our_user_data(keys))
    finally:
        k = subprocess.run([sys.executable, str(REPO / "lab/instance.py"), "kill", "--name", name, "--state-dir",
                            str(state)], capture_output=True, text=True, timeout=60)
    assert k.returncode == 0, k.stderr
    assert leftovers(name, state, br, pids) == []
    assert br not in guard_bridges()  # (the table itself goes with the last bridge: another lab may be up)
    assert instance.list_instances(state) == []
    instance.kill(name, state)  # idempotent


@contextlib.contextmanager
def listener(ns: str | None, address: str, port: int):
    """A TCP listener (in network namespace ns, or the root one) that answers "hi"."""
    code = ("import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(({address!r}, {port})); s.listen(8); print('ready', flush=True)\n"
            "while True:\n c, _ = s.accept(); c.sendall(b'hi'); c.close()\n")
    argv = (["ip", "netns", "exec", ns] if ns else []) + [sys.executable, "-c", code]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        yield
    finally:
        p.kill()
        p.wait()


def test_guard_instances_reach_instances_but_not_the_machine_or_beyond(tmp_path, keys):
    """Between lab bridges: yes. To the root namespace's own addresses, or through it to any other
    link (here a namespace of the test's own on a link that is not a lab bridge): no. The Tower
    (the root namespace) reaches instances, and their replies come back."""
    state = tmp_path / "instances"
    ud = our_user_data(keys)
    out_ns, out_link = "h5t-out", "h5t-o0"
    subprocess.run(["ip", "netns", "add", out_ns], check=True)
    try:
        subprocess.run(["ip", "link", "add", out_link, "type", "veth", "peer", "name", "eth0", "netns", out_ns], check=True)
        subprocess.run(["ip", "addr", "add", "10.91.252.1/24", "dev", out_link], check=True)
        subprocess.run(["ip", "link", "set", out_link, "up"], check=True)
        subprocess.run(["ip", "-n", out_ns, "addr", "add", "10.91.252.2/24", "dev", "eth0"], check=True)
        subprocess.run(["ip", "-n", out_ns, "link", "set", "eth0", "up"], check=True)
        subprocess.run(["ip", "-n", out_ns, "route", "add", "default", "via", "10.91.252.1"], check=True)
        a = instance.boot("h5t-ga", state, NET_A[0], NET_A[1], NET_A[2], ud)
        b = instance.boot("h5t-gb", state, NET_B[0], NET_B[1], NET_B[2], ud)
        probe = ("python3 -c \"import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)"
                 ".recv(2); print('open')\nexcept OSError as e: print('closed', e)\" ")
        with listener(None, "10.91.250.1", 47301), listener(out_ns, "10.91.252.2", 47302):
            # controls: the root namespace reaches both listeners and both instances
            for host, port in (("10.91.250.1", 47301), ("10.91.252.2", 47302), (b["address"], 22)):
                socket.create_connection((host, port), 2).close()
            out = ssh_run(a["address"], keys, [
                probe + f"{b['address']} 22",          # another instance, on another lab bridge
                probe + "10.91.250.1 47301",           # the machine itself (its bridge address)
                probe + "10.91.252.2 47302",           # beyond the machine's lab bridges
            ])
        results = [o.stdout.strip() for o in out]
        assert results[0] == "open", results
        assert results[1].startswith("closed") and results[2].startswith("closed"), results
    finally:
        for n in ("h5t-ga", "h5t-gb"):
            instance.kill(n, state)
        subprocess.run(["ip", "netns", "delete", out_ns], check=False)
        subprocess.run(["ip", "link", "delete", out_link], capture_output=True, check=False)
    for n, br in (("h5t-ga", NET_A[0]), ("h5t-gb", NET_B[0])):
        assert leftovers(n, state, br, []) == []


def test_boot_refuses_bad_input_with_what_to_do(tmp_path):
    with pytest.raises(instance.InstanceError, match="netns name"):
        instance.boot("Bad_Name", tmp_path, "h5t-a", "10.91.250.1/24", "10.91.250.5/24", "#cloud-config\n")
    with pytest.raises(instance.InstanceError, match="gateway's network"):
        instance.boot("h5t-x", tmp_path, "h5t-a", "10.91.250.1/24", "10.91.9.5/24", "#cloud-config\n")
    assert not Path("/run/netns/h5t-x").exists()


def test_instance_carries_a_box_made_by_the_host_agent_over_ssh(tmp_path, keys):
    """The ssh path's own host side on an instance: the bundle installed by hostprep over SSH as
    `overcloud` with sudo -n, then the agent's ensure-site, make-box (a nested namespace, its
    supervisord run by the instance's Debian python3, cgroups), destroy-box and teardown-site."""
    import secrets
    import shlex
    import uuid

    from overcloud.underclouds.ssh import bundle

    br, gw, addr = NET_A
    name = "h5t-box1"
    state = tmp_path / "instances"
    info = instance.boot(name, state, br, gw, addr, our_user_data(keys))
    try:
        class R:
            def __init__(self, p):
                self.stdout, self.stderr, self.returncode = p.stdout or b"", p.stderr or b"", p.exit_status

        async def go_run(argv, input):
            host_key = asyncssh.import_public_key(keys["host"].public)
            async with asyncssh.connect(info["address"], username="overcloud", client_keys=[keys["client"]],
                                        known_hosts=([host_key], [], [])) as conn:
                return await conn.run("sudo -n " + shlex.join(argv), input=input, encoding=None, check=False)

        def run(argv, input=None, timeout=120):
            return R(asyncio.run(go_run(argv, input)))

        art = bundle.host_bundle(tmp_path / "bundle-cache")
        tower_id = secrets.token_hex(8)
        installed = hostprep.install_bundle(run, art.path, art.sha256, tower_id=tower_id, host=name)
        assert installed.transferred
        site = {"name": "h5t-site", "bridge": "ocsbi", "cidr": "10.97.250.0/24"}
        base = {"tower_id": tower_id, "sites": [site], "overlay_cidr": "10.250.233.0/24", "max_boxes": 4}

        def agent(op, req=None):
            r = run(hostprep.agent_command(installed.path, op), json.dumps({**base, **(req or {})}).encode())
            try:
                return json.loads(r.stdout)
            except ValueError:
                raise AssertionError(f"agent {op}: {r.stdout[-500:]!r} {r.stderr[-2000:]!r}") from None

        assert agent("ensure-site")["ok"]
        oc = uuid.uuid4().hex
        made = agent("make-box", {"specs": [{"overcloud_id": oc, "name": "c1", "role": "cluster",
                                             "site": "h5t-site", "size": "small"}]})
        assert made["ok"], made
        [box] = made["result"]["boxes"]
        out = ssh_run(info["address"], keys, [
            f"sudo -n ip netns exec {box['handle']} ip -4 -o addr show eth0",
            f"for p in $(sudo -n ip netns pids {box['handle']}); do sudo -n tr '\\0' ' ' < /proc/$p/cmdline; echo; done",
        ])
        assert box["address"] in out[0].stdout, out[0]
        assert "supervisord" in out[1].stdout and "/usr/bin/python3 -IS" in out[1].stdout, out[1].stdout
        # the box's cgroups are made in the instance's own cgroup namespace
        assert Path(f"/sys/fs/cgroup/memory/{instance.CGROUP_PARENT}/{name}/overcloud/{box['handle']}").is_dir()
        assert not Path(f"/sys/fs/cgroup/memory/overcloud/{box['handle']}").exists()
        gone = agent("destroy-box", {"boxes": made["result"]["boxes"]})
        assert gone["ok"] and gone["result"]["destroyed"] == [box["handle"]], gone
        assert agent("teardown-site")["ok"]
    finally:
        instance.kill(name, state)
    assert leftovers(name, state, br, []) == []


def test_a_netns_of_that_name_that_is_not_ours_is_refused_and_left_alone(tmp_path):
    subprocess.run(["ip", "netns", "add", "h5t-y"], check=True)
    try:
        with pytest.raises(instance.InstanceError, match="not this instance's"):
            instance.boot("h5t-y", tmp_path, "h5t-a", "10.91.250.1/24", "10.91.250.6/24", "#cloud-config\n")
        instance.kill("h5t-y", tmp_path)
        assert Path("/run/netns/h5t-y").exists()
        assert not Path("/sys/class/net/h5t-a").exists()
    finally:
        subprocess.run(["ip", "netns", "delete", "h5t-y"], check=False)
