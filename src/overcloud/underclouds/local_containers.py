"""Podman containers of composed services, found by their ``overcloud.io/overcloud`` label.

Boxes are namespaces, so a container is not inside a box the way a process is: a Tower killed
mid-delete could leave one in Podman's store (stopped, or running with its box gone). Delete's
verification and ``overcloud sweep`` list and remove them with the rest of an OverCloud."""

from __future__ import annotations

import shutil
import subprocess

LABEL = "overcloud.io/overcloud"


def available() -> bool:
    return shutil.which("podman") is not None


def tagged(overcloud_id: str | None = None) -> list[tuple[str, str]]:
    """(overcloud id, container name) of every container carrying our label."""
    if not available():
        return []
    flt = f"label={LABEL}={overcloud_id}" if overcloud_id else f"label={LABEL}"
    r = subprocess.run(["podman", "ps", "-a", "--filter", flt, "--format", f'{{{{index .Labels "{LABEL}"}}}} {{{{.Names}}}}'],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return []
    return [tuple(line.split(" ", 1)) for line in r.stdout.splitlines() if " " in line]


def remove(names: list[str]) -> None:
    if names and available():
        subprocess.run(["podman", "rm", "-f", "-t", "0", "--ignore", *names], capture_output=True, timeout=120)
