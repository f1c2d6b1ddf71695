"""How the OpenStack provider talks to OpenStack: the connection, retries, errors without secrets,
and the tags (see ``openstack.py`` for what it makes).

* **The connection** reads exactly the site's cloud entry: a named ``clouds_file`` alone (with a
  ``secure.yaml`` beside it), never merged with OS_* variables or another file (openstacksdk
  otherwise silently takes the only cloud of a file); without one, OS_CLIENT_CONFIG_FILE or the
  standard places. openstacksdk's own retries are off, so every try is ours and counted.
* **Retries**: HTTP 429 and 5xx, and a connection refused/reset/timed out, with the contract's
  backoff (:func:`~overcloud.underclouds.cloud.provider.call_with_retries`); everything else at once.
  A create retried after such an error first looks for what the failed try may have made.
* **Errors**: Keystone refusing the credentials or not answering, and 5xx after the retries,
  become :class:`CloudUnavailable`; other errors :class:`UnderCloudError` with the cloud's
  message. Every message is scrubbed of the cloud entry's secrets (password, application
  credential secret, token) before it leaves.
* **Tags**: the strings ``overcloud.io:overcloud=<id>``, ``overcloud.io:tower=<id>`` (servers also
  ``overcloud.io:box=<box>``): Nova refuses ``/`` and ``,`` in tags (the API-WG tag guideline) and
  ``/`` in metadata keys, so the contract's ``overcloud.io/...`` keys are written with ``:``.
  Neutron resources also get a description naming the OverCloud and Tower in the create itself:
  one made just before a crash, before its tags were set, is still recognised as ours.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from overcloud.underclouds.base import UnderCloudError
from overcloud.underclouds.cloud.provider import (
    TAG_BOX, TAG_OVERCLOUD, TAG_TOWER, CloudProvider, CloudUnavailable, call_with_retries, connection_retryable,
    http_status_retryable,
)

logger = logging.getLogger("overcloud.underclouds.cloud.openstack")

T = TypeVar("T")

_TAG_PREFIX = {TAG_OVERCLOUD: "overcloud.io:overcloud=", TAG_TOWER: "overcloud.io:tower=", TAG_BOX: "overcloud.io:box="}
_SECRET_KEYS = re.compile(r"(secret|password|passcode|token|totp)", re.I)


def os_tag(key: str, value: str) -> str:
    return f"{_TAG_PREFIX[key]}{value}"


def parse_tags(tags: Iterable[str] | None) -> dict[str, str]:
    """OpenStack tag strings -> the contract's ``{TAG_*: value}`` (others ignored)."""
    out: dict[str, str] = {}
    for t in tags or ():
        for key, prefix in _TAG_PREFIX.items():
            if t.startswith(prefix):
                out[key] = t[len(prefix):]
    return out


def meta_key(key: str, back: bool = False) -> str:
    """Nova metadata keys allow ``[a-zA-Z0-9-_:. ]``: ``overcloud.io/host-key`` is written
    ``overcloud.io:host-key`` (``back``: the other way)."""
    return key.replace(":", "/", 1) if back else key.replace("/", ":")


class OpenStackBase(CloudProvider):
    """Connection, calls, errors and tags; :class:`~overcloud.underclouds.cloud.openstack.OpenStackProvider`
    builds on it."""

    kind = "openstack"
    #: call_with_retries' knobs (tests shorten them)
    retry: dict[str, Any] = {"attempts": 6, "base": 0.5, "cap": 20.0}

    def __init__(self, config, tower_id: str):
        super().__init__(config, tower_id)
        self._conn: Any = None
        self._secrets: list[str] = []
        self._lock = threading.Lock()
        self._cidr_lock = threading.Lock()
        self._ids: dict[str, str] = {}  # cached: "image", "flavor:<our>", "external"
        self._flavor_sizes: dict[str, tuple[int, int]] = {}
        self._tag_on_create: bool | None = None
    # -- connection, errors ----------------------------------------------------------------

    def _connect(self) -> Any:
        """The openstacksdk Connection, made once. Reads exactly the site's cloud entry: a named
        ``clouds_file`` alone (with a ``secure.yaml`` beside it), never merged with OS_* variables
        or another file; without one, OS_CLIENT_CONFIG_FILE or the standard places. The SDK's own
        retries are off (ours are counted)."""
        with self._lock:
            if self._conn is not None:
                return self._conn
            import openstack.config
            import openstack.connection
            cfg = self.config
            try:
                if cfg.clouds_file is not None:
                    loader = openstack.config.OpenStackConfig(
                        config_files=[str(cfg.clouds_file)], vendor_files=[],
                        secure_files=[str(cfg.clouds_file.parent / "secure.yaml")], load_envvars=False)
                else:
                    loader = openstack.config.OpenStackConfig(load_envvars=True)
                with warnings.catch_warnings():  # the SDK warns about InfluxDB support we do not use
                    warnings.simplefilter("ignore", PendingDeprecationWarning)
                    region = loader.get_one(
                        cloud=cfg.cloud, region_name=cfg.region, connect_retries=0, status_code_retries=0,
                        image_status_code_retries=0, api_timeout=60)
            except Exception as exc:  # noqa: BLE001 - config errors: missing entry, bad auth options
                raise CloudUnavailable(self._scrub(
                    f"site {self.site}: cloud {cfg.cloud!r} cannot be used from "
                    f"{cfg.clouds_file or 'clouds.yaml'}: {type(exc).__name__}: {exc}"), site=self.site) from None
            auth = region.config.get("auth") or {}
            self._secrets = sorted({str(v) for k, v in auth.items() if v and _SECRET_KEYS.search(k) and len(str(v)) >= 4},
                                   key=len, reverse=True)
            self._conn = openstack.connection.Connection(config=region)
            return self._conn

    def _scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    @staticmethod
    def _status(exc: BaseException) -> int | None:
        status = getattr(exc, "status_code", None)
        if status is None:
            status = getattr(exc, "http_status", None)
        return status if isinstance(status, int) else None

    @staticmethod
    def _unwrap(exc: BaseException) -> BaseException:
        """The keystoneauth error under openstacksdk's wrapping (``authorize()`` raises
        SDKException from it), else ``exc``."""
        from keystoneauth1 import exceptions as ksa
        seen: set[int] = set()
        e: BaseException | None = exc
        while e is not None and id(e) not in seen:
            seen.add(id(e))
            if isinstance(e, ksa.ClientException):
                return e
            e = e.__cause__ or e.__context__
        return exc

    def _retryable(self, exc: BaseException) -> bool:
        from keystoneauth1 import exceptions as ksa
        exc = self._unwrap(exc)
        if isinstance(exc, (ksa.ConnectFailure, ksa.ConnectTimeout, ksa.RetriableConnectionFailure)):
            return True
        if isinstance(exc, ksa.DiscoveryFailure) and connection_retryable(exc):
            return True
        return http_status_retryable(self._status(exc)) or connection_retryable(exc)

    def _error(self, what: str, exc: BaseException, overcloud_id: str | None = None) -> UnderCloudError:
        """The contract's error for an SDK error, with the cloud's message and no secret."""
        from keystoneauth1 import exceptions as ksa
        exc = self._unwrap(exc)
        status = self._status(exc)
        detail = getattr(exc, "details", None) or getattr(exc, "message", None) or str(exc)
        detail = self._scrub(" ".join(str(detail).split()))[:400]
        where = f"site {self.site}"
        if isinstance(exc, (ksa.ConnectFailure, ksa.ConnectTimeout, ksa.DiscoveryFailure)):
            return CloudUnavailable(f"{where}: the cloud does not answer ({what}): {detail}", site=self.site,
                                    overcloud_id=overcloud_id)
        if isinstance(exc, (ksa.Unauthorized, ksa.MissingAuthPlugin, ksa.AuthorizationFailure)) or status == 401:
            return CloudUnavailable(
                f"{where}: Keystone refused the credentials of cloud {self.config.cloud!r} (HTTP 401; check the "
                f"application credential id and secret, or user/password/project, in clouds.yaml)", site=self.site,
                overcloud_id=overcloud_id)
        if isinstance(exc, ksa.EndpointNotFound):
            return CloudUnavailable(f"{where}: {detail} (is the region right?)", site=self.site, overcloud_id=overcloud_id)
        if status is not None and (status >= 500 or status == 429):
            return CloudUnavailable(f"{where}: {what} kept failing (HTTP {status}): {detail}", site=self.site,
                                    overcloud_id=overcloud_id)
        if status == 403:
            hint = ""
            if "polic" in detail.lower() or "not authorized" in detail.lower():
                hint = " (the credentials need the member role on the project)"
            return UnderCloudError(f"{where}: {what} was refused (HTTP 403): {detail}{hint}", site=self.site,
                                   overcloud_id=overcloud_id)
        code = f"HTTP {status}" if status else type(exc).__name__
        return UnderCloudError(f"{where}: {what} failed ({code}): {detail}", site=self.site, overcloud_id=overcloud_id)

    def _call(self, what: str, fn: Callable[[Any], T], *, overcloud_id: str | None = None,
              retry_fn: Callable[[Any], T] | None = None) -> T:
        """``fn(conn)`` with the contract's retries; SDK errors become the contract's errors.
        ``retry_fn`` replaces ``fn`` on retries (a create looks for what the failed try may have made)."""
        conn = self._connect()
        tries = [0]

        def once() -> T:
            tries[0] += 1
            f = retry_fn if (retry_fn is not None and tries[0] > 1) else fn
            result = f(conn)
            if hasattr(result, "__next__"):  # generators: the requests happen here, inside the retry
                result = list(result)  # type: ignore[assignment]
            return result

        try:
            return call_with_retries(once, retryable=self._retryable, stats=self.stats, **self.retry)
        except UnderCloudError:
            raise
        except Exception as exc:  # noqa: BLE001 - every SDK error becomes ours
            err = self._error(what, exc, overcloud_id)
            logger.warning("%s", err)
            raise err from None

    # -- tags ------------------------------------------------------------------------------

    def _tags(self, overcloud_id: str) -> list[str]:
        return [os_tag(TAG_OVERCLOUD, overcloud_id), os_tag(TAG_TOWER, self.tower_id)]

    def _filter(self, overcloud_id: str | None) -> str:
        return ",".join(self._tags(overcloud_id) if overcloud_id else [os_tag(TAG_TOWER, self.tower_id)])

    def _marker(self, overcloud_id: str) -> str:
        return f"overcloud.io overcloud={overcloud_id} tower={self.tower_id}"

    def _neutron_tag_on_create(self) -> bool:
        """Does this Neutron take ``tags`` in a create (the ``tag-creation`` extension)? Asked once."""
        if self._tag_on_create is None:
            aliases = {e.alias for e in self._call("list network extensions", lambda c: c.network.extensions())}
            self._tag_on_create = "tag-creation" in aliases
        return self._tag_on_create

    def _neutron_find_or_create(self, kind: str, overcloud_id: str, find: Callable[[Any], Iterable[Any]],
                                create: Callable[[Any, dict], Any], *, listed: Iterable[Any] | None = None) -> Any:
        """One Neutron resource of an OverCloud: found by name + tag, or by name + description (made
        before a crash, not yet tagged: tagged now), or created with the description and tags.
        ``listed``: candidates the caller listed already (no call to find them again)."""
        tags = self._tags(overcloud_id)
        marker = self._marker(overcloud_id)

        def pick(rs: Iterable[Any]) -> Any:
            for r in rs:
                if set(tags) <= set(r.tags or ()) or (r.description or "") == marker:
                    return r
            return None

        def found(conn: Any) -> Any:
            return pick(find(conn))

        if listed is not None:
            existing = pick(listed)
        else:
            existing = self._call(f"find {kind}", found, overcloud_id=overcloud_id)
        if existing is None:
            extra = {"description": marker}
            if self._neutron_tag_on_create():
                extra["tags"] = tags

            existing = self._call(f"create {kind}", lambda c: create(c, extra), overcloud_id=overcloud_id,
                                  retry_fn=lambda c: found(c) or create(c, extra))
        if not set(tags) <= set(existing.tags or ()):
            self._call(f"tag {kind}", lambda c: c.network.set_tags(existing, sorted(set(existing.tags or ()) | set(tags))),
                       overcloud_id=overcloud_id)
        return existing
