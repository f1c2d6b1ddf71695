"""Running a command whose output is not ours to bound (a workload's probe): keep its head."""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections.abc import Mapping

from overcloud.limits import PROBE_OUTPUT_BYTES


def run_bounded(argv: list[str], *, timeout: float, env: Mapping[str, str] | None = None, keep: int = PROBE_OUTPUT_BYTES,
                input: bytes | None = None) -> tuple[int | None, bytes]:
    """Run ``argv`` and read its stdout and stderr as they come, keeping the first ``keep``
    bytes and dropping the rest (a workload's command prints what it likes: a probe that
    printed 400 MB once grew the Tower by 700 MB when it was all captured). The exit code is
    None when ``timeout`` passed first (the command is killed)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(env) if env is not None else None)
    if input is not None:
        try:
            proc.stdin.write(input)
        except BrokenPipeError:
            pass
        proc.stdin.close()
    deadline = time.monotonic() + timeout
    head = bytearray()
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if not sel.select(left):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:  # every writer has closed it
                    return proc.wait(max(0.0, deadline - time.monotonic())), bytes(head)
                if len(head) < keep:
                    head += chunk[: keep - len(head)]
        return None, bytes(head)
    except subprocess.TimeoutExpired:
        return None, bytes(head)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
