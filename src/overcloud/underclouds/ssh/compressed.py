"""Artifacts sent to ssh hosts compressed (``weed``: 146 MB raw, ~51 MB as gzip level 1).

The Tower compresses an artifact once and keeps the compressed form content-addressed: keyed
by the artifact's SHA-256 and the codec, ``<artifact's dir>/.compressed/<sha256>.gz`` (shared by
every Tower using that artifact), else under the caller's fallback dir when that one is not
writable. The host decompresses while it receives (``gzip -dc``, gzip being Essential on Debian;
``xz-utils`` is only Priority standard and ``zstd`` optional, so neither is on a minimal image)
and checks the SHA-256 of the *decompressed* bytes before the rename, as for a raw transfer.

Compression runs in a background thread (:func:`start`, called by ``SSHUnderCloud.prepare`` at
``serve``, while the hosts are being prepared), in independent gzip members of
:data:`CHUNK` bytes compressed on two threads (zlib releases the GIL); concatenated members
are one valid gzip stream. The raw bytes' SHA-256 is computed on the way: an artifact that
changed since its SHA-256 was taken gives no compressed form. An artifact that does not shrink
below :data:`WORTH` of its size (random bytes) is recorded as such (``<sha256>.gz.none``) and
sent raw.

See docs/remote-hosts.md, "The ssh driver" (Artifacts).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

logger = logging.getLogger(__name__)

CODEC = "gz"
DECOMPRESS = "gzip -dc"  # the host's side of CODEC
LEVEL = 1  # zlib's fastest: 146 -> 51 MB for weed; level 6 saves a few MB more for 3x the CPU
CHUNK = 16 << 20  # bytes per gzip member (members are compressed in parallel)
WORTH = 0.9  # kept only when the compressed form is below this fraction of the raw size

_lock = threading.Lock()
_pending: dict[str, Future] = {}  # sha256 -> the compression under way or done (its Path or None)


def _dirs(path: Path, fallback: Path | None) -> list[Path]:
    dirs = [Path(path).parent / ".compressed"]
    if fallback is not None:
        dirs.append(Path(fallback))
    return dirs


def cached(path: Path, sha256: str, fallback: Path | None = None) -> Path | None | bool:
    """The compressed form on disk (a Path), False when it is known not to be worth it, None
    when there is none yet."""
    for d in _dirs(path, fallback):
        f = d / f"{sha256}.{CODEC}"
        if f.is_file():
            return f
        if (d / f"{sha256}.{CODEC}.none").exists():
            return False
    return None


def _member(data: bytes) -> bytes:
    c = zlib.compressobj(LEVEL, zlib.DEFLATED, 31)  # wbits 31: a gzip member (header and CRC-32)
    return c.compress(data) + c.flush()


def _compress(path: Path, sha256: str, fallback: Path | None) -> Path | None:
    t0 = time.monotonic()
    raw = hashlib.sha256()
    size = 0
    parts: list[bytes] = []

    def chunks():
        nonlocal size
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                raw.update(block)
                size += len(block)
                yield block

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="compress") as pool:
        parts = list(pool.map(_member, chunks()))
    if raw.hexdigest() != sha256:
        logger.warning("%s changed since its SHA-256 was taken: not compressing it", path)
        return None
    packed = sum(len(p) for p in parts)
    worth = packed < WORTH * size
    for d in _dirs(path, fallback):
        try:
            d.mkdir(mode=0o755, parents=True, exist_ok=True)
            name = f"{sha256}.{CODEC}" if worth else f"{sha256}.{CODEC}.none"
            tmp = d / f".{name}.part{os.getpid()}.{threading.get_ident()}"
            try:
                with open(tmp, "wb") as f:
                    if worth:
                        for p in parts:
                            f.write(p)
                os.replace(tmp, d / name)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            logger.info("cannot keep the compressed form of %s in %s: %s", path.name, d, exc)
            continue
        logger.info("%s: %d MB compressed to %d MB (%s level %d) in %.1f s%s", path.name, size >> 20, packed >> 20,
                    CODEC, LEVEL, time.monotonic() - t0, "" if worth else ": not worth it, sent raw")
        return d / name if worth else None
    return None


def start(path: Path, sha256: str, fallback: Path | None = None) -> Future:
    """The compressed form of ``path`` (whose SHA-256 is ``sha256``), made in a background thread
    unless it is on disk or under way: a Future of its Path, or None (not worth it, or failed)."""
    with _lock:
        fut = _pending.get(sha256)
        if fut is not None and (not fut.done() or fut.result() is None or fut.result().is_file()):
            return fut
        fut = Future()
        found = cached(path, sha256, fallback)
        if found is not None:
            fut.set_result(found or None)
            _pending[sha256] = fut
            return fut
        _pending[sha256] = fut

    def work() -> None:
        try:
            fut.set_result(_compress(Path(path), sha256, fallback))
        except Exception as exc:  # noqa: BLE001 - no compressed form: the artifact is sent raw
            logger.warning("compressing %s failed (it is sent raw): %s", path, exc)
            fut.set_result(None)

    threading.Thread(target=work, name=f"compress-{sha256[:8]}", daemon=True).start()
    return fut


def under_way(sha256: str) -> Future | None:
    """The compression of ``sha256`` started in this process (done or not), if any."""
    with _lock:
        return _pending.get(sha256)


def forget(sha256: str, form: Path) -> None:
    """Drop a compressed form the host refused (corrupted on disk): the next call makes it again."""
    form.unlink(missing_ok=True)
    with _lock:
        _pending.pop(sha256, None)
