"""Hosts that come and go in the ssh world, without the lab: the WAN plan and its keys as hosts
are added and removed (addresses kept, keys forgotten, bad hosts refused with nothing changed),
a world with no ssh site at all, ``wait_ssh`` against a loopback sshd (asyncssh's server, in
this process) that starts late or pins another key, and the transport's ``sudo -n`` for a
user other than root (the commands the server receives). What the hosts do with a changed
plan is tested on the lab (tests/integration/ssh_grow)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import time

import asyncssh
import pytest

from overcloud.underclouds.base import UnderCloudError
from overcloud.underclouds.ssh.driver import SSHUnderCloud
from overcloud.underclouds.ssh.sites import SSHHostConfig, SSHSiteConfig
from overcloud.underclouds.ssh.transport import SSHHost, SSHSudoError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def client_key(tmp_path):
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / "client"
    key.write_private_key(str(path))
    return key, path


CLOSED = _free_port()  # nothing listens there: the hosts of these tests never answer


def _cfg(name: str, n: int, key_file, host_key: str = "SHA256:" + "A" * 43, **kw) -> SSHHostConfig:
    return SSHHostConfig(name=name, address=f"127.0.0.{n}", port=CLOSED, key_file=key_file, host_key=host_key,
                         lan_address=f"10.78.9.{n}", box_cidr=f"10.79.{n}.0/24", connect_timeout=2, **kw)


@pytest.fixture
def world(tmp_path, client_key):
    w = SSHUnderCloud([SSHSiteConfig("ssh-a", (_cfg("a1", 11, client_key[1]), _cfg("a2", 12, client_key[1])))],
                      state_dir=tmp_path / "s", tower_id="0" * 16, seal=lambda t: t[::-1], unseal=lambda t: t[::-1])
    yield w
    w.close()


def _keys(w) -> dict:
    return json.loads((w.state_dir / "wan-keys.json").read_text())


def test_added_and_removed_hosts_never_move_the_others_wireguard_addresses(world, client_key):
    first = {h.name: h.wg_address for h in world.wan_plan().hosts}
    assert first == {"a1": "100.79.0.1", "a2": "100.79.0.2"}  # as before: the n-th host by name
    world.add_site("cloud-1", {"tier": "cloud"})
    gen = world.plan_gen
    h = world.add_host("cloud-1", _cfg("a0", 13, client_key[1]))  # sorts first: must not take a1's address
    assert world.plan_gen == gen + 1 and h.site == "cloud-1" and not h.prepared
    plan = {x.name: x for x in world.wan_plan().hosts}
    assert {n: plan[n].wg_address for n in first} == first and plan["a0"].wg_address == "100.79.0.3"
    assert plan["a0"].site == "cloud-1" and [p.name for p in world.wan_plan().cross_site_peers("a1")] == ["a0"]
    assert set(_keys(world)) == {"a0", "a1", "a2"} and _keys(world)["a0"]["wg_address"] == "100.79.0.3"
    # the same again: the same host, the same plan
    assert world.add_host("cloud-1", _cfg("a0", 13, client_key[1])) is h and world.plan_gen == gen + 1
    world.remove_host("a0")
    assert "a0" not in world.hosts and "a0" not in _keys(world) and world.plan_gen == gen + 2
    assert {x.name: x.wg_address for x in world.wan_plan().hosts} == first
    world.remove_host("a0")  # unknown: nothing
    assert world.plan_gen == gen + 2
    # a freed address is given again; a new host of that name gets new keys
    h2 = world.add_host("cloud-1", _cfg("a0", 13, client_key[1]))
    assert world.wan_plan().host("a0").wg_address == "100.79.0.3" and h2 is not h


def test_a_keys_file_from_before_keeps_its_addresses(tmp_path, client_key):
    """wan-keys.json written before addresses were kept has none: the n-th host by name gets the
    n-th address (what it had), and from then on it is recorded."""
    from overcloud.underclouds.ssh import wan

    state = tmp_path / "s"
    state.mkdir()
    keys = {n: {"public": k.public, "sealed_private": k.sealed_private}
            for n, k in ((n, wan.make_keys(lambda t: t[::-1])) for n in ("b1", "a1"))}
    (state / "wan-keys.json").write_text(json.dumps(keys))
    w = SSHUnderCloud([SSHSiteConfig("ssh-a", (_cfg("a1", 11, client_key[1]), _cfg("b1", 12, client_key[1])))],
                      state_dir=state, tower_id="0" * 16, seal=lambda t: t[::-1], unseal=lambda t: t[::-1])
    try:
        plan = {h.name: h for h in w.wan_plan().hosts}
        assert plan["a1"].wg_address == "100.79.0.1" and plan["b1"].wg_address == "100.79.0.2"
        assert plan["a1"].keys.public == keys["a1"]["public"]  # the keys kept
        assert _keys(w)["b1"]["wg_address"] == "100.79.0.2"
    finally:
        w.close()


def test_a_bad_host_is_refused_and_nothing_changes(world, client_key):
    world.wan_plan()
    before, gen, hosts = _keys(world), world.plan_gen, dict(world.hosts)
    with pytest.raises(UnderCloudError, match="no site cloud-9"):
        world.add_host("cloud-9", _cfg("x1", 20, client_key[1]))
    world.add_site("cloud-1")
    with pytest.raises(UnderCloudError, match="overlaps"):
        world.add_host("cloud-1", dataclasses.replace(_cfg("x1", 20, client_key[1]), box_cidr="10.79.11.128/26"))
    with pytest.raises(UnderCloudError, match="lan_address"):
        world.add_host("cloud-1", SSHHostConfig(name="x2", address="127.0.0.21", key_file=client_key[1],
                                                host_key="SHA256:" + "A" * 43, box_cidr="10.79.21.0/24"))
    with pytest.raises(UnderCloudError, match="a1's already"):
        world.add_host("cloud-1", dataclasses.replace(_cfg("x3", 22, client_key[1]), address="127.0.0.11"))
    with pytest.raises(UnderCloudError, match="ssh site"):
        world.add_site("ssh-a")
    assert _keys(world) == before and world.plan_gen == gen and world.hosts == hosts
    assert world.transport.hosts == [h.ssh for h in hosts.values()]


def test_a_replaced_config_makes_a_new_host_and_keeps_its_wan_keys(world, client_key):
    world.add_site("cloud-1")
    a = world.add_host("cloud-1", _cfg("c1", 30, client_key[1]))
    public = world.wan_plan().host("c1").keys.public
    b = world.add_host("cloud-1", _cfg("c1", 30, client_key[1], cpus=4))
    assert b is not a and world.hosts["c1"] is b and b.config.cpus == 4 and b.ssh is not a.ssh
    assert world.transport.host("c1") is b.ssh
    assert world.wan_plan().host("c1").keys.public == public  # the Tower's keys, not the server's


def test_removing_a_host_strikes_it_from_the_records(world, client_key):
    world.add_site("cloud-1")
    world.add_host("cloud-1", _cfg("c1", 30, client_key[1]))
    world.touch("oc1", ["a1", "c1"])
    world.touch("oc2", ["c1"])
    world.remove_host("c1")
    assert world.touched("oc1") == {"a1"} and world.touched("oc2") == set()
    assert "oc2" not in world.touched_hosts()


def test_a_prepared_host_that_does_not_answer_is_updated_at_its_next_need(world, client_key):
    """add_host does not wait on a silent host: the update is tried (connect timeout), logged,
    and the host's next need tries again and says why."""
    a1 = world.hosts["a1"]
    a1.prepared, a1.plan_gen = True, world.plan_snapshot()[0]  # as if prepared before (nothing listens there)
    world.add_site("cloud-1")
    t0 = time.monotonic()
    world.add_host("cloud-1", _cfg("c1", 30, client_key[1]))
    assert time.monotonic() - t0 < 30
    assert a1.plan_gen != world.plan_gen and not a1.up_to_date
    with pytest.raises(UnderCloudError, match="a1"):
        a1.ensure_prepared()


def test_add_host_does_not_wait_long_for_a_host_that_hangs(tmp_path, client_key, monkeypatch):
    """A prepared host whose TCP port accepts and then says nothing (no SSH banner) costs its
    connect timeout: add_host returns after CONVERGE_WAIT, the update goes on behind it."""
    from overcloud.underclouds.ssh import driver

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepted by the kernel, never answered
    monkeypatch.setattr(driver, "CONVERGE_WAIT", 0.5)
    cfg = dataclasses.replace(_cfg("a1", 11, client_key[1]), address="127.0.0.1", port=silent.getsockname()[1],
                              connect_timeout=4)
    w = SSHUnderCloud([SSHSiteConfig("ssh-a", (cfg,))], state_dir=tmp_path / "s", tower_id="0" * 16,
                      seal=lambda t: t[::-1], unseal=lambda t: t[::-1])
    try:
        a1 = w.hosts["a1"]
        a1.prepared, a1.plan_gen = True, w.plan_snapshot()[0]
        w.add_site("cloud-1")
        t0 = time.monotonic()
        w.add_host("cloud-1", _cfg("c1", 30, client_key[1]))
        assert time.monotonic() - t0 < 3  # not the 4 s connect timeout
        assert a1.plan_gen != w.plan_gen
        threads = [t for t in threading.enumerate() if t.name == "ssh-uc-converge"]
        assert threads  # still trying a1
        for t in threads:
            t.join(15)
        assert a1.plan_gen != w.plan_gen and a1.prepared  # it never answered: its next need tries again
    finally:
        w.close()
        silent.close()


def test_a_world_with_no_ssh_site(tmp_path, client_key):
    w = SSHUnderCloud([], state_dir=tmp_path / "s", tower_id="0" * 16, seal=str, unseal=str)
    try:
        w.prepare()
        w.ensure([])
        assert w.wan_plan().hosts == () and w.hosts == {} and w.sites == {}
        assert w.list_tagged() == [] and w.sweep({"oc1"}) == [] and w.agent_calls() == {}
        assert w.health.refresh(max_age=0, wait=1) == {}
        w.add_site("cloud-1")
        assert w.site_names == {"cloud-1"} and w.describe_hosts("cloud-1") == [] and w.underlay_problems([]) == {}
        w.wan_down()
        w.teardown()
    finally:
        w.close()


# -- a loopback sshd in this process (asyncssh's server) --------------------------------------


class LoopbackSSHD:
    """An SSH server on 127.0.0.1 that records each command and answers ``sudo -n true`` as
    ``sudo_ok`` says (else what sudo says without a rule); any other command prints ``ran``."""

    def __init__(self, client_public: str, port: int | None = None):
        self.key = asyncssh.generate_private_key("ssh-ed25519")
        self.port = port or _free_port()
        self.commands: list[str] = []
        self.sudo_ok = True
        self._auth = asyncssh.import_authorized_keys(client_public)
        self._loop = asyncio.new_event_loop()
        self._server = None
        threading.Thread(target=self._loop.run_forever, daemon=True).start()

    @property
    def host_key(self) -> str:
        return self.key.export_public_key().decode().strip()

    async def _handle(self, process) -> None:
        self.commands.append(process.command)
        if process.command == "sudo -n true":
            if self.sudo_ok:
                process.exit(0)
            else:
                process.stderr.write("sudo: a password is required\n")
                process.exit(1)
            return
        try:
            await process.stdin.read()  # as a real command would: its input to the end
            process.stdout.write("ran\n")
            process.exit(0)
        except (OSError, asyncssh.Error):  # the client closed the channel first (a stream closed)
            pass

    def start(self) -> None:
        async def listen():
            self._server = await asyncssh.listen("127.0.0.1", self.port, server_host_keys=[self.key],
                                                 authorized_client_keys=self._auth, process_factory=self._handle)
        asyncio.run_coroutine_threadsafe(listen(), self._loop).result(10)

    def stop(self) -> None:
        async def close():
            if self._server is not None:
                self._server.close()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.fixture
def sshd(client_key):
    d = LoopbackSSHD(client_key[0].export_public_key().decode())
    yield d
    d.stop()


def _sshd_cfg(sshd, key_file, name="late", **kw) -> SSHHostConfig:
    return SSHHostConfig(name=name, address="127.0.0.1", port=sshd.port, key_file=key_file, host_key=sshd.host_key,
                         lan_address="10.78.9.40", box_cidr="10.79.40.0/24", connect_timeout=2, **kw)


def test_wait_ssh_retries_until_sshd_answers(world, sshd, client_key):
    world.add_site("cloud-1")
    world.add_host("cloud-1", _sshd_cfg(sshd, client_key[1]))
    threading.Timer(1.5, sshd.start).start()  # the server boots a little later
    world.wait_ssh("late", 20)
    assert world.hosts["late"].run(["true"]).stdout == b"ran\n"


def test_wait_ssh_gives_up_with_the_last_error(world, client_key):
    world.add_site("cloud-1")
    world.add_host("cloud-1", _cfg("never", 1, client_key[1]))
    t0 = time.monotonic()
    with pytest.raises(UnderCloudError) as err:
        world.wait_ssh("never", 1.5)
    assert time.monotonic() - t0 < 10
    assert "did not answer within 1.5 s" in str(err.value) and "last error" in str(err.value)
    assert "refused" in str(err.value) or "cannot connect" in str(err.value), str(err.value)


def test_wait_ssh_refuses_another_host_key_at_once(world, sshd, client_key):
    from overcloud.underclouds.ssh.transport import SSHHostKeyError

    sshd.start()
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    world.add_site("cloud-1")
    world.add_host("cloud-1", dataclasses.replace(_sshd_cfg(sshd, client_key[1], name="other"), host_key=other))
    t0 = time.monotonic()
    with pytest.raises(SSHHostKeyError):
        world.wait_ssh("other", 20)
    assert time.monotonic() - t0 < 10


def test_a_user_other_than_root_runs_every_command_through_sudo(sshd, client_key):
    sshd.start()
    h = SSHHost(_sshd_cfg(sshd, client_key[1], user="cloud"))
    try:
        h.run(["ip", "link"])
        h.run("echo $HOME")
        h.open_stream(["cat"]).close()
        h.put_file("/tmp/x", b"y")
    finally:
        h.close()
    first, *rest = sshd.commands
    assert first == "sudo -n true"  # checked once, on connecting
    assert rest[0].startswith("exec sudo -n -- timeout -k 2 ") and rest[0].endswith(" ip link"), rest[0]
    assert rest[1].startswith("exec sudo -n -- timeout ") and "sh -c 'echo $HOME'" in rest[1]
    assert rest[2] == "exec sudo -n -- cat"
    assert rest[3].startswith("exec sudo -n -- timeout ") and " sh -c " in rest[3]
    assert len(rest) == 4


def test_root_runs_commands_without_sudo(sshd, client_key):
    sshd.start()
    h = SSHHost(_sshd_cfg(sshd, client_key[1]))
    try:
        h.run(["ip", "link"])
        h.open_stream(["cat"]).close()
    finally:
        h.close()
    assert [c.split()[:2] for c in sshd.commands] == [["exec", "timeout"], ["cat"]]


def test_a_user_without_the_sudo_right_is_told_so(sshd, client_key):
    sshd.start()
    sshd.sudo_ok = False
    h = SSHHost(_sshd_cfg(sshd, client_key[1], user="cloud"))
    try:
        with pytest.raises(SSHSudoError) as err:
            h.run(["true"])
        text = str(err.value)
        assert "user 'cloud'" in text and "a password is required" in text and "NOPASSWD" in text, text
        assert sshd.commands == ["sudo -n true"] and not h.connected
    finally:
        h.close()
