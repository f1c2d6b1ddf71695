"""What workflow actions and the service controller may use: the narrow, typed dependency
object the Tower hands them (``ctx.services``), never the Tower itself.

* ``drivers``: the UnderCloud drivers by site; ``session(box)`` opens a
  :class:`~overcloud.underclouds.base.BoxSession` onto a box through its site's driver;
  ``join_overlay``/``leave_overlay``/``list_tagged``/``sweep`` ask every driver that holds
  some of the boxes. Nothing here knows what kind of cloud a box lives on.
* ``records``: the repository writes and reads they do (:class:`Records`).
* ``settings`` and ``secrets`` (sealing the keys they make), ``construction_datalake``
  (waits for the Tower's own store) and ``services`` (the service controller, for the
  Fabric's scrape targets and the delete's first step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from overcloud.underclouds.base import Box, BoxSession, Overlay, TaggedResource, UnderCloudDriver, UnderCloudError

if TYPE_CHECKING:
    from overcloud.components.construction import ConstructionDataLake
    from overcloud.config import Settings
    from overcloud.identity.secrets import SecretBox


class Records(Protocol):
    """The repository methods actions and the service controller use (the Repository has them)."""

    def get(self, overcloud_id: str) -> Any: ...
    def list(self) -> list[Any]: ...
    def update_info(self, overcloud_id: str, **info: Any) -> None: ...
    def set_status(self, overcloud_id: str, new: str, **kw: Any) -> None: ...
    def add_event(self, overcloud_id: str, kind: str, data: dict[str, Any]) -> None: ...
    def save_boxes(self, overcloud_id: str, boxes: list[dict[str, Any]], state: str = ...) -> None: ...
    def set_box_fields(self, overcloud_id: str, name: str, **fields: Any) -> None: ...
    def set_boxes_state(self, overcloud_id: str, state: str) -> None: ...
    def get_secret(self, overcloud_id: str, name: str) -> str | None: ...
    def put_secret(self, overcloud_id: str, name: str, sealed: str) -> None: ...
    def delete_secrets(self, overcloud_id: str) -> None: ...
    def services(self, overcloud_id: str | None = None) -> list[Any]: ...
    def service(self, overcloud_id: str, name: str) -> Any: ...
    def add_services(self, rows: list[dict[str, Any]]) -> None: ...
    def update_service(self, overcloud_id: str, name: str, **fields: Any) -> None: ...
    def delete_service(self, overcloud_id: str, name: str) -> None: ...


def box_dict(row) -> dict[str, Any]:
    """A repository box row as the ``Box`` dict workflows carry."""
    return {
        "overcloud_id": row.overcloud_id,
        "name": row.name,
        "role": row.role,
        "site": row.site,
        "flavor": {"name": row.flavor, "cpus": row.cpus, "memory_mb": row.memory_mb},
        "handle": row.handle,
        "address": row.address,
        "overlay_address": row.overlay_address,
        "extra": {},
    }


def box_obj(row) -> Box:
    """A repository box row as a ``Box`` (a ``Box`` is returned as it is)."""
    return row if isinstance(row, Box) else Box.from_dict(box_dict(row))


@dataclasses.dataclass
class Southbound:
    drivers: dict[str, UnderCloudDriver]
    records: Records
    settings: "Settings"
    secrets: "SecretBox"
    #: the Tower's Construction DataLake, once running (``timeout`` seconds at most); raises
    #: UnderCloudError when there is none or it did not start
    construction_datalake: Callable[..., "ConstructionDataLake"]
    #: the service controller (set by the Tower once made)
    services: Any = None

    def driver(self, site: str) -> UnderCloudDriver:
        try:
            return self.drivers[site]
        except KeyError:
            raise UnderCloudError(f"site {site} is not served by this Tower (configured: {', '.join(self.drivers)})",
                                  site=site) from None

    def session(self, box) -> BoxSession:
        """A session onto ``box`` (a Box, or a repository box row)."""
        box = box_obj(box)
        return self.driver(box.site).connect(box)

    def _domains(self, boxes: Iterable[Box]) -> list[tuple[UnderCloudDriver, list[Box]]]:
        """Boxes grouped by overlay domain, each with one driver of that domain."""
        groups: dict[int, tuple[UnderCloudDriver, list[Box]]] = {}
        for b in boxes:
            d = self.driver(b.site)
            groups.setdefault(id(d.overlay_domain), (d, []))[1].append(b)
        return list(groups.values())

    def _unique_drivers(self) -> list[UnderCloudDriver]:
        seen: dict[int, UnderCloudDriver] = {}
        for d in self.drivers.values():
            seen.setdefault(id(d.overlay_domain), d)
        return list(seen.values())

    def join_overlay(self, overcloud_id: str, boxes: list[Box]) -> Overlay:
        groups = self._domains(boxes)
        if len(groups) > 1:
            raise UnderCloudError("one overlay across UnderClouds of different kinds is not built yet "
                                  f"(sites {', '.join(sorted({b.site for b in boxes}))})", overcloud_id=overcloud_id)
        driver, members = groups[0]
        return driver.join_overlay(overcloud_id, members)

    def leave_overlay(self, overcloud_id: str, boxes: list[Box]) -> None:
        for driver, members in self._domains(b for b in boxes if b.site in self.drivers):
            driver.leave_overlay(overcloud_id, members)

    def list_tagged(self, overcloud_id: str | None = None) -> list[TaggedResource]:
        """What every driver made (for one OverCloud or all), each domain asked once, then what
        each site made beyond its domain (a cloud site's servers and networks)."""
        return ([r for d in self._unique_drivers() for r in d.list_tagged(overcloud_id)]
                + [r for d in self.drivers.values() for r in d.site_tagged(overcloud_id)])

    def sweep(self, overcloud_ids: set[str]) -> list[TaggedResource]:
        """Each domain's sweep (the boxes, while their hosts still answer), then each site's own."""
        return ([r for d in self._unique_drivers() for r in d.sweep(overcloud_ids)]
                + [r for d in self.drivers.values() for r in d.sweep_site(overcloud_ids)])
