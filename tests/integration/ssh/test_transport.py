"""The SSH transport against the simulated hosts: kept connections, pinning, timeouts, loss, streams."""

from __future__ import annotations

import concurrent.futures
import os
import re
import secrets
import socket
import threading
import time
from pathlib import Path

import asyncssh
import pytest

from hostslab import HOSTS

from overcloud.underclouds.ssh.transport import (
    SSHCommandError,
    SSHConnectError,
    SSHConnectionLost,
    SSHFileNotFound,
    SSHHostKeyError,
    SSHOutputTooLarge,
    SSHTimeout,
    SSHTransport,
)


def _ns(pid: str | int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def _my_namespaces() -> set[tuple[str, str]]:
    """(kind, ns) of every thread of this process: setns() is per thread, so look at all of them."""
    out = set()
    for tid in os.listdir("/proc/self/task"):
        for kind in ("net", "mnt", "uts", "pid_for_children", "ipc"):
            try:
                out.add((kind, os.readlink(f"/proc/self/task/{tid}/ns/{kind}")))
            except FileNotFoundError:  # a thread that just ended
                pass
    return out


def test_each_host_answers_with_its_own_hostname_and_run(hosts_lab):
    t = SSHTransport(hosts_lab.host_configs())
    try:
        marker = secrets.token_hex(4)
        for h in t.hosts:
            r = h.run(["hostname"])
            assert r.stdout.decode().strip() == h.name
            h.put_file(f"/run/lab-check-{marker}", h.name.encode())
        # each host's /run is its own (the lab's bind mount of its run dir), not the machine's
        for name in HOSTS:
            assert (hosts_lab.host_dir(name) / "run" / f"lab-check-{marker}").read_bytes() == name.encode()
        assert not Path(f"/run/lab-check-{marker}").exists()
        for h in t.hosts:
            assert h.get_file(f"/run/lab-check-{marker}", 100) == h.name.encode()
            assert (hosts_lab.host_dir(h.name) / "run" / "sshd.pid").exists()
            assert b"sshd.pid" in h.run(["ls", "/run"]).stdout
            h.run(["rm", f"/run/lab-check-{marker}"])
        nets = {h.name: h.run(["readlink", "/proc/self/ns/net"]).stdout.strip() for h in t.hosts}
        assert len(set(nets.values())) == len(HOSTS)
        assert _ns("self", "net").encode() not in nets.values()
    finally:
        t.close()


def test_fifty_concurrent_commands_share_one_connection(ssh_host):
    h = ssh_host("och-a2")
    started = time.monotonic()
    h.connect()
    connect_s = time.monotonic() - started
    started = time.monotonic()
    for _ in range(20):
        h.run(["true"])
    per_command = (time.monotonic() - started) / 20
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        started = time.monotonic()
        outs = list(pool.map(lambda i: h.run(["sh", "-c", 'echo "$1"; sleep 0.2', "x", str(i)]).stdout, range(50)))
        burst = time.monotonic() - started
    assert sorted(int(o) for o in outs) == list(range(50))
    assert h.connects == 1
    assert h.round_trips == 20 + 50
    # one connection on the host's side too: one per-connection sshd process ("sshd: root@notty")
    ps = h.run(["ps", "-eo", "args"]).stdout.decode().splitlines()
    assert sum(1 for line in ps if line.startswith("sshd: root@notty")) == 1
    print(f"\n[measure] connect {connect_s * 1000:.0f} ms; command on a kept connection {per_command * 1000:.1f} ms; "
          f"50 concurrent commands (each sleeping 0.2 s) {burst:.2f} s")


def test_commands_are_quoted_and_bounded(ssh_host):
    h = ssh_host()
    assert h.run(["echo", "a  b", "$HOME", "'q'", "`id`"]).stdout == b"a  b $HOME 'q' `id`\n"
    assert h.run("echo $((1+2)) | cat").stdout == b"3\n"
    assert h.run(["cat"], input=b"\x00\x01data").stdout == b"\x00\x01data"
    r = h.run(["sh", "-c", "echo out; echo err >&2; exit 7"], check=False)
    assert (r.returncode, r.stdout, r.stderr) == (7, b"out\n", b"err\n")
    with pytest.raises(SSHCommandError, match="och-a1.*sh exited with 7: err") as exc:
        h.run(["sh", "-c", "echo err >&2; exit 7"])
    assert exc.value.returncode == 7
    with pytest.raises(SSHOutputTooLarge, match="och-a1.*more than 1048576 bytes to stdout"):
        h.run(["head", "-c", "3000000", "/dev/zero"], max_output=1024 * 1024)
    assert h.run(["echo", "still usable"]).stdout == b"still usable\n"
    assert h.connects == 1


def test_put_and_get_round_trip(hosts_lab, ssh_host):
    h = ssh_host("och-b1")
    data = secrets.token_bytes(3 * 1024 * 1024)
    h.put_file("/var/lib/overcloud/test/blob.bin", data, 0o600)
    assert h.get_file("/var/lib/overcloud/test/blob.bin", len(data)) == data
    assert h.run(["stat", "-c", "%a", "/var/lib/overcloud/test/blob.bin"]).stdout == b"600\n"
    # it is the host's own /var/lib/overcloud (the lab's bind mount), not the machine's
    assert (hosts_lab.host_dir("och-b1") / "var-lib-overcloud" / "test" / "blob.bin").read_bytes() == data
    assert not Path("/var/lib/overcloud/test/blob.bin").exists()
    with pytest.raises(SSHOutputTooLarge, match="larger than 1000 bytes"):
        h.get_file("/var/lib/overcloud/test/blob.bin", 1000)
    with pytest.raises(SSHFileNotFound, match="och-b1.*no file /var/lib/overcloud/test/none"):
        h.get_file("/var/lib/overcloud/test/none", 1000)
    h.run(["rm", "-r", "/var/lib/overcloud/test"])


def test_a_stream_is_a_real_socket_carrying_bytes_both_ways(ssh_host):
    h = ssh_host("och-b2")
    payload = secrets.token_bytes(5 * 1024 * 1024)
    with h.open_stream(["sh", "-c", "cat; echo done >&2"]) as s:
        assert isinstance(s, socket.socket) and s.fileno() >= 0
        s.settimeout(10)
        got = bytearray()

        def reader():
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return
                got.extend(chunk)

        t = threading.Thread(target=reader)
        t.start()
        started = time.monotonic()
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        t.join(30)
        elapsed = time.monotonic() - started
        assert bytes(got) == payload
        assert s.wait() == 0
        assert s.stderr == b"done\n"
    print(f"\n[measure] 5 MiB through a stream and back: {elapsed:.2f} s")
    # close() without reading: the command sees EOF, ends, and the channel with it
    s = h.open_stream(["sh", "-c", "cat >/dev/null; exit 3"])
    s.sendall(b"unread")
    s.close()
    assert s.wait(10) == 3
    # the streams' session slots were given back: max_sessions commands can run at once
    with concurrent.futures.ThreadPoolExecutor(h.config.max_sessions) as pool:
        assert all(r.returncode == 0 for r in pool.map(lambda _: h.run(["true"], timeout=10), range(h.config.max_sessions)))


_RELAY = """
import os, socket, sys, threading
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
s.settimeout(None)
def up():
    while True:
        data = os.read(0, 65536)
        if not data:
            s.shutdown(socket.SHUT_WR)
            return
        s.sendall(data)
threading.Thread(target=up, daemon=True).start()
while True:
    data = s.recv(65536)
    if not data:
        break
    os.write(1, data)
"""


def test_http_through_a_stream_with_the_box_http_client(ssh_host):
    """The common BoxHttp client (httpx over connect_tcp) works over an SSH stream and a relay."""
    from overcloud.underclouds.base import BoxHttp

    h = ssh_host("och-a1")
    h.put_file("/tmp/www/hello.txt", b"hello from och-a1\n")
    h.run(["sh", "-c", "cd /tmp/www && setsid python3 -m http.server --bind 127.0.0.1 8765 </dev/null >/dev/null 2>&1 & "
                       "echo $! > /tmp/www.pid"])
    try:
        class Session(BoxHttp):
            def connect_tcp(self, host, port, timeout=2.0):
                return h.open_stream(["python3", "-c", _RELAY, str(port)], timeout=timeout)

        deadline = time.monotonic() + 10
        while True:
            try:
                status, headers, body = Session().http("GET", "http://127.0.0.1:8765/hello.txt")
                break
            except Exception:  # noqa: BLE001 - the server may not listen yet
                assert time.monotonic() < deadline, "no answer through the stream"
                time.sleep(0.2)
        assert (status, body) == (200, b"hello from och-a1\n")
    finally:
        h.run(["sh", "-c", 'kill "$(cat /tmp/www.pid)"; rm -rf /tmp/www /tmp/www.pid'])


def test_wrong_host_key_is_refused_naming_both_fingerprints(hosts_lab, ssh_host):
    other = hosts_lab.host_config("och-a2").host_key  # a real key, but another host's
    h = ssh_host("och-a1", host_key=other)
    real = asyncssh.import_public_key(hosts_lab.host_config("och-a1").host_key).get_fingerprint()
    pinned = asyncssh.import_public_key(other).get_fingerprint()
    with pytest.raises(SSHHostKeyError) as exc:
        h.run(["true"])
    msg = str(exc.value)
    assert "och-a1 (10.77.0.11:22)" in msg and real in msg and pinned in msg
    assert (exc.value.offered, exc.value.pinned) == (real, pinned)
    assert not h.connected and h.connects == 0
    # the same, pinned by fingerprint
    h2 = ssh_host("och-a1", host_key=pinned)
    with pytest.raises(SSHHostKeyError, match=re.escape(real)):
        h2.run(["true"])
    assert not h2.connected
    # and the right fingerprint is accepted
    assert ssh_host("och-a1", host_key=real).run(["hostname"]).stdout == b"och-a1\n"


def test_unknown_host_key_is_refused_even_if_known_hosts_trusts_it(hosts_lab, ssh_host, tmp_path, monkeypatch):
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    # ~/.ssh/known_hosts and ~/.ssh/config that would trust the host are never read
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    cfg = hosts_lab.host_config("och-b1")
    (home / ".ssh" / "known_hosts").write_text(f"{cfg.address} {cfg.host_key}\n")
    (home / ".ssh" / "config").write_text("Host *\n  StrictHostKeyChecking no\n")
    monkeypatch.setenv("HOME", str(home))
    h = ssh_host("och-b1", host_key=stranger)
    with pytest.raises(SSHHostKeyError, match="och-b1.*never accepted"):
        h.run(["true"])
    assert not h.connected
    # a key of a type the host does not have: nothing to compare, refused as well
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048).export_public_key().decode()
    h = ssh_host("och-b1", host_key=rsa)
    real = asyncssh.import_public_key(cfg.host_key).get_fingerprint()
    with pytest.raises(SSHHostKeyError, match=f"och-b1.*offers no ssh-rsa key but {re.escape(real)}"):
        h.run(["true"])
    assert not h.connected


def test_wrong_client_key_is_refused(ssh_host, tmp_path):
    key = tmp_path / "other_key"
    key.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    h = ssh_host("och-a2", key_file=key)
    with pytest.raises(SSHConnectError, match=f"och-a2.*authentication refused for user 'root' with key file {key}"):
        h.run(["true"])


def test_unreachable_address_times_out_naming_the_host(ssh_host):
    # 10.77.0.99 is on the lab's WAN bridge, and nothing answers there
    h = ssh_host("och-a1", name="ghost", address="10.77.0.99", connect_timeout=1.5)
    started = time.monotonic()
    with pytest.raises(SSHTimeout, match=r"ghost \(10\.77\.0\.99:22\): no SSH connection within 1\.5 s") as exc:
        h.run(["true"], timeout=5)
    assert exc.value.host == "ghost (10.77.0.99:22)"
    assert not h.connected
    # a call's own timeout shorter than the connect timeout: it says the command never started, and why
    h = ssh_host("och-a1", name="ghost", address="10.77.0.99", connect_timeout=20)
    with pytest.raises(SSHTimeout, match=r"ghost \(10\.77\.0\.99:22\): true did not start within 1 s \(connecting\)"):
        h.run(["true"], timeout=1)


def test_a_command_timeout_names_the_host_and_ends_the_command(ssh_host):
    h = ssh_host("och-a2")
    mark = secrets.randbelow(10**6)
    with pytest.raises(SSHTimeout, match="och-a2.*sleep did not finish within 1 s"):
        h.run(["sleep", f"30.{mark}"], timeout=1)
    deadline = time.monotonic() + 10
    while f"sleep 30.{mark}".encode() in h.run(["ps", "-eo", "args"]).stdout:
        assert time.monotonic() < deadline, "the timed-out command still runs on the host"
        time.sleep(0.2)


def test_sshd_killed_mid_command_then_reconnects_after_restart(hosts_lab, ssh_host):
    h = ssh_host("och-b2")
    h.connect()
    errors: list[BaseException] = []

    def long_command():
        try:
            h.run(["sleep", "20"], timeout=30)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            errors.append(exc)

    t = threading.Thread(target=long_command)
    t.start()
    time.sleep(0.5)
    try:
        hosts_lab.stop_sshd("och-b2")
        t.join(30)
        assert len(errors) == 1 and isinstance(errors[0], SSHConnectionLost), errors
        assert "och-b2 (10.77.0.14:22): connection lost while sleep ran" in str(errors[0])
        assert not h.connected
        with pytest.raises(SSHConnectError, match="och-b2.*cannot connect"):
            h.run(["true"])
    finally:
        hosts_lab.start_sshd("och-b2")
    assert h.run(["hostname"]).stdout == b"och-b2\n"
    assert h.connects == 2


def test_the_tower_process_never_enters_the_hosts_namespaces(hosts_lab):
    """Everything runs in sshd's children on the host; this process stays in its own namespaces."""
    before = _my_namespaces()
    own = {kind: _ns("self", kind) for kind in ("net", "mnt", "uts", "pid")}
    t = SSHTransport(hosts_lab.host_configs())
    try:
        for h in t.hosts:
            init = hosts_lab.pids(h.name)["init"]
            host_ns = {kind: _ns(init, kind) for kind in ("net", "mnt", "uts", "pid")}
            assert all(host_ns[k] != own[k] for k in own), "the lab host shares a namespace with this process"
            h.put_file("/tmp/probe", b"x")
            h.get_file("/tmp/probe", 10)
            seen = h.run(["sh", "-c", "for k in net mnt uts pid; do readlink /proc/self/ns/$k; done"]).stdout.decode().split()
            assert seen == [host_ns[k] for k in ("net", "mnt", "uts", "pid")]
            # a stream's command: find it from the outside and walk up to the host's sshd
            with h.open_stream(["sh", "-c", "echo $$; exec cat"]) as s:
                s.settimeout(10)
                remote_pid = int(s.recv(100).split()[0])
                pid = next(
                    int(p) for p in os.listdir("/proc")
                    if p.isdigit() and _nspid(p) == [int(p), remote_pid] and _ns(p, "net") == host_ns["net"]
                )
                chain = _ancestors(pid)
                assert hosts_lab.pids(h.name)["sshd"] in chain
                assert os.getpid() not in chain
        assert _my_namespaces() == before
        assert {kind: _ns("self", kind) for kind in own} == own
        assert not Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()
    finally:
        t.close()


def _nspid(pid: str) -> list[int]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    except OSError:
        pass
    return []


def _ancestors(pid: int) -> list[int]:
    chain = []
    while pid > 1:
        chain.append(pid)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                pid = int(line.split()[1])
                break
    return chain
