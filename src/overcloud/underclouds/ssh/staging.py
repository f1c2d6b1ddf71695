"""What a workload on a remote box needs from the Tower's machine, put on the box's host over
the host's SSH connection (no registry, no listener of the Tower exposed to hosts):

* :func:`stage_tree` — a directory (a process-runtime image's code): tarred once on the Tower
  (deterministic: sorted, fixed owner and times, so the same files give the same SHA-256),
  sent once per host, checked by SHA-256 on the host, unpacked under
  ``/var/lib/overcloud/trees/<sha256>`` (renamed into place in one step) and reused by every
  replica and Tower on the host.
* :func:`ensure_podman_image` — a Podman image: ``podman image exists`` on the host first;
  when it lacks it, ``podman save`` here piped into ``podman load`` there (the archive's
  SHA-256 checked on the host before loading).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Any

from overcloud.underclouds.base import UnderCloudError

TREES = "/var/lib/overcloud/trees"
_lock = threading.Lock()
_tars: dict[tuple, tuple[bytes, str]] = {}  # (path, files signature) -> (tar, sha256)
_staged: set[tuple[str, str]] = set()  # (host endpoint, sha256) known to be on the host


def _signature(root: Path) -> tuple:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            out.append((str(p.relative_to(root)), st.st_size, st.st_mtime_ns, st.st_mode))
    return (str(root), tuple(out))


def tree_tar(root: Path) -> tuple[bytes, str]:
    """A deterministic tar of ``root`` (no ``__pycache__``; files 0644 or 0755, dirs 0755,
    root-owned, mtime 0) and its SHA-256; cached while the files' sizes and times stay."""
    root = Path(root)
    key = _signature(root)
    with _lock:
        if key in _tars:
            return _tars[key]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, _, _, mode in key[1]:
            p = root / rel
            info = tarfile.TarInfo(rel)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if p.is_symlink():
                continue  # an image's code is plain files
            data = p.read_bytes()
            info.size = len(data)
            info.mode = 0o755 if mode & 0o111 else 0o644
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    out = (data, hashlib.sha256(data).hexdigest())
    with _lock:
        _tars[key] = out
    return out


STAGE_SCRIPT = r"""set -e
umask 022
dest="$1/$2"
[ -d "$dest" ] && exit 0
mkdir -p "$1"
t="$1/.$2.part$$"; d="$1/.$2.dir$$"
trap 'rm -rf "$t" "$d"' EXIT
cat > "$t"
s=$(sha256sum "$t" | cut -d" " -f1)
if [ "$s" != "$2" ]; then echo "sha256 of the transferred tree is $s, expected $2" >&2; exit 3; fi
mkdir -m 755 "$d"
tar -x --no-same-owner --no-same-permissions -f "$t" -C "$d"
chmod -R u+rwX,go+rX,go-w "$d"
mv -T "$d" "$dest" 2>/dev/null || [ -d "$dest" ]
"""


def stage_tree(host: Any, root: Path) -> str:
    """The host's copy of directory ``root`` (see the module doc): its path there."""
    data, sha = tree_tar(root)
    dest = f"{TREES}/{sha}"
    key = (host.config.endpoint, sha)
    if key in _staged:
        return dest
    r = host.run(["test", "-d", dest], timeout=30)
    if r.returncode != 0:
        r = host.run(["sh", "-c", STAGE_SCRIPT, "sh", TREES, sha], input=data, timeout=600)
        if r.returncode != 0:
            raise UnderCloudError(f"host {host.config.endpoint}: staging {Path(root).name} failed (exit "
                                  f"{r.returncode}): {r.stderr.decode('utf-8', 'replace').strip()[-300:]}",
                                  site=host.site)
    _staged.add(key)
    return dest


LOAD_SCRIPT = r"""set -e
t=$(mktemp /var/tmp/overcloud-image.XXXXXX)
trap 'rm -f "$t"' EXIT
cat > "$t"
s=$(sha256sum "$t" | cut -d" " -f1)
if [ "$s" != "$1" ]; then echo "sha256 of the transferred image is $s, expected $1" >&2; exit 3; fi
podman load -q -i "$t" >/dev/null
podman image exists "$2"
"""


def ensure_podman_image(host: Any, ref: str, env: dict[str, str] | None = None) -> bool:
    """Make sure the host's Podman has image ``ref``; returns True when it was sent now."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_./:@-]{0,250}", ref):
        raise ValueError("bad image reference")
    if (host.config.endpoint, "podman:" + ref) in _staged:
        return False
    if host.run(["podman", "image", "exists", ref], timeout=60).returncode == 0:
        _staged.add((host.config.endpoint, "podman:" + ref))
        return False
    save = subprocess.run(["podman", "save", ref], capture_output=True, timeout=600, env=env)
    if save.returncode != 0:
        raise UnderCloudError(f"podman save {ref} on the Tower's machine failed: "
                              f"{save.stderr.decode('utf-8', 'replace').strip()[-300:]}")
    sha = hashlib.sha256(save.stdout).hexdigest()
    r = host.run(["sh", "-c", LOAD_SCRIPT, "sh", sha, ref], input=save.stdout, timeout=900)
    if r.returncode != 0:
        raise UnderCloudError(f"host {host.config.endpoint}: loading image {ref} failed (exit {r.returncode}): "
                              f"{r.stderr.decode('utf-8', 'replace').strip()[-300:]}", site=host.site)
    _staged.add((host.config.endpoint, "podman:" + ref))
    return True


_cgroup_v2: dict[str, bool] = {}


def cgroup_v2(host: Any) -> bool:
    """Whether the host runs the unified cgroup hierarchy (asked once per host)."""
    key = host.config.endpoint
    if key not in _cgroup_v2:
        _cgroup_v2[key] = host.run(["test", "-f", "/sys/fs/cgroup/cgroup.controllers"], timeout=30).returncode == 0
    return _cgroup_v2[key]
