"""The southbound contract: what an UnderCloud driver promises.

A driver lends us boxes (VMs, or network namespaces locally), joins the
boxes of one OverCloud into its own overlay network, gives us a transport
into a box, and finds everything it ever made for an OverCloud again.

Promises every driver keeps:

* **Tagged.** Every resource a driver makes carries the OverCloud id, so
  :meth:`UnderCloudDriver.list_tagged` can find it after any crash.
* **Idempotent.** ``acquire`` with the same ``BoxSpec.name`` returns the
  box that already exists instead of making a second one; ``release`` of a
  box that is already gone succeeds. Workflows re-run the task that was
  running when the Tower died, so this is what makes resume safe.
* **Confirmed.** ``release`` returns only once the cloud says the resource
  is gone; the caller may then forget it.
* **No database.** Drivers never touch the repository; everything they
  need comes in through these dataclasses and leaves through them.

Values crossing this boundary are plain dataclasses that serialise to JSON
(``dataclasses.asdict``), because workflow results are persisted.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Flavor:
    """A box size. ``cpus`` may be fractional (0.5 = half a core)."""

    name: str
    cpus: float
    memory_mb: int


#: The flavors every driver understands; the seed's m1.* names are aliases.
FLAVORS: dict[str, Flavor] = {
    "small": Flavor("small", 0.5, 512),
    "medium": Flavor("medium", 1.0, 1024),
    "large": Flavor("large", 2.0, 2048),
}
FLAVOR_ALIASES: dict[str, str] = {
    "m1.tiny": "small",
    "m1.small": "small",
    "m1.medium": "medium",
    "m1.large": "large",
}


def resolve_flavor(size: str) -> Flavor:
    """The flavor a size names (case-insensitive); ``KeyError`` when unknown."""
    key = size.strip().lower()
    key = FLAVOR_ALIASES.get(key, key)
    return FLAVORS[key]


def known_sizes() -> list[str]:
    return sorted(FLAVORS) + sorted(FLAVOR_ALIASES)


@dataclasses.dataclass
class BoxSpec:
    """What the caller asks for: one box of an OverCloud."""

    overcloud_id: str  # full id (uuid hex), used for tags
    name: str  # unique, short, stable across retries: "p0", "c1", "c2" ...
    role: str  # "post" | "cluster"
    site: str  # the site (UnderCloud name) it must live in
    flavor: Flavor


@dataclasses.dataclass
class Box:
    """A box an UnderCloud lent us."""

    overcloud_id: str
    name: str  # as in BoxSpec
    role: str
    site: str
    flavor: Flavor
    handle: str  # the driver's id for it (netns name, instance id)
    address: str  # its address on the site (underlay) network
    overlay_address: str | None = None  # set once the overlay exists
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Box":
        data = dict(data)
        data["flavor"] = Flavor(**data["flavor"])
        return cls(**data)


@dataclasses.dataclass
class Overlay:
    """The private network joining the boxes of one OverCloud."""

    overcloud_id: str
    vni: int
    subnet: str  # e.g. "10.250.3.0/24"
    addresses: dict[str, str]  # box name -> overlay address

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TaggedResource:
    """Something a driver made, found again by its tag."""

    overcloud_id: str
    kind: str  # "netns", "veth", "vxlan", "cgroup", "process", "statedir", "lease"
    name: str  # how to name it to a person ("netns oc-1a2b3c4d-c1")


@dataclasses.dataclass
class Quota:
    max_boxes: int
    used_boxes: int


class UnderCloudError(Exception):
    """A driver could not do what was asked; carries the ids involved."""

    def __init__(self, message: str, *, overcloud_id: str | None = None, site: str | None = None):
        super().__init__(message)
        self.overcloud_id = overcloud_id
        self.site = site


class UnderCloudDriver(abc.ABC):
    """One kind of cloud. Methods may be called from several threads at once."""

    kind: str = ""

    def __init__(self, name: str):
        self.name = name

    @abc.abstractmethod
    def acquire(self, specs: list[BoxSpec]) -> list[Box]:
        """Make (or find) every box in ``specs``, booted and with its
        supervisor answering; all or nothing: on error, release what this
        call made and raise :class:`UnderCloudError`."""

    @abc.abstractmethod
    def release(self, boxes: list[Box]) -> None:
        """Stop everything on these boxes and give them back. Idempotent."""

    @abc.abstractmethod
    def list_tagged(self, overcloud_id: str | None = None) -> list[TaggedResource]:
        """Every resource this driver made, for one OverCloud or for all."""

    @abc.abstractmethod
    def quota(self) -> Quota:
        """How many boxes this UnderCloud may still lend."""
