"""A host's user other than root (a cloud image's): the transport runs every command with
``sudo -n``. On the hosts lab: a user ``ocadmin`` with password-less sudo made inside och-a2's
own mount namespace only (copies of /etc/passwd, group, shadow and a sudoers.d bind-mounted
there; this machine's /etc is never touched), the Tower logs in as it: commands, files and
streams run as root, a whole preparation and a box work; without the sudo right the error
says so."""

from __future__ import annotations

import dataclasses
import secrets
import uuid

import pytest
from cryptography.fernet import Fernet

from overcloud.identity.secrets import SecretBox
from overcloud.underclouds.base import BoxSpec, resolve_flavor
from overcloud.underclouds.ssh.driver import SSHUnderCloud
from overcloud.underclouds.ssh.sites import SSHSiteConfig
from overcloud.underclouds.ssh.transport import SSHHost, SSHSudoError

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

HOST = "och-a2"
USER = "ocadmin"
D = "/run/lab-sudo"  # in the host's own /run (DIR/hosts/och-a2/run)

SETUP = f"""
set -e
d={D}
mkdir -p $d/home/.ssh $d/sudoers.d
cp /etc/passwd /etc/group /etc/shadow $d/
echo "{USER}:x:4242:4242:lab sudo user:$d/home:/bin/sh" >> $d/passwd
echo "{USER}:x:4242:" >> $d/group
echo "{USER}:*:19000:0:99999:7:::" >> $d/shadow
cp /root/.ssh/authorized_keys $d/home/.ssh/authorized_keys
chown -R 4242:4242 $d/home && chmod 755 $d/home && chmod 700 $d/home/.ssh && chmod 600 $d/home/.ssh/authorized_keys
echo "{USER} ALL=(ALL) NOPASSWD:ALL" > $d/sudoers.d/{USER} && chmod 440 $d/sudoers.d/{USER}
for f in passwd group shadow; do mount --bind $d/$f /etc/$f; done
mount --bind $d/sudoers.d /etc/sudoers.d
"""
CLEANUP = f"""
for m in /etc/sudoers.d /etc/shadow /etc/group /etc/passwd; do
    while grep -q " $m " /proc/self/mountinfo; do umount $m || break; done
done
rm -rf {D}
"""


@pytest.fixture
def sudo_user(hosts_lab):  # noqa: F811
    r = hosts_lab.outside(HOST, ["sh", "-c", SETUP])
    assert r.returncode == 0, r.stderr
    try:
        # inside the host only: this machine's /etc knows no such user
        assert USER not in open("/etc/passwd").read()
        yield dataclasses.replace(hosts_lab.host_config(HOST), user=USER)
    finally:
        r = hosts_lab.outside(HOST, ["sh", "-c", CLEANUP])
        assert r.returncode == 0, r.stderr


def test_a_user_with_sudo_runs_everything_as_root(sudo_user, hosts_lab, tmp_path):  # noqa: F811
    h = SSHHost(sudo_user)
    try:
        assert h.sudo
        # the login is the user's; every command is root's
        assert h.run(["id", "-un"]).stdout.decode().strip() == "root"
        name = f"/root/lab-sudo-{secrets.token_hex(4)}"
        h.put_file(name, b"written through sudo")
        assert h.get_file(name, 100) == b"written through sudo"
        assert h.run(["stat", "-c", "%U", name]).stdout.decode().strip() == "root"
        h.run(["rm", "-f", name])
        assert h.run("id -u; echo $((1 + 1))").stdout.decode().split() == ["0", "2"]
        s = h.open_stream(["sh", "-c", "id -u; cat"])
        try:
            s.sendall(b"echo\n")
            s.shutdown(1)
            data = b""
            while chunk := s.recv(100):
                data += chunk
        finally:
            s.close()
        assert data == b"0\necho\n"
        who = hosts_lab.outside(HOST, ["ps", "-eo", "user,args"]).stdout
        assert any(line.split()[0] in (USER, "4242") and "sshd" in line for line in who.splitlines()), who
    finally:
        h.close()

    # a whole preparation (bundle, agent, bridge, guard) and a box, through sudo
    box = SecretBox(Fernet.generate_key())
    w = SSHUnderCloud([SSHSiteConfig("ssh-a", (sudo_user,))], state_dir=tmp_path / "ssh",
                      tower_id=secrets.token_hex(8), seal=box.seal, unseal=box.open, bundle_cache=tmp_path / "bundle")
    try:
        w.prepare()
        oc = uuid.uuid4().hex
        site = w.sites["ssh-a"]
        boxes = site.acquire([BoxSpec(oc, "p0", "post", "ssh-a", resolve_flavor("small"))])
        try:
            s = w.session(boxes[0])
            assert s.run(["hostname"]).stdout.decode().strip() == HOST
            assert s.supervisor_running()
        finally:
            site.release(boxes)
        assert w.list_tagged(oc) == []
        w.teardown()
    finally:
        w.close()


def test_a_user_without_the_sudo_right_is_told_so(sudo_user, hosts_lab):  # noqa: F811
    r = hosts_lab.outside(HOST, ["umount", "/etc/sudoers.d"])  # the machine's: no rule for the user
    assert r.returncode == 0, r.stderr
    h = SSHHost(sudo_user)
    try:
        with pytest.raises(SSHSudoError) as err:
            h.run(["true"])
        text = str(err.value)
        assert USER in text and "sudo" in text and "password" in text and HOST in text, text
        assert not h.connected  # no connection kept
    finally:
        h.close()
