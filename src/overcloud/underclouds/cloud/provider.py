"""The provider contract: what a cloud API (OpenStack, AWS) gives a cloud site.

A cloud site (``site.py``) makes one server per box through a :class:`CloudProvider`, then hands
each server to the SSH world as a host. A provider knows one cloud API and nothing of boxes,
hosts or the SSH path; it makes, finds (by tag) and deletes the cloud's resources of an
OverCloud. Everything it needs to find them again after a crash lives on the resources' tags
(metadata on OpenStack servers): see the ``TAG_*`` names below.

Promises every provider keeps:

* **Idempotent.** ``ensure_network`` and ``create_servers`` find what a previous call made (by
  name and the OverCloud's tag) before they make anything; deletes of what is gone succeed.
* **Confirmed.** ``delete_servers``, ``delete_network`` and ``sweep`` return only once the cloud
  says each resource is gone (or raise).
* **Retried only when it helps.** Throttling (EC2 ``RequestLimitExceeded``/``Throttling``, HTTP
  429) and server errors (5xx, a connection refused or reset while a call is under way) are
  retried with capped exponential backoff and jitter (:func:`call_with_retries`); every other
  error is raised at once with the cloud's message.
* **No secrets.** Passwords, application credential secrets and secret keys never appear in a
  message: providers catch the SDK's exceptions and raise these without them.
* **Counted.** :attr:`CloudProvider.stats` counts API calls and the seconds spent waiting on the
  cloud (backoff sleeps and waiters), for the benchmark.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from overcloud.underclouds.base import TaggedResource, UnderCloudError

if TYPE_CHECKING:  # pragma: no cover
    from overcloud.underclouds.cloud.config import CloudSiteConfig

__all__ = [
    "CallStats",
    "CloudProvider",
    "CloudQuotaExceeded",
    "CloudServerFailed",
    "CloudUnavailable",
    "Limits",
    "NetworkInfo",
    "Server",
    "ServerRequest",
    "TAG_BOX",
    "TAG_BOX_CIDR",
    "TAG_HOST_KEY",
    "TAG_OVERCLOUD",
    "TAG_TOWER",
    "TaggedResource",
    "VXLAN_PORT",
    "WG_PORT",
    "call_with_retries",
    "network_name",
    "server_name",
]

#: tag keys (OpenStack: "key=value" strings for the first two, server metadata for the rest)
TAG_OVERCLOUD = "overcloud.io/overcloud"
TAG_TOWER = "overcloud.io/tower"
TAG_BOX = "overcloud.io/box"
TAG_HOST_KEY = "overcloud.io/host-key"
TAG_BOX_CIDR = "overcloud.io/box-cidr"

#: the ports the security group opens besides SSH (22) and the NodePort range (30000-32767)
WG_PORT = 51820  # WireGuard between sites' hosts (ssh/wan_plan.py DEFAULT_PORT)
VXLAN_PORT = 4789  # VXLAN between hosts of one site (the overlay)
NODEPORT_RANGE = (30000, 32767)

#: server statuses, the same words for every cloud
BUILDING, ACTIVE, ERROR, DELETED = "building", "active", "error", "deleted"


def network_name(overcloud_id: str) -> str:
    """``oc-<oc id[:8]>``: the OverCloud's network, subnet, router, security group, key pair."""
    return f"oc-{overcloud_id[:8]}"


def server_name(overcloud_id: str, box: str) -> str:
    """``oc-<oc id[:8]>-<box>``: the server of one box."""
    return f"oc-{overcloud_id[:8]}-{box}"


# -- errors ------------------------------------------------------------------------------


class CloudUnavailable(UnderCloudError):
    """Authentication fails or the endpoint does not answer: the site cannot be used now.
    The API answers 503 naming the site and this reason."""

    def __init__(self, message: str, *, site: str | None = None, overcloud_id: str | None = None):
        super().__init__(message, overcloud_id=overcloud_id, site=site)
        self.reason = message


class CloudQuotaExceeded(UnderCloudError):
    """The cloud's quota (or the site's ``max_servers``) cannot hold what is asked; raised before
    anything is made. ``numbers``: ``{"instances": {"limit": 10, "used": 8, "asked": 4}, ...}``.
    The API answers 429 with them."""

    def __init__(self, message: str, numbers: Mapping[str, Mapping[str, Any]], *, site: str | None = None,
                 overcloud_id: str | None = None):
        super().__init__(message, overcloud_id=overcloud_id, site=site)
        self.numbers = {k: dict(v) for k, v in numbers.items()}


class CloudServerFailed(UnderCloudError):
    """A server went to ERROR, or was terminated while booting; the message has the cloud's fault."""

    def __init__(self, message: str, *, server: str | None = None, fault: str | None = None,
                 site: str | None = None, overcloud_id: str | None = None):
        super().__init__(message, overcloud_id=overcloud_id, site=site)
        self.server = server
        self.fault = fault


# -- values --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServerRequest:
    """One server to make (one per box)."""

    overcloud_id: str
    box: str  # the box name (p0, c1, ...)
    name: str  # server_name(overcloud_id, box)
    flavor: str  # OUR flavor name: small | medium | large (the provider maps it with the site config)
    user_data: str  # cloud-config text (userdata.py)
    tags: Mapping[str, str]  # every TAG_* of a server, host key and box cidr included


@dataclasses.dataclass
class Server:
    """A server as the cloud reports it."""

    id: str
    name: str
    box: str | None  # from its TAG_BOX (None: not one of ours, or untagged)
    status: str  # building | active | error | deleted
    private_address: str | None
    public_address: str | None = None  # floating IP / public IP; None when it has none
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    fault: str | None = None  # the cloud's reason when status is error

    @property
    def overcloud_id(self) -> str | None:
        return self.tags.get(TAG_OVERCLOUD)


@dataclasses.dataclass
class NetworkInfo:
    """What ``ensure_network`` made (or found) for one OverCloud on one site."""

    overcloud_id: str
    cidr: str  # the OverCloud's subnet on this site (a /24 of the site's pool)
    gateway: str | None
    ids: dict[str, str] = dataclasses.field(default_factory=dict)  # network/subnet/router/security_group/key_pair/vpc ids


@dataclasses.dataclass
class Limits:
    """The cloud's quota for this site's project/account. ``None``: unlimited or unknown."""

    max_instances: int | None = None
    used_instances: int | None = None
    max_cores: int | None = None
    used_cores: int | None = None
    max_ram_mb: int | None = None
    used_ram_mb: int | None = None
    flavors: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # our flavor -> (vcpus, ram_mb)
    # other quotas with usage, e.g. Neutron's {"networks": {"limit": 100, "used": 3}, "ports": ..., "security_groups": ...}
    quotas: dict[str, dict[str, int | None]] = dataclasses.field(default_factory=dict)


# -- counting and retries ------------------------------------------------------------------


@dataclasses.dataclass
class CallStats:
    """API calls made and seconds spent waiting on the cloud (backoff, waiters, and the servers' boot
    until SSH answers: CloudSite adds that). Thread-safe."""

    calls: int = 0
    wait_s: float = 0.0
    retries: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, n: int = 1) -> None:
        with self._lock:
            self.calls += n

    def waited(self, seconds: float) -> None:
        with self._lock:
            self.wait_s += max(0.0, seconds)

    def retried(self, n: int = 1) -> None:
        with self._lock:
            self.retries += n

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """``with stats.waiting():`` around a waiter or a poll loop: its time counts as waiting."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.waited(time.monotonic() - start)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {"calls": self.calls, "wait_s": round(self.wait_s, 3), "retries": self.retries}


T = TypeVar("T")


def backoff_delay(attempt: int, *, base: float = 0.5, cap: float = 20.0, rng: Callable[[], float] = random.random) -> float:
    """The pause before retry number ``attempt`` (0 = the first retry): ``min(cap, base * 2**attempt)``
    with half of it jittered (between 50% and 100% of that)."""
    top = min(cap, base * (2 ** attempt))
    return top * (0.5 + 0.5 * rng())


def call_with_retries(fn: Callable[[], T], *, retryable: Callable[[BaseException], bool], stats: CallStats | None = None,
                      attempts: int = 6, base: float = 0.5, cap: float = 20.0, deadline: float | None = None,
                      sleep: Callable[[float], None] = time.sleep, rng: Callable[[], float] = random.random) -> T:
    """``fn()``, retried while ``retryable(exc)`` says the error is throttling or a server error.

    Up to ``attempts`` calls in all (each counted in ``stats.calls``); between them a capped
    exponential pause with jitter (:func:`backoff_delay`, counted in ``stats.wait_s``). ``deadline``
    (a ``time.monotonic()`` value) stops retrying once the next pause would pass it. Any error
    ``retryable`` refuses, and the last one when retries are used up, is raised as it is: the
    provider turns it into one of this module's errors (without secrets)."""
    attempt = 0
    while True:
        if stats is not None:
            stats.count()
        try:
            return fn()
        except BaseException as exc:  # noqa: BLE001 - the predicate decides; everything else re-raised
            if isinstance(exc, (KeyboardInterrupt, SystemExit)) or not retryable(exc) or attempt + 1 >= attempts:
                raise
            pause = backoff_delay(attempt, base=base, cap=cap, rng=rng)
            if deadline is not None and time.monotonic() + pause > deadline:
                raise
            attempt += 1
            if stats is not None:
                stats.retried()
                stats.waited(pause)
            sleep(pause)


def http_status_retryable(status: int | None) -> bool:
    """Throttled (429) or a server error (5xx)."""
    return status is not None and (status == 429 or 500 <= status <= 599)


def connection_retryable(exc: BaseException) -> bool:
    """A connection refused or reset while a call was under way (the endpoint restarting)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # the SDKs wrap the socket's error
        seen.add(id(exc))
        if isinstance(exc, (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


# -- the provider --------------------------------------------------------------------------


class CloudProvider(abc.ABC):
    """One cloud API for one site. Methods may be called from several threads at once.

    ``site`` is the site's name, ``kind`` ``openstack`` or ``aws``, ``tower_id`` this Tower's id
    (every resource is tagged with it and with the OverCloud id; a provider lists and deletes only
    its own Tower's)."""

    kind: str = ""

    def __init__(self, config: "CloudSiteConfig", tower_id: str):
        self.config = config
        self.site = config.name
        self.tower_id = tower_id
        self.stats = CallStats()

    def base_tags(self, overcloud_id: str) -> dict[str, str]:
        """The tags every resource of an OverCloud carries."""
        return {TAG_OVERCLOUD: overcloud_id, TAG_TOWER: self.tower_id}

    @abc.abstractmethod
    def check(self) -> None:
        """Authentication and endpoint, with one cheap call; CloudUnavailable(reason) when not."""

    @abc.abstractmethod
    def limits(self) -> Limits:
        """The cloud's quota now (Nova/Neutron limits; EC2 account attributes / vCPU limit)."""

    @abc.abstractmethod
    def ensure_network(self, overcloud_id: str, public_key: str) -> NetworkInfo:
        """Network + subnet (+ router), security group (SSH from ``ssh_cidrs``, VXLAN from the group,
        NodePorts from ``nodeport_cidrs``), key pair with ``public_key``; finds its own first."""

    @abc.abstractmethod
    def allow_wan_peers(self, overcloud_id: str, cidrs: list[str]) -> None:
        """WireGuard UDP (WG_PORT) from these CIDRs (other sites' hosts) into the OverCloud's group.
        Idempotent; rules already there stay."""

    @abc.abstractmethod
    def create_servers(self, net: NetworkInfo, reqs: list[ServerRequest]) -> list[Server]:
        """Start one server per request (in request order); a server with that name AND the
        OverCloud's tag is reused, never made twice."""

    @abc.abstractmethod
    def wait_servers(self, ids: list[str], timeout: float) -> list[Server]:
        """Until every one is active (with its addresses), in ``ids`` order; CloudServerFailed when
        one goes to error or is gone; UnderCloudError at the timeout."""

    @abc.abstractmethod
    def delete_servers(self, ids: list[str], timeout: float) -> None:
        """Delete these servers; returns once the cloud confirms each gone (gone already is fine)."""

    @abc.abstractmethod
    def delete_network(self, overcloud_id: str, timeout: float) -> None:
        """Security group, key pair, router, subnet, network (VPC) of the OverCloud; confirmed."""

    @abc.abstractmethod
    def list_servers(self, overcloud_id: str | None = None) -> list[Server]:
        """This Tower's servers (by tag), of one OverCloud or all; deleted ones left out."""

    @abc.abstractmethod
    def list_tagged(self, overcloud_id: str | None = None) -> list[TaggedResource]:
        """Every resource of this Tower on this site (servers, networks, groups, key pairs, ...)."""

    @abc.abstractmethod
    def sweep(self, overcloud_ids: set[str]) -> list[TaggedResource]:
        """Delete everything of these OverClouds (servers first), confirmed; returns what went."""

    def needs(self, reqs: list[ServerRequest], *, new_network: bool) -> dict[str, int]:
        """What making ``reqs`` (and, when ``new_network``, the OverCloud's network on the site) takes
        from the cloud's quotas, in the keys of :class:`Limits` (``instances``, ``cores``, ``ram_mb``)
        and of ``Limits.quotas`` (``ports``, ``networks``, ...). The cloud site compares it with
        :meth:`limits` before anything is made (429 with the numbers). By default the instances
        only; the site adds cores and RAM from ``Limits.flavors`` when the provider leaves them out."""
        return {"instances": len(reqs)}

    def close(self) -> None:
        """Release the SDK's connections (optional)."""
