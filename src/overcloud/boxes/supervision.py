"""One supervisord per box: it keeps the box's processes alive and outlives
the Tower.

Layout of a box's state directory (``<state_dir>/boxes/<handle>/``)::

    supervisord.conf   unix socket only, includes programs/*.conf
    supervisord.pid
    programs/*.conf    one [program:x] per file
    logs/              supervisord.log and every program's stdout/stderr

Its XML-RPC socket is ``/run/overcloud/<handle>.sock`` (directory mode 0700).

supervisord is started through ``sh -c 'echo $$ > cgroup.procs; exec ip
netns exec <handle> supervisord ...'`` so the box's cgroup holds it before
it forks anything. ``ip netns exec`` bind-mounts ``/etc/netns/<handle>/``
files at process start, so those are written first and later edited in
place.

Overlay health: rather than restarting supervisord to add an
``[inet_http_server]`` on the overlay address (a restart would restart
every program and expose the control API on the overlay),
:meth:`BoxSupervisor.enable_inet` adds a tiny read-only TCP responder
program (``overcloud-health``) bound to ``<overlay address>:9001``.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from overcloud.boxes.cgroups import Cgroups
from overcloud.boxes.netns import NetnsTransport

logger = logging.getLogger(__name__)

HEALTH_PORT = 9001
HEALTH_PROGRAM = "overcloud-health"
ETC_NETNS = Path("/etc/netns")
SOCK_DIR = Path("/run/overcloud")
_BIN = Path(sys.executable).parent
SUPERVISORD = str(_BIN / "supervisord")
RESOLV_CONF = "# written by OverCloud: no nameserver inside a box\noptions timeout:1 attempts:1\n"


ALREADY_ADDED, BAD_NAME = 90, 10  # supervisor.xmlrpc.Faults
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _box_lock(handle: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(handle, threading.Lock())


class SupervisionError(Exception):
    pass


def _rpc_proxy(sock_path: Path) -> Any:
    # imported lazily: only the Tower's box code needs supervisor's client
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{sock_path}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def _hosts_text(entries: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    pairs = entries.items() if isinstance(entries, Mapping) else entries
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{address}\t{name}" for name, address in pairs]
    return "\n".join(lines) + "\n"


class BoxSupervisor:
    """The supervisord of one box, reached over its unix socket."""

    def __init__(self, handle: str, box_dir: Path, cgroups: Cgroups | None = None):
        self.handle = handle
        self.box_dir = Path(box_dir)
        self.cgroups = cgroups or Cgroups()
        self.transport = NetnsTransport(handle)

    # -- paths ---------------------------------------------------------
    @property
    def conf_path(self) -> Path:
        return self.box_dir / "supervisord.conf"

    @property
    def sock_path(self) -> Path:
        # not under box_dir: a unix socket path must stay under 108 bytes, and state dirs
        # may be deep. Handles are unique per host, so one flat root-only directory serves all.
        return SOCK_DIR / f"{self.handle}.sock"

    @property
    def programs_dir(self) -> Path:
        return self.box_dir / "programs"

    @property
    def log_dir(self) -> Path:
        return self.box_dir / "logs"

    @property
    def etc_dir(self) -> Path:
        return ETC_NETNS / self.handle

    # -- files ---------------------------------------------------------
    def _conf_text(self, what: str) -> str:
        """supervisord.conf: unix socket only (mode 0700), logs and pidfile in the box dir,
        programs from programs/*.conf."""
        return f"""\
; written by OverCloud for {what}
[unix_http_server]
file={self.sock_path}
chmod=0700

[supervisord]
logfile={self.log_dir}/supervisord.log
logfile_maxbytes=5MB
logfile_backups=1
pidfile={self.box_dir}/supervisord.pid
childlogdir={self.log_dir}
directory={self.box_dir}
identifier={self.handle}
nodaemon=false
minfds=1024

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{self.sock_path}

[include]
files={self.programs_dir}/*.conf
"""

    def _write_conf(self, what: str) -> None:
        for d in (self.box_dir, self.programs_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.box_dir, 0o700)
        SOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.conf_path.write_text(self._conf_text(what))

    def write_files(self, hosts: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        """supervisord.conf and /etc/netns/<handle>/{hosts,resolv.conf}."""
        self._write_conf(f"box {self.handle}")
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        # world-readable on purpose, whatever the Tower's umask (077): every process of the box,
        # sandboxed workloads under their own uid included, resolves names through them
        os.chmod(self.etc_dir, 0o755)
        (self.etc_dir / "resolv.conf").write_text(RESOLV_CONF)
        if not (self.etc_dir / "hosts").exists():
            (self.etc_dir / "hosts").write_text(_hosts_text(hosts))
        else:
            self.set_hosts(hosts)
        for name in ("resolv.conf", "hosts"):
            os.chmod(self.etc_dir / name, 0o644)

    def set_hosts(self, entries: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        """Rewrite the box's /etc/hosts (name -> address) in place, keeping
        the inode that running processes have bind-mounted."""
        path = self.etc_dir / "hosts"
        text = _hosts_text(entries).encode()
        with open(path, "r+b") as f:
            f.seek(0)
            f.write(text)
            f.truncate()

    # -- process -------------------------------------------------------
    def rpc(self) -> Any:
        return _rpc_proxy(self.sock_path)

    def is_running(self) -> bool:
        try:
            return self.rpc().supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def start(self) -> None:
        """Launch supervisord in the box (inside its cgroup); returns once it
        has daemonized. Does not wait for it to answer: see wait_ready."""
        if self.is_running():
            return
        try:
            self.sock_path.unlink()
        except FileNotFoundError:
            pass
        into_cgroup = "; ".join(f"echo $$ > {shlex.quote(str(f))}" for f in self.cgroups.procs_files(self.handle))
        script = (
            f"{into_cgroup}; exec ip netns exec {shlex.quote(self.handle)} "
            f"{shlex.quote(SUPERVISORD)} -c {shlex.quote(str(self.conf_path))}"
        )
        proc = subprocess.run(
            ["sh", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            timeout=10,
        )
        if proc.returncode != 0:
            raise SupervisionError(f"supervisord in {self.handle} failed to start: {proc.stderr.decode().strip()}")

    def wait_ready(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.sock_path.exists() and self.is_running():
                return
            if time.monotonic() > deadline:
                raise SupervisionError(f"supervisord in {self.handle} not RUNNING after {timeout:.1f}s")
            time.sleep(0.01)

    # -- programs ------------------------------------------------------
    def add_program(
        self,
        name: str,
        command: str | list[str],
        *,
        directory: str | None = None,
        environment: Mapping[str, str] | None = None,
        autorestart: bool = True,
        startsecs: int = 1,
        startretries: int = 3,
        stopsignal: str = "TERM",
    ) -> None:
        """Write programs/<name>.conf and start it (no-op when unchanged)."""
        if not isinstance(command, str):
            command = shlex.join(command)
        # supervisord expands %(name)s in these values: a literal % must be doubled
        command = command.replace("%", "%%")
        lines = [
            f"[program:{name}]",
            f"command={command}",
            f"autorestart={'true' if autorestart else 'false'}",
            f"startsecs={startsecs}",
            f"startretries={startretries}",
            f"stopsignal={stopsignal}",
            "stopasgroup=true",
            "killasgroup=true",
            f"stdout_logfile={self.log_dir}/{name}.out.log",
            f"stderr_logfile={self.log_dir}/{name}.err.log",
            "stdout_logfile_maxbytes=5MB",
            "stderr_logfile_maxbytes=5MB",
        ]
        if directory:
            lines.append(f"directory={directory}")
        if environment:
            env = ",".join(f'{k}="{v.replace("%", "%%")}"' for k, v in environment.items())
            lines.append(f"environment={env}")
        (self.programs_dir / f"{name}.conf").write_text("\n".join(lines) + "\n")
        self._update()

    def remove_program(self, name: str) -> None:
        try:
            (self.programs_dir / f"{name}.conf").unlink()
        except FileNotFoundError:
            pass
        self._update()

    def _update(self) -> None:
        """What ``supervisorctl update`` does: apply programs/*.conf changes.

        Serialised per box: two workflow tasks (DataLake and Fabric run in parallel) adding
        programs to one box would otherwise both see the other's new program as "added"."""
        with _box_lock(self.handle):
            server = self.rpc()
            added, changed, removed = server.supervisor.reloadConfig()[0]
            for group in changed + removed:
                try:
                    server.supervisor.stopProcessGroup(group)
                except xmlrpc.client.Fault:
                    pass
                try:
                    server.supervisor.removeProcessGroup(group)
                except xmlrpc.client.Fault as exc:
                    if exc.faultCode != BAD_NAME:
                        raise
            for group in changed + added:
                try:
                    server.supervisor.addProcessGroup(group)
                except xmlrpc.client.Fault as exc:
                    if exc.faultCode != ALREADY_ADDED:  # added meanwhile by another caller: fine
                        raise

    def remove_programs(self, names: Iterable[str], timeout: float = 10.0) -> list[str]:
        """Stop (with each program's own stopsignal) and remove the named programs that exist;
        returns their names. All are signalled at once, and their exit is polled, rather than
        waiting on supervisord's one-second ticks program by program."""
        states = self.program_states()
        ours = [n for n in names if n in states]
        rpc = self.rpc().supervisor
        for name in ours:
            try:
                rpc.stopProcess(name, False)
            except xmlrpc.client.Fault:
                pass  # not running
        deadline = time.monotonic() + timeout
        while any(self.program_states().get(n) in ("RUNNING", "STARTING", "STOPPING", "BACKOFF") for n in ours):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        for name in ours:
            self.remove_program(name)
        return ours

    def program_states(self) -> dict[str, str]:
        """Program name -> supervisor state name (RUNNING, STARTING, ...)."""
        return {p["name"]: p["statename"] for p in self.rpc().supervisor.getAllProcessInfo()}

    def enable_inet(self, overlay_ip: str, port: int = HEALTH_PORT) -> None:
        """Answer TCP health probes on the overlay address (see module doc)."""
        script = Path(__file__).with_name("health.py")
        self.add_program(
            HEALTH_PROGRAM,
            [sys.executable, "-I", "-S", str(script), overlay_ip, str(port), f"ok {self.handle}"],
            startsecs=0,
            startretries=10,
        )

    # -- stop ----------------------------------------------------------
    def box_pids(self) -> list[int]:
        return sorted(set(self.transport.pids()) | set(self.cgroups.pids(self.handle)))

    def stop_box(self, timeout: float = 3.0) -> None:
        """SIGKILL every process of the box (namespace and cgroup PID lists)
        until none is left. Fast: no graceful supervisord shutdown."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.box_pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise SupervisionError(f"processes of {self.handle} survive SIGKILL: {pids}")
            time.sleep(0.005)


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (one scan of /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class HostSupervisor(BoxSupervisor):
    """A supervisord for the Tower's own services (the Construction DataLake), on the host:
    the same supervision as a box's, without a namespace or cgroup. It outlives the Tower
    like a box's supervisord does; its processes are found from its pidfile."""

    def __init__(self, handle: str, box_dir: Path):
        super().__init__(handle, box_dir, cgroups=None)

    def write_files(self, hosts: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._write_conf(f"the Tower's services ({self.handle})")

    def start(self) -> None:
        if self.is_running():
            return
        self.sock_path.unlink(missing_ok=True)
        proc = subprocess.run(
            [SUPERVISORD, "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True, timeout=10,
        )
        if proc.returncode != 0:
            raise SupervisionError(f"supervisord {self.handle} failed to start: {proc.stderr.decode().strip()}")

    def supervisord_pid(self) -> int | None:
        try:
            pid = int((self.box_dir / "supervisord.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(self.conf_path).encode() not in f.read():
                    return None  # the pid was reused by another process
        except OSError:
            return None
        return pid

    def box_pids(self) -> list[int]:
        pid = self.supervisord_pid()
        return [] if pid is None else sorted([pid, *_children(pid)])
