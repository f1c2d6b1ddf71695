"""Podman containers of composed services, found by their labels: ``overcloud.io/overcloud``
(the OverCloud) and ``overcloud.io/tower`` (the Tower that started them).

Boxes are namespaces, so a container is not inside a box the way a process is: a Tower killed
mid-delete could leave one in Podman's store (stopped, or running with its box gone). Delete's
verification and ``overcloud sweep`` list and remove them with the rest of an OverCloud.

Podman's store is host-wide: every Tower on the host sees every container. A Tower lists only
those carrying its own id; one without a Tower label (made before Towers had ids) is another
Tower's as far as a sweep knows, and is named only when its OverCloud id is asked for in full.
"""

from __future__ import annotations

import shutil
import subprocess

LABEL = "overcloud.io/overcloud"
TOWER_LABEL = "overcloud.io/tower"


def available() -> bool:
    return shutil.which("podman") is not None


def tagged(overcloud_id: str | None = None, tower_id: str | None = None) -> list[tuple[str, str]]:
    """(overcloud id, container name) of containers carrying our labels: with ``tower_id``,
    only that Tower's; with ``overcloud_id`` too, only that OverCloud's (then also one with no
    Tower label: a full OverCloud id is unique, and such a container predates Tower ids)."""
    if not available():
        return []
    flt = f"label={LABEL}={overcloud_id}" if overcloud_id else f"label={LABEL}"
    fmt = f'{{{{index .Labels "{LABEL}"}}}} {{{{index .Labels "{TOWER_LABEL}"}}}} {{{{.Names}}}}'
    r = subprocess.run(["podman", "ps", "-a", "--filter", flt, "--format", fmt],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return []
    found = []
    for line in r.stdout.splitlines():
        parts = line.split(" ")
        if len(parts) != 3:
            continue
        oc, tower, name = parts
        tower = "" if tower == "<no value>" else tower
        if tower_id is not None and tower != tower_id and not (overcloud_id and not tower):
            continue
        found.append((oc, name))
    return found


def remove(names: list[str]) -> None:
    if names and available():
        subprocess.run(["podman", "rm", "-f", "-t", "0", "--ignore", *names], capture_output=True, timeout=120)
