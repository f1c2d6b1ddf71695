"""Transport pieces that need no host: pins, the loop thread, messages that never carry arguments."""

from __future__ import annotations

import asyncio
import threading

import asyncssh
import pytest

from overcloud.underclouds.ssh import transport
from overcloud.underclouds.ssh.sites import SSHHostConfig


def test_a_pin_from_a_key_line_or_a_fingerprint_matches_that_key_only():
    key = asyncssh.generate_private_key("ssh-ed25519")
    other = asyncssh.generate_private_key("ssh-ed25519")
    line = key.export_public_key().decode()
    by_line = transport._Pin(line)
    by_fp = transport._Pin(key.get_fingerprint("sha256"))
    for pin in (by_line, by_fp):
        assert pin.matches(key.convert_to_public())
        assert not pin.matches(other.convert_to_public())
    assert by_line.algs == ["ssh-ed25519"] and by_line.key_type == "ssh-ed25519"
    assert by_fp.algs == []


def test_messages_name_the_program_never_its_arguments():
    assert transport._program(["psql", "--password=hunter2"]) == "psql"
    assert transport._program("curl -H 'Authorization: x' y") == "curl"
    result = transport.Completed(1, b"", b"boom\n")
    err = transport.SSHCommandError("h1 (10.0.0.1:22)", "psql", result)
    assert str(err) == "h1 (10.0.0.1:22): psql exited with 1: boom" and err.host == "h1 (10.0.0.1:22)"


def test_a_blocking_call_from_the_loop_thread_is_refused_not_deadlocked():
    async def inner():
        return transport._LOOP.call(asyncio.sleep(0), 1)

    with pytest.raises(RuntimeError, match="would deadlock"):
        transport._LOOP.call(inner(), 5)


def test_the_loop_runs_in_one_daemon_thread_and_stops_cleanly(tmp_path):
    key_file = tmp_path / "k"
    key_file.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    cfg = SSHHostConfig(name="h", address="127.0.0.1", key_file=key_file,
                        host_key=asyncssh.generate_private_key("ssh-ed25519").get_fingerprint())
    host = transport.SSHHost(cfg)
    loop = transport._LOOP.loop()
    assert transport._LOOP.loop() is loop
    threads = [t for t in threading.enumerate() if t.name == "overcloud-ssh"]
    assert len(threads) == 1 and threads[0].daemon
    transport.shutdown()
    assert not threads[0].is_alive() and loop.is_closed()
    assert not host.connected
    # a later call starts a new loop
    assert transport._LOOP.loop() is not loop
    transport.shutdown()


def test_a_forked_child_starts_its_own_loop(tmp_path):
    import os

    transport._LOOP.loop()
    pid = os.fork()
    if pid == 0:  # the child: the parent's loop thread does not exist here
        try:
            ok = transport._LOOP._loop is None and transport._LOOP.call(asyncio.sleep(0, "x"), 5) == "x"
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    transport.shutdown()
