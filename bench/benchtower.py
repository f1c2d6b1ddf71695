"""A Tower of the benchmark's own: own bridges, address ranges and state dir; cleaned up after."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx


@contextlib.contextmanager
def tower(sites: list[dict], overlay: str, log_level: str = "warning", env: dict[str, str] | None = None,
          cleanup: Callable[[Path], None] | None = None) -> Iterator[httpx.Client]:
    """``env``: more of the Tower's environment (e.g. OVERCLOUD_SITES_FILE); ``cleanup(state_dir)``
    runs after the Tower has stopped, before its state dir goes (e.g. the ssh hosts' teardown)."""
    if os.geteuid() != 0:
        raise SystemExit("the benchmark needs root (the local UnderCloud)")
    state = Path(tempfile.mkdtemp(prefix="oc-bench-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OVERCLOUD_STATE_DIR": str(state), "OVERCLOUD_SITES": json.dumps(sites),
           "OVERCLOUD_OVERLAY_CIDR": overlay, **(env or {})}
    exe = str(Path(sys.executable).parent / "overcloud")
    log = open(state / "tower.log", "wb")
    proc = subprocess.Popen([exe, "serve", "--port", str(port), "--log-level", log_level], env=env,
                            stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    raise SystemExit(f"the Tower exited; see {state}/tower.log")
                time.sleep(0.05)
        token = (state / "admin.token").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=600) as client:
            client.state_dir = state  # for benchmarks that run the CLI against this Tower
            yield client
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        from overcloud.components.construction import ConstructionDataLake
        from overcloud.underclouds.local import LocalHost, LocalSiteConfig

        ConstructionDataLake(state).stop()
        from overcloud.config import tower_identity

        host = LocalHost(state / "local", sites=[LocalSiteConfig(s["name"], s["bridge"], s["cidr"]) for s in sites],
                         overlay_cidr=overlay, tower_id=tower_identity(state))
        left = host.list_tagged()
        if left:
            host.sweep({r.overcloud_id for r in left})
        host.teardown_sites()
        if cleanup is not None:
            cleanup(state)
        shutil.rmtree(state, ignore_errors=True)
        print(f"nothing left behind: {not left}")
