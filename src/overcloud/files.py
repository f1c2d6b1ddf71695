"""Writing files the two ways the Tower needs: private (secrets, launch scripts) and atomic
(files another process re-reads while we rewrite them)."""

from __future__ import annotations

import os
import threading
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
