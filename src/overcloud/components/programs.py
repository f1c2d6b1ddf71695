"""Stopping a component's programs on many boxes at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from overcloud.underclouds.base import Box


def remove_everywhere(tower, boxes: list[dict[str, Any]], names: tuple[str, ...]) -> list[str]:
    """Remove the named programs from every box whose supervisord still answers, boxes in
    parallel, in the order of ``names`` on each box; returns ``name@box`` for each."""

    def one(b: dict[str, Any]) -> list[str]:
        box = Box.from_dict(b)
        sup = tower.local.supervisor(box)
        if not sup.is_running():
            return []
        return [f"{n}@{box.name}" for n in sup.remove_programs(names)]

    with ThreadPoolExecutor(max_workers=min(8, len(boxes)) or 1) as pool:
        return [name for names_ in pool.map(one, boxes) for name in names_]
