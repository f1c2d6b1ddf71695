"""Simulated remote hosts for tests: ``scripts/hosts-lab.sh`` driven from Python.

One lab per machine at a time (its names are fixed), so one per test session: every test that
needs remote hosts uses the ``hosts_lab`` fixture below (import it into a conftest). Several
conftests may import it; the lab is made once per process and removed after the last user.
A test that needs the lab fails (never skips) when the lab cannot start.

``HostsLab.outside(host, argv)`` runs a command in a host's namespaces with nsenter: for checks
from the outside only (the Tower reaches hosts over SSH alone).
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "hosts-lab.sh"
HOSTS = ("och-a1", "och-a2", "och-b1", "och-b2")
SITES = {"ssh-a": ("och-a1", "och-a2"), "ssh-b": ("och-b1", "och-b2")}
BRIDGES = ("ocw-wan", "ocw-lan-a", "ocw-lan-b")
MARKER = Path("/run/overcloud-hosts-lab.dir")


class HostsLab:
    def __init__(self, directory: Path):
        self.dir = Path(directory).resolve()

    # lifecycle -----------------------------------------------------------------------------------

    def _script(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )

    def up(self) -> HostsLab:
        r = self._script("up", str(self.dir))
        if r.returncode != 0:
            raise RuntimeError(f"scripts/hosts-lab.sh up {self.dir} failed ({r.returncode}): {r.stderr.strip()}")
        return self

    def down(self) -> None:
        r = self._script("down", str(self.dir))
        if r.returncode != 0:
            raise RuntimeError(f"scripts/hosts-lab.sh down {self.dir} failed ({r.returncode}): {r.stderr.strip()}")

    def stop_sshd(self, host: str) -> None:
        r = self._script("stop-sshd", str(self.dir), host)
        if r.returncode != 0:
            raise RuntimeError(f"stop-sshd {host}: {r.stderr.strip()}")

    def start_sshd(self, host: str) -> None:
        r = self._script("start-sshd", str(self.dir), host)
        if r.returncode != 0:
            raise RuntimeError(f"start-sshd {host}: {r.stderr.strip()}")

    def reboot(self, host: str) -> None:
        """A power cycle of one host: its processes, /run, /tmp, namespaces and links go; its disk stays."""
        r = self._script("reboot", str(self.dir), host)
        if r.returncode != 0:
            raise RuntimeError(f"reboot {host}: {r.stderr.strip()}")

    # what it made --------------------------------------------------------------------------------

    @property
    def sites_file(self) -> Path:
        return self.dir / "sites.yaml"

    def host_dir(self, host: str) -> Path:
        return self.dir / "hosts" / host

    def pids(self, host: str) -> dict[str, int]:
        """The host's recorded processes by role (unshare, init, nsenter, sshd): the last of each."""
        out: dict[str, int] = {}
        path = self.host_dir(host) / "pids"
        if path.exists():
            for line in path.read_text().splitlines():
                role, pid, _ = (line.split() + ["", "", ""])[:3]
                if pid:
                    out[role] = int(pid)
        return out

    def sites(self):
        from overcloud.underclouds.ssh.sites import load_ssh_sites_file

        return load_ssh_sites_file(self.sites_file)

    def host_configs(self):
        return [h for s in self.sites() for h in s.hosts]

    def host_config(self, name: str):
        return next(h for h in self.host_configs() if h.name == name)

    def outside(self, host: str, argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
        """A command in the host's namespaces, entered from the root namespace (test checks only)."""
        init = self.pids(host)["init"]
        return subprocess.run(
            ["nsenter", "-t", str(init), "--net", "--mount", "--uts", "--pid", "--", *argv],
            capture_output=True, text=True, timeout=30, **kw,
        )


def leftovers(directory: Path | None = None) -> list[str]:
    """What a lab could leave on this machine: namespaces, links, processes, mounts, the marker."""
    found: list[str] = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    found += [f"netns {n}" for n in netns if n in HOSTS]
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout.splitlines()
    for line in links:
        name = line.split()[0].split("@")[0]
        if name in BRIDGES or any(name in (f"{h}-w", f"{h}-l") for h in HOSTS):
            found.append(f"link {name}")
    if directory is not None:
        d = str(Path(directory).resolve())
        mine = _ancestry(os.getpid())
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) in mine:
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and d in cmd:
                found.append(f"process {pid} {cmd[:100]}")
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        found += [f"mount {m.split()[4]}" for m in mounts if m.split()[4].startswith(d + "/")]
        # processes whose namespaces are a lab host's: sshd and init are recognizable by their cmdline
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"/usr/sbin/sshd\0-D\0-e\0-f\0/etc/ssh/sshd_config" in cmd or b"os.wait()" in cmd:
                try:
                    hostname = subprocess.run(
                        ["nsenter", "-t", pid, "--uts", "hostname"], capture_output=True, text=True, timeout=5
                    ).stdout.strip()
                except subprocess.SubprocessError:
                    continue
                if hostname in HOSTS:
                    found.append(f"process {pid} on {hostname}")
    if MARKER.exists():
        found.append(f"marker {MARKER}")
    return found


def _ancestry(pid: int) -> set[int]:
    """This process and its ancestors (their command lines may name the lab's directory)."""
    out = set()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return out


_lock = threading.Lock()
_shared: dict[str, object] = {"lab": None, "users": 0}


def acquire_lab(tmp_path_factory) -> HostsLab:
    """The process's lab, made on first use."""
    with _lock:
        if _shared["lab"] is None:
            lab = HostsLab(tmp_path_factory.mktemp("hosts-lab"))
            lab.up()
            _shared["lab"] = lab
        _shared["users"] = int(_shared["users"]) + 1  # type: ignore[arg-type]
        return _shared["lab"]  # type: ignore[return-value]


def release_lab() -> None:
    """Remove the lab when its last user is done; ssh connections to it are closed first."""
    with _lock:
        _shared["users"] = int(_shared["users"]) - 1  # type: ignore[arg-type]
        if _shared["users"] == 0 and _shared["lab"] is not None:
            lab: HostsLab = _shared["lab"]  # type: ignore[assignment]
            _shared["lab"] = None
            try:
                from overcloud.underclouds.ssh.transport import shutdown

                shutdown()
            finally:
                lab.down()


@pytest.fixture(scope="session")
def hosts_lab(tmp_path_factory):
    """Two ssh sites of two simulated hosts each (scripts/hosts-lab.sh), for the whole session."""
    if os.geteuid() != 0:
        pytest.fail("the hosts lab needs root (network namespaces, bridges, mounts)")
    lab = acquire_lab(tmp_path_factory)
    yield lab
    release_lab()
