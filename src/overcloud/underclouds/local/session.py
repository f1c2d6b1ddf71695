"""The BoxSession of a local box: a network namespace on this host.

Commands run under ``ip netns exec <handle>`` (which also bind-mounts the box's
``/etc/netns/<handle>/`` files), TCP connections are opened by a short-lived thread that
``setns``-es into the box (:class:`~overcloud.boxes.netns.NetnsTransport`), the supervisor
is the box's own supervisord over its unix socket
(:class:`~overcloud.boxes.supervision.BoxSupervisor`), and files live in the box's state
dir on this host. See :class:`overcloud.underclouds.base.BoxSession` for the contract.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overcloud.boxes.commands import run_bounded
from overcloud.boxes.netns import NetnsTransport
from overcloud.boxes.supervision import BoxSupervisor
from overcloud.underclouds.base import Box, BoxCommandError, BoxHttp, Completed, StagedArtifact

if TYPE_CHECKING:
    from overcloud.underclouds.local.host import LocalHost


class LocalBoxSession(BoxHttp):
    """One local box, as every BoxSession: cheap to make, no state of its own."""

    full_package = True  # the box's host is the Tower's machine: run_module has all of our package

    def __init__(self, host: "LocalHost", box: Box):
        self.host = host
        self.box = box
        self.handle = box.handle
        self._net = NetnsTransport(box.handle)
        self._sup = BoxSupervisor(box.handle, host.boxes_dir / box.handle, host.cgroups)
        self.box_dir = str(self._sup.box_dir)
        self.log_dir = str(self._sup.log_dir)
        self.etc_dir = str(self._sup.etc_dir)

    def __repr__(self) -> str:
        return f"LocalBoxSession({self.box.name!r}, {self.handle!r})"

    # -- our programs in the box ------------------------------------------------------------
    def module_command(self, module: str, args: Sequence[str] = ()) -> list[str]:
        """The Tower's own Python and package: the box's host is the Tower's machine."""
        return [sys.executable, "-m", module, *args]

    def stage_artifact(self, path: Any, sha256: str) -> StagedArtifact | None:
        """Nothing to stage: a local box fetches artifacts from the Construction DataLake itself."""
        return None

    # -- what a container engine on this host needs to put a workload into the box -----------
    @property
    def container_network(self) -> str:
        """Podman's ``--network`` value that joins the box's network."""
        return f"ns:{os.path.join('/run/netns', self.handle)}"

    @property
    def container_cgroup_parent(self) -> str | None:
        """Podman's ``--cgroup-parent`` that nests containers under the box's limits (cgroup v1;
        v2 places them through the box's own supervisord)."""
        cg = self.host.cgroups
        return None if cg.v2 else f"/{cg.parent}/{self.handle}"

    @property
    def owner_id(self) -> str:
        """The id everything made here is tagged with (the Tower's)."""
        return self.host.tower_id

    # -- commands --------------------------------------------------------------------------
    def run(self, argv: list[str], *, input: bytes | str | None = None, timeout: float = 30,
            check: bool = True, env: Mapping[str, str] | None = None, max_output: int | None = None,
            on_host: bool = False) -> Completed:
        full = list(argv) if on_host else ["ip", "netns", "exec", self.handle, *argv]
        data = input.encode() if isinstance(input, str) else input
        if max_output is not None:
            code, head = run_bounded(full, timeout=timeout, env=env, keep=max_output, input=data)
            done = Completed(code, head, b"")
        else:
            try:
                proc = subprocess.run(full, input=data, capture_output=True, timeout=timeout,
                                      env=dict(env) if env is not None else None)
                done = Completed(proc.returncode, proc.stdout, proc.stderr)
            except subprocess.TimeoutExpired as exc:
                done = Completed(None, exc.stdout or b"", exc.stderr or b"")
        if check and done.returncode != 0:
            raise BoxCommandError(self.box.name, list(argv), done)
        return done

    def run_module(self, module: str, args: Iterable[str] = (), *, input: bytes | str | None = None,
                   timeout: float = 30, check: bool = True) -> Completed:
        return self.run([sys.executable, "-m", module, *args], input=input, timeout=timeout, check=check)

    # -- files -----------------------------------------------------------------------------
    def _path(self, relpath: str) -> Path:
        base = Path(self.box_dir)
        path = (base / relpath).resolve()
        if path != base.resolve() and base.resolve() not in path.parents:
            raise ValueError(f"{relpath!r} is not under the box's directory")
        return path

    def put_file(self, relpath: str, data: bytes | str, mode: int = 0o644) -> None:
        path = self._path(relpath)
        self._mkdirs(path.parent)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)

    def get_file(self, relpath: str, max_bytes: int = 1 << 20) -> bytes:
        with open(self._path(relpath), "rb") as f:
            return f.read(max_bytes)

    def _mkdirs(self, path: Path) -> None:
        base = Path(self.box_dir).resolve()
        todo = []
        while path != base and not path.exists():
            todo.append(path)
            path = path.parent
        for d in reversed(todo):
            d.mkdir(mode=0o700, exist_ok=True)

    def make_dirs(self, relpaths: Iterable[str]) -> None:
        for rel in relpaths:
            self._mkdirs(self._path(rel))

    def set_hosts(self, entries: Mapping[str, str]) -> None:
        self._sup.set_hosts(entries)

    def limits(self) -> tuple[float, int]:
        return self.host.cgroups.limits(self.handle)

    def set_service_table(self, script: str, vip_cidr: str) -> None:
        from overcloud.underclouds.local import net

        net.service_table(self.handle, script, vip_cidr)

    # -- its supervisor ------------------------------------------------------------------------
    def supervisor_state(self) -> str:
        return self._sup.rpc().supervisor.getState()["statename"]

    def supervisor_running(self) -> bool:
        return self._sup.is_running()

    def add_program(self, name: str, command: str | list[str], **kwargs: Any) -> None:
        self._sup.add_program(name, command, **kwargs)

    def remove_programs(self, names: Iterable[str], timeout: float = 10.0) -> list[str]:
        return self._sup.remove_programs(names, timeout=timeout)

    def forget_programs(self, names: Iterable[str]) -> None:
        for name in names:
            (self._sup.programs_dir / f"{name}.conf").unlink(missing_ok=True)
            for stream in ("out", "err"):
                (self._sup.log_dir / f"{name}.{stream}.log").unlink(missing_ok=True)

    def start_program(self, name: str, wait: bool = False) -> None:
        self._sup.rpc().supervisor.startProcess(name, wait)

    def stop_program(self, name: str, wait: bool = True) -> None:
        self._sup.rpc().supervisor.stopProcess(name, wait)

    def stop_all_programs(self) -> None:
        self._sup.rpc().supervisor.stopAllProcesses(False)

    def signal_program(self, name: str, signal: str) -> None:
        self._sup.rpc().supervisor.signalProcess(name, signal)

    def program_states(self) -> dict[str, str]:
        return self._sup.program_states()

    def process_info(self) -> list[dict[str, Any]]:
        return self._sup.rpc().supervisor.getAllProcessInfo()

    def tail_log(self, program: str, stream: str = "out", max_bytes: int = 64 * 1024) -> bytes:
        path = self._sup.log_dir / f"{program}.{stream}.log"
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - max_bytes))
                return f.read()
        except OSError:
            return b""

    # -- what workloads need on the box's host: this one ---------------------------------------------
    def kill_processes(self, pids: Iterable[int]) -> None:
        from overcloud.boxes.netns import netns_inode

        ino = netns_inode(self.handle)
        for pid in pids:
            try:
                if ino is None or os.stat(f"/proc/{int(pid)}/ns/net").st_ino != ino:
                    continue
            except OSError:
                continue
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except OSError:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass

    def stage_dir(self, path: Any) -> str:
        return str(path)

    def ensure_image(self, ref: str, env: Mapping[str, str] | None = None) -> bool:
        return False  # the Tower's Podman is this host's

    # -- publishing --------------------------------------------------------------------------------
    @property
    def published_address(self) -> str:
        """The box's site address: the user is on this host, which reaches it directly."""
        return self.box.address

    def publish(self, ports: Iterable[int], group: str = "nodeport") -> str:
        """Nothing to add on the host: the box's own service table publishes on its site address."""
        return self.box.address

    def unpublish(self, group: str = "nodeport") -> None:
        return None

    # -- network ---------------------------------------------------------------------------------
    def tcp_check(self, host: str, port: int, timeout: float = 1.0) -> bool:
        return self._net.tcp_check(host, port, timeout)

    def connect_tcp(self, host: str, port: int, timeout: float = 2.0) -> Any:
        return self._net.connect_tcp(host, port, timeout)


__all__ = ["LocalBoxSession", "run_bounded"]
