"""What an OverCloud should look like: the normalised form of every create request.

The API turns the seed's bodies and the native body into a :class:`CreatePlan`;
the create workflow turns the plan into box specs. Plain dataclasses, JSON-safe.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from overcloud.underclouds.base import resolve_flavor


POST_MIN_WITH_DATALAKE = "medium"


@dataclasses.dataclass
class SitePlan:
    site: str  # a configured site (UnderCloud) name, e.g. "local-a"
    clusters: int
    size: str  # as the user spelled it; resolve_flavor() maps it


@dataclasses.dataclass
class CreatePlan:
    name: str
    sites: list[SitePlan]
    post_site: str
    post_size: str = "small"
    datalake: dict[str, Any] = dataclasses.field(default_factory=dict)
    fabric: dict[str, Any] = dataclasses.field(default_factory=lambda: {"enabled": True})

    @property
    def clusters(self) -> int:
        return sum(s.clusters for s in self.sites)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CreatePlan":
        data = dict(data)
        data["sites"] = [SitePlan(**s) for s in data["sites"]]
        return cls(**data)

    @property
    def datalake_enabled(self) -> bool:
        return bool(self.datalake.get("enabled", True))

    def post_flavor(self):
        """The Post's flavor: as asked, but at least medium when it runs the DataLake's
        master, filer and S3 gateway (about 350 MiB resident together)."""
        flavor = resolve_flavor(self.post_size)
        minimum = resolve_flavor(POST_MIN_WITH_DATALAKE)
        if self.datalake_enabled and flavor.memory_mb < minimum.memory_mb:
            return minimum
        return flavor

    def box_specs(self, overcloud_id: str) -> list[dict[str, Any]]:
        """The Post (``p0``) and cluster boxes ``c1..cN`` in site order, as JSON-safe dicts."""
        specs = [
            {
                "overcloud_id": overcloud_id,
                "name": "p0",
                "role": "post",
                "site": self.post_site,
                "flavor": dataclasses.asdict(self.post_flavor()),
            }
        ]
        n = 0
        for site in self.sites:
            flavor = dataclasses.asdict(resolve_flavor(site.size))
            for _ in range(site.clusters):
                n += 1
                specs.append(
                    {"overcloud_id": overcloud_id, "name": f"c{n}", "role": "cluster", "site": site.site, "flavor": flavor}
                )
        return specs


def spread(total: int, sites: list[str]) -> list[int]:
    """Split ``total`` clusters over ``sites`` as evenly as possible, first sites first."""
    base, extra = divmod(total, len(sites))
    return [base + (1 if i < extra else 0) for i in range(len(sites))]
