"""The local UnderCloud: boxes are network namespaces on this host.

``host`` (LocalHost, LocalSite: the driver), ``net`` (links, bridges, VXLAN, nftables),
``leases`` (addresses, VNIs, overlay subnets), ``containers`` (Podman leftovers) and
``session`` (the BoxSession of a local box). Nothing outside this package knows that a
box is a network namespace.
"""

from overcloud.underclouds.local.host import (  # noqa: F401
    DEFAULT_SITES,
    HANDLE_PREFIX,
    LocalHost,
    LocalSite,
    LocalSiteConfig,
    box_handle,
)
