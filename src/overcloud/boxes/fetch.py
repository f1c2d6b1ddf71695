"""Fetch a content-addressed artifact, verify it, and exec it (run by a box's supervisord).

``python -I -S fetch.py <url or @file> <sha256> <cache dir> -- <args...>``: if ``<cache>/<sha256>``
is missing, download the URL (a presigned GET on the Construction DataLake; ``@file`` reads it
from a file the Tower refreshes, so the command line never changes), check its SHA-256,
and put it in place atomically (one downloader at a time per artifact, by flock); then exec it
with ``<args>``. Standard library only: it runs before anything else exists in the box.
"""

import fcntl
import hashlib
import os
import sys
import urllib.request


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
            raise SystemExit(f"fetch: {url} has sha256 {digest.hexdigest()}, expected {sha256}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    return target


def main() -> None:
    if "--" not in sys.argv:
        raise SystemExit("usage: fetch.py URL SHA256 CACHE -- ARGS...")
    sep = sys.argv.index("--")
    url, sha256, cache = sys.argv[1:sep]
    if url.startswith("@"):
        with open(url[1:]) as f:
            url = f.read().strip()
    path = fetch(url, sha256, cache)
    os.execv(path, [path, *sys.argv[sep + 1:]])


if __name__ == "__main__":
    main()
