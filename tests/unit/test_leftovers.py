"""The leftover sweeper's choices (leftovers.py) on a real repository (SQLite) and a real
SSHUnderCloud whose host is a loopback listener that drops every connection (a host that does
not answer SSH): which OverClouds' records are swept, that a silent host keeps them, and that a
live OverCloud's host is never even tried. The sweep of a host that answers is tested on the lab
(tests/integration/ssh_faults/test_ssh_faults.py, the sshd-kill test)."""

from __future__ import annotations

import socket
import threading
import uuid

import pytest

from overcloud import states
from overcloud.leftovers import DELETE_WORKFLOW, LeftoverSweeper, why_sweepable
from overcloud.repository import Repository


@pytest.fixture
def repo(tmp_path):
    r = Repository(f"sqlite:///{tmp_path / 'overcloud.db'}")
    r.upgrade()
    yield r
    r.close()


def overcloud(repo, *path: str) -> str:
    oid = uuid.uuid4().hex
    repo.create_overcloud(oid, "lab", "admin", {"sites": []})
    cur = states.CREATING
    for status in path:
        repo.set_status(oid, status, expect={cur})
        cur = status
    return oid


def test_only_overclouds_that_are_not_live_are_sweepable(repo):
    assert why_sweepable(repo, "0" * 32) == "unknown"
    for path in ([], [states.READY], [states.READY, states.DEGRADED], [states.READY, states.DELETING]):
        assert why_sweepable(repo, overcloud(repo, *path)) is None, path
    assert why_sweepable(repo, overcloud(repo, states.FAILED)) == states.FAILED  # a failed create
    assert why_sweepable(repo, overcloud(repo, states.READY, states.DELETING, states.DELETED)) == states.DELETED


def test_a_failed_delete_is_swept_only_once_its_datalake_was_preserved(repo):
    stopped = overcloud(repo, states.READY, states.DELETING, states.FAILED)
    repo.record_task(stopped, DELETE_WORKFLOW, "remove_services", "SUCCESS")
    repo.record_task(stopped, DELETE_WORKFLOW, "preserve_datalake", "FAILURE")
    assert why_sweepable(repo, stopped) is None  # its data is the user's: they retry the delete
    later = overcloud(repo, states.READY, states.DELETING, states.FAILED)
    repo.record_task(later, DELETE_WORKFLOW, "preserve_datalake", "SUCCESS")
    repo.record_task(later, DELETE_WORKFLOW, "release_boxes", "FAILURE")
    assert why_sweepable(repo, later) == states.FAILED


class DroppingHost:
    """A loopback TCP listener that counts connections and closes each at once."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


@pytest.fixture
def world(tmp_path):
    import asyncssh

    from overcloud.underclouds.ssh.driver import SSHUnderCloud
    from overcloud.underclouds.ssh.sites import SSHHostConfig, SSHSiteConfig

    key = tmp_path / "k"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(key))
    host = DroppingHost()
    cfg = SSHHostConfig(name="h1", address="127.0.0.1", port=host.port, key_file=key, host_key="SHA256:x",
                        box_cidr="10.79.1.0/24", lan_address="10.78.1.1", connect_timeout=2)
    w = SSHUnderCloud([SSHSiteConfig("ssh-a", (cfg,))], state_dir=tmp_path / "s", tower_id="0" * 16,
                      seal=str, unseal=str)
    w.dropping = host
    yield w
    w.close()
    host.sock.close()


def test_a_silent_host_keeps_the_records_and_a_live_overcloud_is_never_tried(world, repo, caplog):
    closing = threading.Event()
    sweeper = LeftoverSweeper(world, repo, interval=5, closing=closing)
    live = overcloud(repo, states.READY)
    world.touch(live, ["h1"])
    assert sweeper.run_once() == []
    assert world.dropping.accepted == 0  # READY: its own workflows own its boxes, nothing asks the host
    assert world.touched(live) == {"h1"}

    failed = overcloud(repo, states.FAILED)
    unknown = uuid.uuid4().hex
    world.touch(failed, ["h1", "gone"])  # "gone": a host no longer in the sites
    world.touch(unknown, ["h1"])
    assert set(sweeper.pending()) == {failed, unknown}
    caplog.set_level("INFO", logger="overcloud.leftovers")
    assert sweeper.run_once() == []
    tried = world.dropping.accepted
    assert tried >= 1  # one pass tries the host (once for both records)
    assert world.touched(failed) == {"h1", "gone"} and world.touched(unknown) == {"h1"}
    assert world.touched(live) == {"h1"}
    assert "not swept yet, the host does not answer" in caplog.text and "no longer in this Tower's sites" in caplog.text
    assert not [e for e in repo.events_after(failed) if e.kind == "leftovers"]  # nothing was removed

    caplog.clear()
    assert sweeper.run_once() == []  # the next interval tries again, and says nothing new
    assert world.dropping.accepted > tried
    assert "does not answer" not in caplog.text and "no longer" not in caplog.text


def test_the_sweeper_thread_stops_with_the_tower(world, repo):
    closing = threading.Event()
    sweeper = LeftoverSweeper(world, repo, interval=0.05, closing=closing)
    sweeper.start()
    closing.set()
    sweeper._thread.join(timeout=10)
    assert not sweeper._thread.is_alive()
