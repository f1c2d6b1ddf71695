"""The host side's entry point: what the Tower runs on a remote host, over SSH.

``python3 <bundle> agent <op>`` reads one JSON object on stdin and writes one on stdout:
``{"ok": true, "result": ...}``, or ``{"ok": false, "error": {"kind": ..., "type": ...,
"message": ...}}`` with exit status 2 (bad input, kind ``input``: the message says what to fix)
or 1 (the operation failed, kind ``failed`` or ``internal``). Never a traceback: messages name
ids, paths and addresses, never input values that could be secrets. Every answer of the host
side has this one shape: the agent's, ``boxctl``'s, the kept agent's (below) and our box
modules' (``overcloud.boxes.entry``).

``python3 <bundle> serve`` is the same ops (and ``boxctl``'s) as a kept process: the Tower
starts it once per host over its kept SSH connection (``ssh/agentlink.py``) and sends one
request per line on stdin, ``{"id": n, "op": ..., "req": {...}}``; each runs in its own thread
and its answer comes back as one line ``{"id": n, "ok": ..., ...}``, in any order. It ends at
EOF on stdin (its channel closed), after the requests under way. One Python start per host
instead of one per call; requests travel on stdin only, never on argv.

The ops wrap :class:`~overcloud.underclouds.local.LocalHost` -- the very code that makes boxes
on the Tower's machine -- with a state dir per Tower: ``<host root>/<tower id>/`` (the host
root is where the bundle is installed, ``/var/lib/overcloud/host``). Every op is idempotent
(LocalHost's leases make a box once and find it again), so a Tower killed with -9 in the
middle of a create or a delete runs the same op again and it finishes the work.

Ops (input fields beyond the common ``tower_id``, ``sites``, ``overlay_cidr``, ``max_boxes``):

``hello``          nothing needed: versions, capabilities, free CPU and memory
``ensure-site``    bridges, host guard, forwarding (LocalHost.ensure_sites)
``teardown-site``  remove them again; refused while boxes remain
``make-box``       ``specs``: [{overcloud_id, name, role, site, size | flavor}] -> ``boxes``
``destroy-box``    ``boxes``: the box dicts make-box returned -> gone (gone already is fine)
``list-tagged``    ``overcloud_id`` (optional) -> ``resources``
``sweep``          ``overcloud_ids`` -> ``removed``

Other commands of the bundle: ``unpack`` (run from the zip: unpack beside it, verified by
hostprep before), ``gc --tower <id>`` (remove bundles nobody uses), ``module <overcloud.x>
[args]`` (run one of our modules, as box programs and ``BoxSession.run_module`` do).

This module imports only the standard library at the top: ``unpack`` runs it from the zip
before anything else exists on the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

PROTOCOL = 1
MAX_INPUT = 1 << 20
BUNDLE_PREFIX = "bundle-"
INSTALLED = ".installed"  # written last into an unpacked bundle: its SHA-256
TOWER_BUNDLE = "bundle"  # <root>/<tower id>/bundle: the bundle that Tower uses on this host
UPLOAD_GRACE = 3600.0  # seconds an uploaded, not yet unpacked zip is safe from gc

TOWER_ID = re.compile(r"^[0-9a-f]{16}$")
OVERCLOUD_ID = re.compile(r"^[0-9a-f]{8,64}$")
BOX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,14}$")
HANDLE = re.compile(r"^oc-[0-9a-f]{8}-[A-Za-z0-9-]{1,3}$")
MODULE = re.compile(r"^overcloud(\.[A-Za-z_][A-Za-z0-9_]*)+$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class AgentError(Exception):
    """Refused or failed, with a message a person can act on."""

    def __init__(self, message: str, kind: str = "failed"):
        super().__init__(message)
        self.kind = kind

    @property
    def status(self) -> int:
        return 2 if self.kind == "input" else 1


def bad(message: str) -> AgentError:
    return AgentError(message, "input")


# -- where we are ----------------------------------------------------------------------------
def bundle_path() -> Path:
    """The bundle this code runs from: its zip, or the directory it was unpacked into."""
    import overcloud

    return Path(overcloud.__file__).resolve().parents[1]


def host_root() -> Path:
    """Where bundles and the Towers' state dirs live on this host: the bundle's own parent."""
    here = bundle_path()
    if not here.name.startswith(BUNDLE_PREFIX):
        raise AgentError(f"the agent runs from an installed bundle ({BUNDLE_PREFIX}<sha256> in the host root), "
                         f"not from {here}")
    return here.parent


def bundle_sha(path: Path) -> str | None:
    name = path.name[len(BUNDLE_PREFIX):]
    name = name[:-len(".pyz")] if name.endswith(".pyz") else name
    return name if SHA256.match(name) else None


@contextlib.contextmanager
def _root_lock(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# -- unpack and gc (stdlib only) --------------------------------------------------------------
SUPERVISORD_LAUNCHER = """\
#!{python} -IS
# supervisord from this bundle (the host has no supervisor package of its own)
import os, sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
from supervisor.supervisord import main
sys.exit(main())
"""


def unpack() -> dict[str, Any]:
    """Unpack the zip this runs from into ``bundle-<sha>/`` beside it (whole or not at all:
    into a temporary dir, renamed in one step; bytecode is written on first import), and remove
    the zip. hostprep checked the zip's SHA-256 before running it. Idempotent."""
    here = bundle_path()
    sha = bundle_sha(here)
    if not here.is_file() or sha is None:
        raise AgentError(f"unpack runs from a {BUNDLE_PREFIX}<sha256>.pyz file, not {here}")
    target = here.with_name(f"{BUNDLE_PREFIX}{sha}")
    with _root_lock(here.parent):
        if (target / INSTALLED).is_file():
            here.unlink(missing_ok=True)
            return {"path": str(target), "unpacked": False}
        tmp = here.with_name(f".{target.name}.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(here) as zf:
            for name in zf.namelist():
                if name.startswith("/") or ".." in Path(name).parts:
                    raise AgentError(f"bundle {here} holds a path outside itself: {name!r}")
            zf.extractall(tmp)
        launcher = tmp / "bin" / "supervisord"
        launcher.parent.mkdir()
        launcher.write_text(SUPERVISORD_LAUNCHER.format(python=sys.executable))
        launcher.chmod(0o755)
        # no compileall here: ~380 modules, four hosts at once, was most of a fresh host's
        # preparation; the host's python3 (root) writes each module's bytecode on its first import
        (tmp / INSTALLED).write_text(sha + "\n")
        os.chmod(tmp, 0o755)
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
        here.unlink()
    return {"path": str(target), "unpacked": True}


def gc(tower_id: str | None) -> dict[str, Any]:
    """Record that ``tower_id`` uses this bundle, then remove every other bundle that no Tower
    on this host records and no running process names on its command line (a box's
    supervisord runs ``<bundle>/bin/supervisord``, its programs ``python3 <bundle> module``)."""
    here = bundle_path()
    root = here.parent
    own = bundle_sha(here)
    removed: list[str] = []
    with _root_lock(root):
        if tower_id is not None:
            if not TOWER_ID.match(tower_id):
                raise bad("gc --tower needs the Tower id (16 hex digits)")
            _record_bundle(root, tower_id, own)
        wanted = {own}
        for ref in root.glob(f"*/{TOWER_BUNDLE}"):
            with contextlib.suppress(OSError):
                wanted.add(ref.read_text().strip())
        running = _command_lines()
        for p in sorted(root.iterdir()):
            sha = bundle_sha(p) if p.name.startswith(BUNDLE_PREFIX) else None
            # what an unpack or an upload killed midway left (named by the pid that made it)
            stale_tmp = p.name.startswith((f".{BUNDLE_PREFIX}", ".upload-")) and not _pid_alive(p.name.rsplit(".", 1)[-1])
            # a zip just uploaded by another Tower waits for its unpack (the next round trip)
            fresh_zip = p.name.endswith(".pyz") and time.time() - p.stat().st_mtime < UPLOAD_GRACE
            if stale_tmp or (sha is not None and sha not in wanted and str(p) not in running and not fresh_zip):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p.name)
    return {"kept": sorted(w for w in wanted if w), "removed": removed}


def _record_bundle(root: Path, tower_id: str, sha: str | None) -> None:
    if sha is None:
        return
    state = root / tower_id
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    ref = state / TOWER_BUNDLE
    if not ref.exists() or ref.read_text().strip() != sha:
        tmp = ref.with_name(f".{TOWER_BUNDLE}.{os.getpid()}.{threading.get_ident()}")  # serve: requests in threads
        tmp.write_text(sha + "\n")
        os.replace(tmp, ref)


def _command_lines() -> str:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return "\n".join(out)


def _pid_alive(pid: str) -> bool:
    return pid.isdigit() and os.path.exists(f"/proc/{pid}")


# -- hello ------------------------------------------------------------------------------------
def hello(_req: dict[str, Any]) -> dict[str, Any]:
    """What the Tower needs to know about this host before it lends boxes on it."""
    import platform

    here = bundle_path()
    manifest = {}
    with contextlib.suppress(OSError, ValueError, KeyError):
        if here.is_dir():
            manifest = json.loads((here / "BUNDLE.json").read_text())
        else:
            with zipfile.ZipFile(here) as zf:
                manifest = json.loads(zf.read("BUNDLE.json"))
    mem = _meminfo()
    return {
        "protocol": PROTOCOL,
        "bundle": {"sha256": bundle_sha(here), "path": str(here), "unpacked": here.is_dir(), **manifest},
        "python": platform.python_version(),
        "executable": sys.executable,
        "os": _os_release(),
        "kernel": os.uname().release,
        "hostname": os.uname().nodename,
        "capabilities": {
            "wireguard_kernel": _kernel_wireguard(),
            "wireguard_go": shutil.which("wireguard-go") is not None,
            "cgroup_v2": Path("/sys/fs/cgroup/cgroup.controllers").exists(),
            "cap_net_admin": _has_caps(),
        },
        "cpus": os.cpu_count(),
        "load": list(os.getloadavg()),
        "memory_mb": {"total": mem.get("MemTotal", 0) // 1024, "available": mem.get("MemAvailable", 0) // 1024},
        "modules": _origins(("overcloud", "pyroute2", "supervisor")),
    }


def _os_release() -> dict[str, str]:
    out = {}
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and key in ("ID", "VERSION_ID", "VERSION_CODENAME", "PRETTY_NAME"):
                out[key.lower()] = value.strip().strip('"')
    return out


def _meminfo() -> dict[str, int]:
    out = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            with contextlib.suppress(ValueError, IndexError):
                out[key] = int(value.split()[0])
    return out


def _kernel_wireguard() -> bool:
    """Whether the kernel makes a WireGuard link (loading its module if it has one); the probe
    link is removed at once."""
    if Path("/sys/module/wireguard").exists():
        return True
    name = f"ocwgp{(os.getpid() * 7919 + threading.get_ident()) % 1000000}"  # unique per thread too (serve)
    r = subprocess.run(["ip", "link", "add", name, "type", "wireguard"], capture_output=True, timeout=10)
    if r.returncode != 0:
        return False
    subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10)
    return True


def _has_caps() -> bool:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                caps = int(line.split()[1], 16)
                return bool(caps >> 12 & 1 and caps >> 21 & 1)
    return False


def _origins(names: tuple[str, ...]) -> dict[str, str | None]:
    import importlib

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = getattr(importlib.import_module(name), "__file__", None)
        except ImportError:
            out[name] = None
    return out


# -- the LocalHost ops ------------------------------------------------------------------------
def _field(req: dict[str, Any], name: str, kind: type, pattern: re.Pattern | None = None, what: str = "",
           where: str = "") -> Any:
    """``req[name]``, of ``kind`` and matching ``pattern``; else refused, naming ``where.name``."""
    value = req.get(name)
    if not isinstance(value, kind) or (pattern is not None and not pattern.match(value)):
        raise bad(f"{where}{name} must be {what or kind.__name__}")
    return value


def _host(req: dict[str, Any]):
    """The LocalHost of the requesting Tower on this host, from the request's site config."""
    root = host_root()
    tower_id = _field(req, "tower_id", str, TOWER_ID, "the Tower id (16 hex digits)")
    sites_in = req.get("sites")
    if not isinstance(sites_in, list) or not sites_in:
        raise bad("sites must be a non-empty list of {name, bridge, cidr}")
    from overcloud.boxes import supervision
    from overcloud.underclouds.local import LocalHost, LocalSiteConfig

    sites = []
    for i, s in enumerate(sites_in):
        if not isinstance(s, dict):
            raise bad(f"sites[{i}] must be an object {{name, bridge, cidr}}")
        name = _field(s, "name", str, SITE_NAME, "a site name (letters, digits, -_.)", f"sites[{i}].")
        bridge = _field(s, "bridge", str, IFNAME, "an interface name of at most 15 characters", f"sites[{i}].")
        cidr = _network(_field(s, "cidr", str, None, "an IPv4 network like 10.79.1.0/24", f"sites[{i}]."), f"sites[{i}].cidr")
        sites.append(LocalSiteConfig(name, bridge, cidr))
    if len({s.name for s in sites}) != len(sites) or len({s.bridge for s in sites}) != len(sites):
        raise bad("sites must have distinct names and bridges")
    overlay = _network(req.get("overlay_cidr", "10.250.0.0/16"), "overlay_cidr")
    max_boxes = req.get("max_boxes", 200)
    if not isinstance(max_boxes, int) or isinstance(max_boxes, bool) or not 0 < max_boxes <= 4096:
        raise bad("max_boxes must be an integer from 1 to 4096")
    launcher = bundle_path() / "bin" / "supervisord"
    if not launcher.is_file():
        raise AgentError(f"boxes need an unpacked bundle ({launcher} is missing): run hostprep again")
    supervision.SUPERVISORD = str(launcher)  # the host has no supervisor of its own: the bundle's
    state = root / tower_id
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    _record_bundle(root, tower_id, bundle_sha(bundle_path()))
    return LocalHost(state, sites, overlay, max_boxes=max_boxes, tower_id=tower_id)


def _network(value: Any, name: str) -> str:
    try:
        n = ipaddress.ip_network(value, strict=True)
    except (TypeError, ValueError):
        raise bad(f"{name} must be an IPv4 network like 10.79.1.0/24 (its host bits zero)") from None
    if n.version != 4 or n.prefixlen > 29:
        raise bad(f"{name} must be an IPv4 network of /29 or larger")
    return str(n)


def _spec(s: Any, i: int):
    from overcloud.underclouds.base import BoxSpec, Flavor, resolve_flavor

    if not isinstance(s, dict):
        raise bad(f"specs[{i}] must be an object {{overcloud_id, name, role, site, size}}")
    oc = _field(s, "overcloud_id", str, OVERCLOUD_ID, "the OverCloud id in hex", f"specs[{i}].")
    name = _field(s, "name", str, BOX_NAME, "a box name (letters, digits and -, at most 63)", f"specs[{i}].")
    role = s.get("role")
    if role not in ("post", "cluster"):
        raise bad(f"specs[{i}].role must be post or cluster")
    site = _field(s, "site", str, SITE_NAME, "a site name", f"specs[{i}].")
    if isinstance(s.get("flavor"), dict):
        f = s["flavor"]
        try:
            flavor = Flavor(str(f["name"]), float(f["cpus"]), int(f["memory_mb"]))
        except (KeyError, TypeError, ValueError):
            raise bad(f"specs[{i}].flavor must be {{name, cpus, memory_mb}}") from None
        if not (0 < flavor.cpus <= 256 and 16 <= flavor.memory_mb <= 1 << 22):
            raise bad(f"specs[{i}].flavor: cpus in (0, 256], memory_mb in [16, 4194304]")
    else:
        try:
            flavor = resolve_flavor(str(s.get("size", "small")))
        except KeyError:
            raise bad(f"specs[{i}].size is not a known size (small, medium, large, m1.*)") from None
    return BoxSpec(oc, name, role, site, flavor)


def ensure_site(req: dict[str, Any]) -> dict[str, Any]:
    host = _host(req)
    host.ensure_sites()
    return {"gateways": host.gateways, "supernet": host.supernet, "state_dir": str(host.state_dir)}


def teardown_site(req: dict[str, Any]) -> dict[str, Any]:
    _host(req).teardown_sites()
    return {}


def make_box(req: dict[str, Any]) -> dict[str, Any]:
    """Make (or find) boxes, all or nothing per site, as the local driver's acquire does."""
    specs_in = req.get("specs", [req["spec"]] if "spec" in req else None)
    if not isinstance(specs_in, list) or not specs_in or len(specs_in) > 256:
        raise bad("specs must be a list of 1 to 256 box specs {overcloud_id, name, role, site, size}")
    specs = [_spec(s, i) for i, s in enumerate(specs_in)]
    host = _host(req)
    by_site: dict[str, list] = {}
    for s in specs:
        by_site.setdefault(s.site, []).append(s)
    boxes = []
    for site, ss in by_site.items():
        boxes += host.site(site).acquire(ss)
    return {"boxes": [b.to_dict() for b in boxes]}


def destroy_box(req: dict[str, Any]) -> dict[str, Any]:
    """Remove boxes (what make-box returned); a box that is gone already is fine."""
    from overcloud.underclouds.base import Box

    boxes_in = req.get("boxes")
    if not isinstance(boxes_in, list) or len(boxes_in) > 256:
        raise bad("boxes must be a list of the box objects make-box returned")
    boxes = []
    for i, b in enumerate(boxes_in):
        try:
            box = Box.from_dict(b)
        except (TypeError, KeyError, ValueError, AttributeError):
            raise bad(f"boxes[{i}] is not a box object as make-box returned it") from None
        if not isinstance(box.handle, str) or not HANDLE.match(box.handle):
            raise bad(f"boxes[{i}].handle must be a box handle oc-<8 hex>-<name>")
        if not isinstance(box.site, str) or not isinstance(box.overcloud_id, str) or not OVERCLOUD_ID.match(box.overcloud_id):
            raise bad(f"boxes[{i}] needs its site and overcloud_id")
        boxes.append(box)
    host = _host(req)
    for site in sorted({b.site for b in boxes}):
        host.site(site).release([b for b in boxes if b.site == site])
    return {"destroyed": [b.handle for b in boxes]}


def list_tagged(req: dict[str, Any]) -> dict[str, Any]:
    oc = req.get("overcloud_id")
    if oc is not None and not (isinstance(oc, str) and OVERCLOUD_ID.match(oc)):
        raise bad("overcloud_id must be an OverCloud id in hex, or absent for all")
    return {"resources": [vars(r) for r in _host(req).list_tagged(oc)]}


def sweep(req: dict[str, Any]) -> dict[str, Any]:
    ids = req.get("overcloud_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) and OVERCLOUD_ID.match(i) for i in ids):
        raise bad("overcloud_ids must be a list of OverCloud ids in hex")
    return {"removed": [vars(r) for r in _host(req).sweep(set(ids))]}


OPS = {
    "hello": hello,
    "ensure-site": ensure_site,
    "teardown-site": teardown_site,
    "make-box": make_box,
    "destroy-box": destroy_box,
    "list-tagged": list_tagged,
    "sweep": sweep,
}


def answer_error(kind: str, message: str, type_: str = "AgentError") -> dict[str, Any]:
    """The one error answer of the host side."""
    return {"ok": False, "error": {"kind": kind, "type": type_, "message": message}}


def run_op(op: str, raw: bytes, ops: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """One op: (exit status, the JSON answer)."""
    ops = OPS if ops is None else ops
    try:
        if len(raw) > MAX_INPUT:
            raise bad(f"the request is larger than {MAX_INPUT} bytes")
        try:
            req = json.loads(raw or b"{}")
        except ValueError as exc:
            raise bad(f"the request is not JSON ({exc.__class__.__name__} at position {getattr(exc, 'pos', '?')})") from None
    except AgentError as exc:
        return exc.status, answer_error(exc.kind, str(exc))
    return dispatch(op, req, ops)


def dispatch(op: str, req: Any, ops: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """``ops[op](req)``: (exit status, the answer)."""
    try:
        if op not in ops:
            raise bad(f"unknown op {op!r}; ops: {', '.join(ops)}")
        if not isinstance(req, dict):
            raise bad("the request must be a JSON object")
        return 0, {"ok": True, "result": ops[op](req)}
    except AgentError as exc:
        return exc.status, answer_error(exc.kind, str(exc))
    except Exception as exc:  # noqa: BLE001 - a message, never a traceback
        from overcloud.underclouds.base import UnderCloudError

        kind = "failed" if isinstance(exc, (UnderCloudError, OSError, subprocess.SubprocessError)) else "internal"
        return 1, answer_error(kind, f"{op}: {exc.__class__.__name__}: {exc}", exc.__class__.__name__)


def all_ops() -> dict[str, Any]:
    """What the kept agent answers: the agent's ops and boxctl's."""
    from overcloud.underclouds.ssh import boxctl

    return {**OPS, **boxctl.OPS}


def serve() -> int:
    """The kept agent (see the module's docstring): requests by line on stdin, answers by line
    on stdout, each request in a thread of its own."""
    # our protocol keeps the real stdin/stdout to itself; anything else (a stray print, a child
    # process) gets /dev/null and stderr, so it can neither read requests nor corrupt answers
    inp = os.fdopen(os.dup(0), "rb", buffering=0)
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    ops = all_ops()
    wlock = threading.Lock()

    def write(answer: dict[str, Any]) -> None:
        line = (json.dumps(answer, default=str) + "\n").encode()
        with wlock:
            out.write(line)

    def handle(rid: Any, op: str, req: Any) -> None:
        try:
            write({"id": rid, **dispatch(op, req, ops)[1]})
        except OSError:  # the Tower is gone: nobody to answer
            pass

    write({"id": 0, "ok": True, "result": {"protocol": PROTOCOL, "pid": os.getpid(), "bundle": bundle_sha(bundle_path())}})
    threads: list[threading.Thread] = []
    reader = io.BufferedReader(inp, 1 << 16)
    while True:
        line = reader.readline(MAX_INPUT + 1)
        if not line:
            break
        if not line.endswith(b"\n"):  # longer than MAX_INPUT: skip to its end
            while line and not line.endswith(b"\n"):
                line = reader.readline(MAX_INPUT + 1)
            write({"id": None, **answer_error("input", f"a request is larger than {MAX_INPUT} bytes")})
            continue
        try:
            msg = json.loads(line)
            rid, op, req = msg["id"], str(msg["op"]), msg.get("req", {})
        except (ValueError, KeyError, TypeError):
            write({"id": None, **answer_error("input", "a request line is not {\"id\", \"op\", \"req\"} JSON")})
            continue
        t = threading.Thread(target=handle, args=(rid, op, req), name=f"agent-{op}", daemon=True)
        t.start()
        threads = [x for x in threads if x.is_alive()] + [t]
    deadline = time.monotonic() + 120  # the channel is closed: finish what is under way, then go
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return 0


# -- command line -----------------------------------------------------------------------------
USAGE = "usage: python3 <bundle> agent <op> < request.json | serve | unpack | gc [--tower ID] | module <overcloud.x> [args...]"


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    cmd = argv[0] if argv else ""
    try:
        if cmd == "agent" and len(argv) == 2:
            status, answer = run_op(argv[1], sys.stdin.buffer.read(MAX_INPUT + 1))
            sys.stdout.write(json.dumps(answer) + "\n")
            return status
        if cmd == "serve" and len(argv) == 1:
            return serve()
        if cmd == "unpack" and len(argv) == 1:
            answer = unpack()
        elif cmd == "gc" and (len(argv) == 1 or (len(argv) == 3 and argv[1] == "--tower")):
            answer = gc(argv[2] if len(argv) == 3 else None)
        elif cmd == "module" and len(argv) >= 2:
            return _run_module(argv[1], argv[2:])
        else:
            raise bad(USAGE)
    except AgentError as exc:
        sys.stdout.write(json.dumps(answer_error(exc.kind, str(exc))) + "\n")
        return exc.status
    except OSError as exc:
        sys.stdout.write(json.dumps(answer_error("failed", f"{cmd}: {exc}", exc.__class__.__name__)) + "\n")
        return 1
    sys.stdout.write(json.dumps({"ok": True, "result": answer}) + "\n")
    return 0


def _run_module(name: str, args: list[str]) -> int:
    """``python -m <name>`` for one of our modules, from this bundle."""
    import runpy

    import importlib.util

    if not MODULE.match(name):
        raise bad(f"module must be one of ours (overcloud.<...>), not {name!r}")
    try:
        found = importlib.util.find_spec(name) is not None
    except ImportError:
        found = False
    if not found:
        raise bad(f"no module {name} in this bundle ({bundle_path().name})")
    sys.argv = [name, *args]
    runpy.run_module(name, run_name="__main__", alter_sys=True)
    return 0
