"""Writing files the two ways the Tower needs: private (secrets, launch scripts) and atomic
(files another process re-reads while we rewrite them)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path


def write_private(path: str | Path, text: str, mode: int = 0o600) -> None:
    """Write ``text``, creating the file with ``mode`` so it is never readable by others, not
    even for a moment (a file that exists keeps its mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def write_atomic(path: str | Path, text: str) -> None:
    """Replace the file in one step: a reader sees the old text or the new, never half. The
    temporary file is ``<stem>.tmp<pid>.<thread>`` beside it: per process and thread, so
    concurrent writers never share one, and a writer killed midway is recognisable by name."""
    path = Path(path)
    tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def restrict(directory: str | Path) -> None:
    """The Tower's state dir belongs to root alone: the directory 0700 and every file directly in
    it without group or other bits (databases made before ``serve`` ran with umask 077, and
    SQLite's -wal/-shm files, which copy the database's mode)."""
    directory = Path(directory)
    os.chmod(directory, 0o700)
    for entry in directory.iterdir():
        try:
            st = entry.lstat()
        except FileNotFoundError:
            continue
        if entry.is_symlink():
            continue
        if entry.is_dir():
            os.chmod(entry, st.st_mode & 0o700)
        elif st.st_mode & 0o077:
            os.chmod(entry, st.st_mode & 0o700)


def sha256_file(path: str | Path) -> str:
    """The file's SHA-256, read a MiB at a time (artifacts and image tars are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def flocked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (made if missing): one holder at a time across
    processes. Threads of one process need their own lock beside it (flock is per open file)."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
