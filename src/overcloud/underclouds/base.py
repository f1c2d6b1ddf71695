"""The southbound contract: what an UnderCloud driver promises.

A driver lends us boxes (VMs, or network namespaces locally), joins the
boxes of one OverCloud into its own overlay network, opens a
:class:`BoxSession` onto a box, and finds (and sweeps) everything it ever
made for an OverCloud again. This module is the only way the rest of the
Tower reaches a box: nothing outside ``underclouds/<kind>/`` and ``boxes/``
knows whether a box is a network namespace here or a machine over SSH.

Promises every driver keeps:

* **Tagged.** Every resource a driver makes carries the OverCloud id, so
  :meth:`UnderCloudDriver.list_tagged` can find it after any crash.
* **Idempotent.** ``acquire`` with the same ``BoxSpec.name`` returns the
  box that already exists instead of making a second one; ``release`` of a
  box that is already gone succeeds. Workflows re-run the task that was
  running when the Tower died, so this is what makes resume safe.
* **Confirmed.** ``release`` returns only once the cloud says the resource
  is gone; the caller may then forget it.
* **No database.** Drivers never touch the repository; everything they
  need comes in through these dataclasses and leaves through them.

Values crossing this boundary are plain dataclasses that serialise to JSON
(``dataclasses.asdict``), because workflow results are persisted.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class Flavor:
    """A box size. ``cpus`` may be fractional (0.5 = half a core)."""

    name: str
    cpus: float
    memory_mb: int


#: The flavors every driver understands; the seed's m1.* names are aliases.
FLAVORS: dict[str, Flavor] = {
    "small": Flavor("small", 0.5, 512),
    "medium": Flavor("medium", 1.0, 1024),
    "large": Flavor("large", 2.0, 2048),
}
FLAVOR_ALIASES: dict[str, str] = {
    "m1.tiny": "small",
    "m1.small": "small",
    "m1.medium": "medium",
    "m1.large": "large",
}


def resolve_flavor(size: str) -> Flavor:
    """The flavor a size names (case-insensitive); ``KeyError`` when unknown."""
    key = size.strip().lower()
    key = FLAVOR_ALIASES.get(key, key)
    return FLAVORS[key]


def known_sizes() -> list[str]:
    return sorted(FLAVORS) + sorted(FLAVOR_ALIASES)


@dataclasses.dataclass
class BoxSpec:
    """What the caller asks for: one box of an OverCloud."""

    overcloud_id: str  # full id (uuid hex), used for tags
    name: str  # unique, short, stable across retries: "p0", "c1", "c2" ...
    role: str  # "post" | "cluster"
    site: str  # the site (UnderCloud name) it must live in
    flavor: Flavor


@dataclasses.dataclass
class Box:
    """A box an UnderCloud lent us."""

    overcloud_id: str
    name: str  # as in BoxSpec
    role: str
    site: str
    flavor: Flavor
    handle: str  # the driver's id for it (netns name, instance id)
    address: str  # its address on the site (underlay) network
    overlay_address: str | None = None  # set once the overlay exists
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Box":
        data = dict(data)
        data["flavor"] = Flavor(**data["flavor"])
        return cls(**data)


@dataclasses.dataclass
class Overlay:
    """The private network joining the boxes of one OverCloud."""

    overcloud_id: str
    vni: int
    subnet: str  # e.g. "10.250.3.0/24"
    addresses: dict[str, str]  # box name -> overlay address

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TaggedResource:
    """Something a driver made, found again by its tag."""

    overcloud_id: str
    kind: str  # "netns", "veth", "vxlan", "cgroup", "process", "statedir", "lease"
    name: str  # how to name it to a person ("netns oc-1a2b3c4d-c1")


@dataclasses.dataclass
class Quota:
    max_boxes: int
    used_boxes: int


def parallel(fn: Callable[[Any], Any], items: list, *, name: str = "uc") -> list[tuple[Any, Any, BaseException | None]]:
    """Run ``fn`` over ``items`` in up to 16 threads (named ``name``); ``(item, result, error)``
    for every item, in order: every item is tried, and the caller decides what an error means."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(items)), thread_name_prefix=name) as pool:
        futures = [(item, pool.submit(fn, item)) for item in items]
        out = []
        for item, fut in futures:
            try:
                out.append((item, fut.result(), None))
            except BaseException as exc:  # noqa: BLE001 - collected; the caller decides
                out.append((item, None, exc))
        return out


class UnderCloudError(Exception):
    """A driver could not do what was asked; carries the ids involved."""

    def __init__(self, message: str, *, overcloud_id: str | None = None, site: str | None = None):
        super().__init__(message)
        self.overcloud_id = overcloud_id
        self.site = site


@dataclasses.dataclass
class Completed:
    """What a command run in a box left: its exit code and output (bytes)."""

    returncode: int | None  # None: it was killed at its timeout
    stdout: bytes
    stderr: bytes = b""


class BoxCommandError(UnderCloudError):
    """A command in a box failed (``check=True``); names the box and the command."""

    def __init__(self, box: str, argv: list[str], completed: Completed):
        err = completed.stderr.decode("utf-8", "replace").strip()[-2000:]
        what = "timed out" if completed.returncode is None else f"exited {completed.returncode}"
        command = " ".join(argv[:3])
        command = command if len(command) <= 80 else command[:77] + "..."
        super().__init__(f"{command} in box {box} {what}" + (f": {err}" if err else ""))
        self.box, self.argv, self.completed = box, argv, completed


@dataclasses.dataclass(frozen=True)
class StagedArtifact:
    """An artifact put into a box's host's cache by its session: ``cache`` is the directory
    (``<cache>/<sha256>``), ``fetch`` the argv prefix of our ``fetch.py`` on that host, which
    checks the file's SHA-256 again before it execs it."""

    cache: str
    fetch: list[str]


@runtime_checkable
class BoxSession(Protocol):
    """Everything the Tower may do to one box, the same for every kind of UnderCloud.

    There is no way to run a Python callable "inside" a box: a callable cannot cross SSH.
    Python that must run in a box's network (a PromQL query, the DataLake archive copy)
    is either an HTTP request (:meth:`http`, over :meth:`connect_tcp`) or a module of our
    own package run with :meth:`run_module` (the package is on every box's host).

    Paths (``put_file``, ``get_file``) are relative to the box's own directory on its host,
    ``box_dir``; commands and programs may name files there by absolute path."""

    box: Box
    #: the box's directory on its host (absolute, for argv of programs), and its log dir
    box_dir: str
    log_dir: str
    #: the directory whose ``hosts`` and ``resolv.conf`` the box's processes see
    etc_dir: str
    #: for a container engine on the box's host: ``--network`` joining the box's network,
    #: ``--cgroup-parent`` nesting under the box's limits (None: the engine places it itself),
    #: and the id everything made for the box is tagged with (its Tower's)
    container_network: str
    container_cgroup_parent: str | None
    owner_id: str

    # -- commands ----------------------------------------------------------------
    def run(self, argv: list[str], *, input: bytes | str | None = None, timeout: float = 30,
            check: bool = True, env: Mapping[str, str] | None = None, max_output: int | None = None,
            on_host: bool = False) -> Completed:
        """Run one of our own tools in the box's network (``on_host``: on the box's host, outside
        it, e.g. the container engine). ``max_output`` keeps the first bytes of a command whose
        output is a workload's to choose. ``check``: BoxCommandError unless it exits 0."""

    def run_module(self, module: str, args: list[str] = (), *, input: bytes | str | None = None,
                   timeout: float = 30, check: bool = True) -> Completed:
        """``python -m <module> args`` of our package on the box's host, in the box's network
        (see ``overcloud.boxes.entry``)."""

    # -- files ---------------------------------------------------------------------
    def put_file(self, relpath: str, data: bytes | str, mode: int = 0o644) -> None:
        """Write a file under the box's dir atomically (its directories are made 0700)."""

    def get_file(self, relpath: str, max_bytes: int = 1 << 20) -> bytes:
        """The first ``max_bytes`` of a file under the box's dir; FileNotFoundError when absent."""

    def make_dirs(self, relpaths: Iterable[str]) -> None:
        """Directories under the box's dir (0700, parents too); existing ones are fine."""

    def set_hosts(self, entries: Mapping[str, str]) -> None:
        """Rewrite the box's /etc/hosts (name -> address)."""

    def limits(self) -> tuple[float, int]:
        """(CPUs, memory MiB) the box may use, read back from its host's kernel."""

    def set_service_table(self, script: str, vip_cidr: str) -> None:
        """The box's Service VIP table (see composition.stitching), replaced atomically."""

    # -- its supervisor ------------------------------------------------------------
    def supervisor_state(self) -> str:
        """supervisord's state name (RUNNING, ...); raises when it does not answer."""

    def supervisor_running(self) -> bool: ...

    def add_program(self, name: str, command: str | list[str], *, directory: str | None = None,
                    environment: Mapping[str, str] | None = None, autorestart: bool = True,
                    startsecs: int = 1, startretries: int = 3, stopsignal: str = "TERM") -> None:
        """Add (or change) a program and start it; a no-op when unchanged."""

    def remove_programs(self, names: Iterable[str], timeout: float = 10.0) -> list[str]:
        """Stop and remove the named programs that exist; returns their names."""

    def forget_programs(self, names: Iterable[str]) -> None:
        """Remove the named programs' config and log files, whether supervisord answers or not."""

    def start_program(self, name: str, wait: bool = False) -> None: ...

    def stop_program(self, name: str, wait: bool = True) -> None: ...

    def stop_all_programs(self) -> None: ...

    def signal_program(self, name: str, signal: str) -> None: ...

    def program_states(self) -> dict[str, str]:
        """Program name -> supervisor state name."""

    def process_info(self) -> list[dict[str, Any]]:
        """supervisord's ``getAllProcessInfo``: name, statename, pid, ..."""

    def tail_log(self, program: str, stream: str = "out", max_bytes: int = 64 * 1024) -> bytes:
        """The last ``max_bytes`` of a program's stdout (or ``stream="err"``) log."""

    # -- what workloads need on the box's host -----------------------------------------
    def kill_processes(self, pids: Iterable[int]) -> None:
        """SIGKILL these PIDs of the box's host (their process groups first) while they are in
        the box (its network namespace); any other process with such a PID is left alone."""

    def stage_dir(self, path: Any) -> str:
        """Where a directory of the Tower's machine (an image's code) is on the box's host: the
        same path for a local box; a content-addressed copy sent once to a remote host."""

    def ensure_image(self, ref: str, env: Mapping[str, str] | None = None) -> bool:
        """The box's host's Podman has image ``ref`` (sent from the Tower's when it lacks it);
        True when it was sent now."""

    # -- publishing: what the user reaches from where the Tower is ---------------------
    #: the address published ports are reached at (a local box's site address; a remote box's
    #: host address)
    published_address: str

    def publish(self, ports: Iterable[int], group: str = "nodeport") -> str:
        """Make the box's published ``ports`` (its service table rewrites them on its site
        address) reachable at :attr:`published_address`, same numbers, replacing what the
        group published before (no ports: unpublish); returns the address. Refused
        (UnderCloudError) when another box holds one of them there."""

    def unpublish(self, group: str = "nodeport") -> None: ...

    # -- network ---------------------------------------------------------------------
    def tcp_check(self, host: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from the box to ``host:port`` succeeds."""

    def connect_tcp(self, host: str, port: int, timeout: float = 2.0) -> Any:
        """A TCP connection opened from the box: socket-like (``sendall``, ``recv``,
        ``settimeout``, ``close``); the caller closes it."""

    def http_client(self, timeout: float = 10.0) -> Any:
        """An ``httpx.Client`` whose connections are opened from the box."""

    def http(self, method: str, url: str, body: bytes | None = None,
             headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request from the box: (status, headers, body)."""

    # -- our programs in the box ------------------------------------------------------
    def module_command(self, module: str, args: Sequence[str] = ()) -> list[str]:
        """The argv of a box program (supervisor) running one of our modules with the Python
        and the package of the box's host: the Tower's own for a local box, the bundle's under
        the host's ``python3`` on a remote one."""

    def stage_artifact(self, path: Any, sha256: str) -> StagedArtifact | None:
        """Make a content-addressed artifact (``sha256`` of the file ``path``) available to the
        box without the box fetching it from the Construction DataLake: ``None`` when the box
        fetches it itself (its host reaches the store), else where it was put on the box's
        host and the fetch program that checks it there (components/construction.py)."""

    # -- our Python that the box's host cannot run -------------------------------------
    #: whether :meth:`run_module` on the box's host has the Tower's whole package and its
    #: dependencies (a local box: the Tower's own machine). A remote host has the host bundle
    #: only (standard library, pyroute2, supervisor): Python that needs more (boto3) runs on
    #: the Tower instead, its connections opened from the box through :meth:`loopback_relay`.
    full_package: bool

    def loopback_relay(self, host: str, port: int) -> contextlib.AbstractContextManager[str]:
        """``with session.loopback_relay(host, port) as addr``: ``127.0.0.1:<port>`` on the
        Tower whose connections are opened from the box to ``host:port`` (each a
        :meth:`connect_tcp`) while the ``with`` lasts."""


class BoxHttp:
    """HTTP from a box, built once on ``connect_tcp`` for every kind of session: an httpx
    client whose connection pool opens its sockets with the session's ``connect_tcp``."""

    def connect_tcp(self, host: str, port: int, timeout: float = 2.0) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def http_client(self, timeout: float = 10.0):
        import httpcore
        import httpx
        from httpcore._backends.sync import SyncStream

        session = self

        class Backend(httpcore.NetworkBackend):
            def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
                try:
                    sock = session.connect_tcp(host, port, timeout=timeout if timeout is not None else 10.0)
                except TimeoutError as exc:
                    raise httpcore.ConnectTimeout(str(exc)) from exc
                except OSError as exc:
                    raise httpcore.ConnectError(str(exc)) from exc
                return SyncStream(sock)

            def connect_unix_socket(self, path, timeout=None, socket_options=None):  # pragma: no cover
                raise httpcore.ConnectError("no unix sockets through a box session")

            def sleep(self, seconds: float) -> None:
                import time

                time.sleep(seconds)

        transport = httpx.HTTPTransport()
        transport._pool = httpcore.ConnectionPool(network_backend=Backend())
        return httpx.Client(transport=transport, timeout=timeout, trust_env=False)

    def http(self, method: str, url: str, body: bytes | None = None,
             headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
        with self.http_client(timeout) as client:
            r = client.request(method, url, content=body, headers=dict(headers or {}))
            return r.status_code, dict(r.headers), r.content

    @contextlib.contextmanager
    def loopback_relay(self, host: str, port: int) -> Iterator[str]:
        """See :meth:`BoxSession.loopback_relay`: a listener on the Tower's loopback, each
        connection relayed to one :meth:`connect_tcp` from the box."""
        import socket
        import threading

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(0.2)
        stop = threading.Event()
        conns: list[Any] = []

        def pump(src: Any, dst: Any) -> None:
            try:
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
            except OSError:
                pass
            finally:
                for s in (dst, src):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        def serve(client: socket.socket) -> None:
            try:
                upstream = self.connect_tcp(host, port, timeout=10.0)
            except OSError:
                client.close()
                return
            conns.extend((client, upstream))
            t = threading.Thread(target=pump, args=(upstream, client), daemon=True)
            t.start()
            pump(client, upstream)
            t.join()
            client.close()
            upstream.close()

        def accept() -> None:
            while not stop.is_set():
                try:
                    client, _ = listener.accept()
                except (TimeoutError, socket.timeout):
                    continue
                except OSError:
                    return
                client.settimeout(None)
                threading.Thread(target=serve, args=(client,), name="box-relay", daemon=True).start()

        acceptor = threading.Thread(target=accept, name="box-relay-accept", daemon=True)
        acceptor.start()
        try:
            yield f"127.0.0.1:{listener.getsockname()[1]}"
        finally:
            stop.set()
            acceptor.join(2)
            listener.close()
            for c in list(conns):
                with contextlib.suppress(OSError):
                    c.close()


class UnderCloudDriver(abc.ABC):
    """One kind of cloud. Methods may be called from several threads at once."""

    kind: str = ""

    def __init__(self, name: str):
        self.name = name

    @property
    def overlay_domain(self) -> object:
        """Drivers with the same domain join one OverCloud's boxes in one call of
        :meth:`join_overlay` (the local sites of one host share their kernel's overlay);
        by default each driver is its own."""
        return self

    @abc.abstractmethod
    def acquire(self, specs: list[BoxSpec]) -> list[Box]:
        """Make (or find) every box in ``specs``, booted and with its
        supervisor answering; all or nothing: on error, release what this
        call made and raise :class:`UnderCloudError`."""

    @abc.abstractmethod
    def release(self, boxes: list[Box]) -> None:
        """Stop everything on these boxes and give them back. Idempotent."""

    @abc.abstractmethod
    def join_overlay(self, overcloud_id: str, boxes: list[Box]) -> Overlay:
        """Join ``boxes`` (of this driver's site, and of other sites sharing its overlay) into
        the OverCloud's overlay; sets ``box.overlay_address``. Idempotent per OverCloud; call
        it again with more boxes to grow the overlay."""

    @abc.abstractmethod
    def leave_overlay(self, overcloud_id: str, boxes: list[Box]) -> None:
        """Take ``boxes`` out of the overlay; the overlay is forgotten with its last box.
        Idempotent: boxes already gone are fine."""

    @abc.abstractmethod
    def connect(self, box: Box) -> BoxSession:
        """A session onto one of this driver's boxes (cheap: open one per use)."""

    @abc.abstractmethod
    def list_tagged(self, overcloud_id: str | None = None) -> list[TaggedResource]:
        """Every resource this driver made, for one OverCloud or for all."""

    @abc.abstractmethod
    def sweep(self, overcloud_ids: set[str]) -> list[TaggedResource]:
        """Remove everything this driver made for these OverCloud ids (``list_tagged``);
        returns what it removed. Resources of other Towers are never touched."""

    @abc.abstractmethod
    def quota(self) -> Quota:
        """How many boxes this UnderCloud may still lend."""

    def describe(self, *, max_age: float = 5.0, wait: float = 2.0) -> dict[str, Any]:
        """This site for ``GET /underclouds``: ``name``, ``kind``, ``healthy``, ``problems``
        (each names what is wrong) and what the kind has: an ssh site its ``hosts`` (address,
        labels, ``lent`` and ``used``/``free`` cpus and memory_mb, ``health``: reachable,
        prepared, WAN peers with their latest handshake's age), a local site its ``bridge`` and
        ``capacity``. Never a secret, never blocks longer than ``wait`` s on a host that does not
        answer (its last probe, at most ``max_age`` s old when it answers, is reported with its age)."""
        return {"name": self.name, "kind": self.kind, "healthy": True, "problems": []}

    def site_tagged(self, overcloud_id: str | None = None) -> list[TaggedResource]:
        """What this site made beyond what its overlay domain lists (a cloud site's servers,
        networks, security groups, key pairs): asked of every site, after :meth:`list_tagged`
        of each domain. None by default."""
        return []

    def sweep_site(self, overcloud_ids: set[str]) -> list[TaggedResource]:
        """Remove what :meth:`site_tagged` finds for these OverClouds (after the domain's sweep)."""
        return []

    def underlay_problems(self, boxes: list[Box]) -> dict[str, str]:
        """What this site's underlay lacks for one OverCloud's ``boxes`` (of every site: the
        driver picks its own), by what is wrong ("host och-b1" -> reason), from what it has
        already observed: cheap, called every health interval. Empty when all is well."""
        return {}


class OverlayDomain(Protocol):
    """What several sites share when their boxes meet in one overlay: every local site of one
    host (one kernel), every ssh site of one Tower (hosts routed to each other)."""

    def join_overlay(self, overcloud_id: str, boxes: list[Box]) -> Overlay: ...
    def leave_overlay(self, overcloud_id: str, boxes: list[Box]) -> None: ...
    def session(self, box: Box) -> BoxSession: ...
    def list_tagged(self, overcloud_id: str | None = None) -> list[TaggedResource]: ...
    def sweep(self, overcloud_ids: set[str]) -> list[TaggedResource]: ...


class DomainSite(UnderCloudDriver):
    """A site whose overlay, sessions, inventory and sweep are its domain's (``self.domain``);
    the site itself lends and takes back boxes and counts its quota."""

    domain: OverlayDomain

    @property
    def overlay_domain(self) -> object:
        return self.domain

    def join_overlay(self, overcloud_id: str, boxes: list[Box]) -> Overlay:
        return self.domain.join_overlay(overcloud_id, boxes)

    def leave_overlay(self, overcloud_id: str, boxes: list[Box]) -> None:
        self.domain.leave_overlay(overcloud_id, boxes)

    def connect(self, box: Box) -> BoxSession:
        return self.domain.session(box)

    def list_tagged(self, overcloud_id: str | None = None) -> list[TaggedResource]:
        """Everything the domain holds (its sites share it): one site's answer is all of theirs."""
        return self.domain.list_tagged(overcloud_id)

    def sweep(self, overcloud_ids: set[str]) -> list[TaggedResource]:
        return self.domain.sweep(overcloud_ids)
