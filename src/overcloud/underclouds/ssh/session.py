"""The BoxSession of a box on a remote host, over the host's kept SSH connection.

The box is the same as a local one (a network namespace made by ``LocalHost`` on the host,
from our bundle), so the session is the local one's operations carried over SSH:

* ``run``: ``ip netns exec <handle> argv`` on the host (``on_host``: argv on the host).
* ``run_module``: ``/usr/bin/python3 -IS <bundle> module <module>`` in the box's netns.
* files: under the box's dir on the host (``put_file`` writes through a temp file and a rename).
* the supervisor, ``set_hosts``, ``limits``, ``set_service_table``, ``tcp_check``: one request
  to the host's kept agent (``agentlink``: ``boxctl``'s ``sup`` and ``tcp-check`` ops, no
  Python start per call; the box's supervisord answers on a unix socket there).
* ``connect_tcp``: a stream (``SSHHost.open_stream``, a real socket) to ``relay.py`` run in
  the box's netns; ``http``/``http_client`` come from :class:`BoxHttp` on top of it.

See docs/remote-hosts.md, "The ssh driver".
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from overcloud.underclouds.base import Box, BoxCommandError, BoxHttp, Completed, StagedArtifact, UnderCloudError

if TYPE_CHECKING:
    from overcloud.underclouds.ssh.driver import RemoteHost

BOXCTL = "overcloud.underclouds.ssh.boxctl"
RELAY = "overcloud/underclouds/ssh/relay.py"  # connect_tcp's far end, run by path (stdlib only)
HOST_PYTHON = "/usr/bin/python3"
# supervisor methods that may be sent again to a new agent when one ended under them
IDEMPOTENT_SUP = frozenset({"state", "running", "states", "info", "limits", "hosts", "forget"})


class RemoteBoxSession(BoxHttp):
    """One box on a remote host. Cheap to make; everything goes over the host's connection."""

    full_package = False  # the host has the bundle only: boto3 & co. run on the Tower (loopback_relay)

    def __init__(self, host: "RemoteHost", box: Box):
        self.host = host
        self.ssh = host.ssh
        self.box = box
        self.handle = box.handle
        self.box_dir = str(box.extra.get("box_dir") or posixpath.join(host.state_dir, "boxes", box.handle))
        self.log_dir = posixpath.join(self.box_dir, "logs")
        self.etc_dir = posixpath.join("/etc/netns", box.handle)

    def __repr__(self) -> str:
        return f"RemoteBoxSession({self.box.name!r}, {self.handle!r} on {self.host.name})"

    @property
    def bundle_dir(self) -> str:
        """Where our package is on the box's host (box programs run it from there)."""
        return self.host.bundle_dir

    def program_python(self) -> list[str]:
        """The interpreter prefix of our package on the box's host: the host's python3 on the
        bundle (``+ ["module", "overcloud.x", ...]``)."""
        return [HOST_PYTHON, "-IS", self.bundle_dir]

    def module_command(self, module: str, args: Sequence[str] = ()) -> list[str]:
        return [*self.program_python(), "module", module, *args]

    def stage_artifact(self, path: Any, sha256: str) -> StagedArtifact:
        """Put a content-addressed artifact into the box's host's cache (over SSH, checked
        there): the box cannot reach the Construction DataLake. See components/construction.py."""
        return StagedArtifact(self.host.stage_artifact(path, sha256),
                              [HOST_PYTHON, "-I", "-S", f"{self.bundle_dir}/overcloud/boxes/fetch.py"])

    @property
    def owner_id(self) -> str:
        return self.host.tower_id

    # -- commands --------------------------------------------------------------------------
    def run(self, argv: list[str], *, input: bytes | str | None = None, timeout: float = 30,
            check: bool = True, env: Mapping[str, str] | None = None, max_output: int | None = None,
            on_host: bool = False) -> Completed:
        from overcloud.underclouds.ssh.transport import SSHTimeout

        full = list(argv)
        if env is not None:
            full = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *full]
        if not on_host:
            full = ["ip", "netns", "exec", self.handle, *full]
        if max_output is not None:
            # the first max_output bytes, as the local session keeps them, and the command's status
            script = ('f=$(mktemp); { "$@"; echo $? >"$f"; } | head -c ' + str(int(max_output))
                      + '; c=$(cat "$f"); rm -f "$f"; exit "${c:-1}"')
            full = ["sh", "-c", script, "sh", *full]
        try:
            r = self.ssh.run(full, input=input, timeout=timeout, check=False,
                             max_output=(max_output + 1) if max_output is not None else 64 << 20)
            done = Completed(r.returncode, r.stdout, b"" if max_output is not None else r.stderr)
        except SSHTimeout as exc:
            done = Completed(None, b"", str(exc).encode())
        if check and done.returncode != 0:
            raise BoxCommandError(self.box.name, list(argv), done)
        return done

    def run_module(self, module: str, args: Iterable[str] = (), *, input: bytes | str | None = None,
                   timeout: float = 30, check: bool = True) -> Completed:
        return self.run(self.module_command(module, args), input=input, timeout=timeout,
                        check=check)

    def _boxctl(self, op: str, req: dict[str, Any], *, timeout: float = 60, idempotent: bool = False) -> Any:
        """One of boxctl's ops on the host's kept agent (see agentlink)."""
        from overcloud.underclouds.ssh.agentlink import AgentOpError

        try:
            return self.host.link.call(op, req, timeout=timeout, idempotent=idempotent)
        except AgentOpError as exc:
            raise UnderCloudError(f"{op} for box {self.box.name} on {self.host.name}: {exc}") from None

    def _sup(self, method: str, **args: Any) -> Any:
        return self._boxctl("sup", {"handle": self.handle, "box_dir": self.box_dir, "method": method, "args": args},
                            idempotent=method in IDEMPOTENT_SUP)

    # -- files -----------------------------------------------------------------------------
    def _path(self, relpath: str) -> str:
        path = posixpath.normpath(posixpath.join(self.box_dir, relpath))
        if path != self.box_dir and not path.startswith(self.box_dir + "/"):
            raise ValueError(f"{relpath!r} is not under the box's directory")
        return path

    def put_file(self, relpath: str, data: bytes | str, mode: int = 0o644) -> None:
        self.ssh.put_file(self._path(relpath), data, mode)

    def get_file(self, relpath: str, max_bytes: int = 1 << 20) -> bytes:
        path = self._path(relpath)
        script = 'test -f "$1" || exit 3; exec head -c "$2" -- "$1"'
        r = self.ssh.run(["sh", "-c", script, "get_file", path, str(int(max_bytes))], check=False,
                         max_output=max_bytes + 1)
        if r.returncode == 3:
            raise FileNotFoundError(f"{relpath} in box {self.box.name}")
        if r.returncode != 0:
            raise BoxCommandError(self.box.name, ["get_file", relpath], Completed(r.returncode, r.stdout, r.stderr))
        return r.stdout

    def make_dirs(self, relpaths: Iterable[str]) -> None:
        paths = [self._path(p) for p in relpaths]
        if paths:
            self.ssh.run(["sh", "-c", 'umask 077; mkdir -p -- "$@"', "sh", *paths])

    def set_hosts(self, entries: Mapping[str, str]) -> None:
        self._sup("hosts", entries=dict(entries))

    def limits(self) -> tuple[float, int]:
        cpus, mem = self._sup("limits")
        return float(cpus), int(mem)

    def set_service_table(self, script: str, vip_cidr: str) -> None:
        self._sup("service-table", script=script, vip_cidr=vip_cidr)

    # -- its supervisor ----------------------------------------------------------------------
    def supervisor_state(self) -> str:
        return self._sup("state")

    def supervisor_running(self) -> bool:
        try:
            return bool(self._sup("running"))
        except Exception:  # noqa: BLE001 - not answering is "not running"
            return False

    def add_program(self, name: str, command: str | list[str], **kwargs: Any) -> None:
        self._sup("add", name=name, command=command if isinstance(command, str) else shlex.join(command),
                  options=kwargs and {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in kwargs.items()})

    def remove_programs(self, names: Iterable[str], timeout: float = 10.0) -> list[str]:
        return list(self._sup("remove", names=list(names), timeout=timeout))

    def forget_programs(self, names: Iterable[str]) -> None:
        self._sup("forget", names=list(names))

    def start_program(self, name: str, wait: bool = False) -> None:
        self._sup("start", name=name, wait=wait)

    def stop_program(self, name: str, wait: bool = True) -> None:
        self._sup("stop", name=name, wait=wait)

    def stop_all_programs(self) -> None:
        self._sup("stop-all")

    def signal_program(self, name: str, signal: str) -> None:
        self._sup("signal", name=name, signal=signal)

    def program_states(self) -> dict[str, str]:
        return dict(self._sup("states"))

    def process_info(self) -> list[dict[str, Any]]:
        return list(self._sup("info"))

    def tail_log(self, program: str, stream: str = "out", max_bytes: int = 64 * 1024) -> bytes:
        if stream not in ("out", "err") or "/" in program:
            raise ValueError("tail_log: stream is out or err, program a program name")
        path = posixpath.join(self.log_dir, f"{program}.{stream}.log")
        r = self.ssh.run(["sh", "-c", 'test -f "$1" && exec tail -c "$2" -- "$1"; exit 0', "tail", path,
                          str(int(max_bytes))], check=False, max_output=max_bytes + 1)
        return r.stdout if r.returncode == 0 else b""

    # -- a container engine on the box's host ----------------------------------------------
    @property
    def container_network(self) -> str:
        """Podman's ``--network`` value that joins the box's network (on its host)."""
        return f"ns:/run/netns/{self.handle}"

    @property
    def container_cgroup_parent(self) -> str | None:
        """``--cgroup-parent`` nesting containers under the box's limits on a cgroup v1 host
        (v2: the box's own supervisord places them), as for a local box."""
        from overcloud.boxes.cgroups import PARENT
        from overcloud.underclouds.ssh import staging

        return None if staging.cgroup_v2(self.host) else f"/{PARENT}/{self.handle}"

    # -- what workloads need on the box's host ----------------------------------------------
    def kill_processes(self, pids: Iterable[int]) -> None:
        script = ('handle=$1; shift; for pid in "$@"; do '
                  '[ "$(ip netns identify "$pid" 2>/dev/null)" = "$handle" ] || continue; '
                  'kill -9 "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true; done')  # dash: no "--"
        self.ssh.run(["sh", "-c", script, "kill", self.handle, *(str(int(p)) for p in pids)], check=False, timeout=15)

    def stage_dir(self, path: Any) -> str:
        """The host's copy of a directory of the Tower's machine (an image's code), sent once
        per host, content-addressed (see ssh/staging.py)."""
        from overcloud.underclouds.ssh import staging

        return staging.stage_tree(self.host, path)

    def ensure_image(self, ref: str, env: Mapping[str, str] | None = None) -> bool:
        """The host's Podman has image ``ref`` (sent with podman save | load when it lacks it)."""
        from overcloud.underclouds.ssh import staging

        return staging.ensure_podman_image(self.host, ref, dict(env) if env is not None else None)

    # -- publishing ------------------------------------------------------------------------
    @property
    def published_address(self) -> str:
        """Where the box's published ports are reached from: its host's address (the site
        config's ``address``), through the host's DNAT to the box (local/publish.py)."""
        return self.host.public_ip

    def publish(self, ports: Iterable[int], group: str = "nodeport") -> str:
        """Publish ``ports`` (the box's own published ports: its service table rewrites them)
        on the host's address, same numbers, replacing the group's earlier ones; refused
        (UnderCloudError) when another box or a host process holds one there."""
        self.host.boxctl("publish", handle=self.handle, group=group, address=self.host.public_ip,
                         box_address=self.box.address, ports=sorted({int(p) for p in ports}), timeout=60)
        return self.host.public_ip

    def unpublish(self, group: str = "nodeport") -> None:
        self.publish([], group)

    # -- network -----------------------------------------------------------------------------
    def tcp_check(self, host: str, port: int, timeout: float = 1.0) -> bool:
        return bool(self._boxctl("tcp-check", {"handle": self.handle, "host": host, "port": int(port),
                                               "timeout": timeout}, timeout=timeout + 30, idempotent=True))

    def connect_tcp(self, host: str, port: int, timeout: float = 2.0) -> Any:
        argv = ["ip", "netns", "exec", self.handle, HOST_PYTHON, "-IS", f"{self.bundle_dir}/{RELAY}",
                str(host), str(int(port)), str(float(timeout))]
        stream = self.ssh.open_stream(argv, timeout=timeout + 30)
        try:
            stream.settimeout(timeout + 30)  # the relay's python start, then its connect
            first = stream.recv(1)
            if first != b"+":
                rest = b""
                try:
                    stream.settimeout(2)
                    rest = stream.recv(500)
                except OSError:
                    pass
                reason = (first + rest).decode("utf-8", "replace").lstrip("-").strip() or "the relay ended"
                if "timed out" in reason or "Timeout" in reason:
                    raise TimeoutError(f"connecting from box {self.box.name} to {host}:{port}: {reason}")
                raise ConnectionRefusedError(f"connecting from box {self.box.name} to {host}:{port}: {reason}")
            stream.settimeout(None)
            return stream
        except BaseException:
            stream.close()
            raise
