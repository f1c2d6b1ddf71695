"""Stopping a component's programs on many boxes at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from overcloud.underclouds.base import Box

if TYPE_CHECKING:
    from overcloud.southbound import Southbound


def remove_everywhere(sb: "Southbound", boxes: list[dict[str, Any]], names: tuple[str, ...]) -> list[str]:
    """Remove the named programs from every box whose supervisord still answers, boxes in
    parallel, in the order of ``names`` on each box; returns ``name@box`` for each."""

    def one(b: dict[str, Any]) -> list[str]:
        box = Box.from_dict(b)
        session = sb.session(box)
        if not session.supervisor_running():
            return []
        return [f"{n}@{box.name}" for n in session.remove_programs(names)]

    with ThreadPoolExecutor(max_workers=min(8, len(boxes)) or 1) as pool:
        return [name for names_ in pool.map(one, boxes) for name in names_]
