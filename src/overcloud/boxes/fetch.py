"""Fetch a content-addressed artifact, verify it, and exec it (run by a box's supervisord).

``python -I -S fetch.py <url or @file> <sha256> <cache dir> -- <args...>``: if ``<cache>/<sha256>``
is missing, download the URL (a presigned GET on the Construction DataLake; ``@file`` reads it
from a file the Tower refreshes, so the command line never changes), check its SHA-256,
and put it in place atomically (one downloader at a time per artifact, by flock). Then, every
time, check the cached file's SHA-256 again and exec exactly what was checked (through the
open file descriptor): a cached artifact replaced since it was fetched is refused, never run.
Standard library only: it runs before anything else exists in the box.
"""

import fcntl
import hashlib
import os
import sys
import urllib.request


class Refused(SystemExit):
    """The artifact is not the one asked for (exits non-zero with the reason)."""


def _digest(f) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def fetch(url: str, sha256: str, cache: str) -> str:
    os.makedirs(cache, mode=0o755, exist_ok=True)
    target = os.path.join(cache, sha256)
    if os.path.exists(target):
        return target
    with open(target + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(target):
            return target
        tmp = f"{target}.part{os.getpid()}"
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            os.unlink(tmp)
            raise Refused(f"fetch: {url.split('?', 1)[0]} has sha256 {digest.hexdigest()}, expected {sha256}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    return target


def open_verified(path: str, sha256: str) -> int:
    """A descriptor of ``path`` whose content has this SHA-256 (else Refused). The caller execs
    the descriptor, so what runs is what was hashed, whatever happens to the path meanwhile."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            actual = _digest(f)
    except BaseException:
        os.close(fd)
        raise
    if actual != sha256:
        os.close(fd)
        raise Refused(f"fetch: refusing {path}: its sha256 is {actual}, not {sha256}; the cached artifact was "
                      "replaced after it was fetched (remove it to fetch it again)")
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def main() -> None:
    if "--" not in sys.argv:
        raise SystemExit("usage: fetch.py URL SHA256 CACHE -- ARGS...")
    sep = sys.argv.index("--")
    url, sha256, cache = sys.argv[1:sep]
    if url.startswith("@"):
        with open(url[1:]) as f:
            url = f.read().strip()
    path = fetch(url, sha256, cache)
    fd = open_verified(path, sha256)
    os.set_inheritable(fd, True)  # a #! script is read by its interpreter through /dev/fd/N
    os.execve(fd, [path, *sys.argv[sep + 1:]], os.environ)


if __name__ == "__main__":
    main()
