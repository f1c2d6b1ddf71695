"""EC2 calls for the ``aws`` kind: the session and client, retries, and errors without secrets.

Retries: botocore's own retries are OFF (``total_max_attempts=1``); every call, the waiters' polls
included, goes through :func:`~.provider.call_with_retries` (:class:`RetryingClient`), which
retries only throttling (``RequestLimitExceeded``, ``Throttling``...), HTTP 429/5xx and a
connection refused/reset/closed, with capped exponential backoff and jitter. One layer, so
attempts never multiply (botocore's standard mode under ours would make up to 6 x 3), each
attempt is counted in ``stats.calls`` and each retry logged; and ``check`` of an unreachable
endpoint fails after one attempt instead of after botocore's backoff.

No secret reaches a message: every error is rebuilt from EC2's error code and message (or the
botocore exception's class), and any credential value of the session is scrubbed from it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from overcloud.underclouds.base import UnderCloudError
from overcloud.underclouds.cloud.provider import (
    TAG_OVERCLOUD, TAG_TOWER, CloudProvider, CloudQuotaExceeded, CloudUnavailable, call_with_retries,
    connection_retryable, http_status_retryable)

if TYPE_CHECKING:  # pragma: no cover
    from overcloud.underclouds.cloud.config import CloudSiteConfig

logger = logging.getLogger("overcloud.underclouds.cloud.aws")

__all__ = ["AUTH_CODES", "AWSBase", "DEPENDENCY_CODES", "PROPAGATION_CODES", "QUOTA_CODES", "RetryingClient",
           "THROTTLING_CODES", "aws_retryable", "error_code", "http_status"]

THROTTLING_CODES = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException", "ThrottledException",
                              "RequestThrottled", "RequestThrottledException", "TooManyRequestsException",
                              "EC2ThrottledException", "SlowDown"})
#: the credentials are refused: the site is unavailable (never retried)
AUTH_CODES = frozenset({"AuthFailure", "InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
                        "IncompleteSignature", "InvalidAccessKeyId", "ExpiredToken", "ExpiredTokenException",
                        "RequestExpired", "OptInRequired", "AccessDenied", "AccessDeniedException",
                        "UnauthorizedOperation", "Blocked"})
#: the account's limits refuse the instances
QUOTA_CODES = frozenset({"InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded",
                         "VpcLimitExceeded", "SecurityGroupLimitExceeded", "RulesPerSecurityGroupLimitExceeded",
                         "KeyPairLimitExceeded", "InsufficientInstanceCapacity"})
#: a deletion that has to wait for a previous one (ENIs of terminated instances still detaching)
DEPENDENCY_CODES = frozenset({"DependencyViolation", "InvalidNetworkInterface.InUse"})
#: RunInstances right after the group/subnet/key pair were made may not see them yet
PROPAGATION_CODES = frozenset({"InvalidGroup.NotFound", "InvalidSubnetID.NotFound", "InvalidKeyPair.NotFound"})


def error_code(exc: BaseException) -> str | None:
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        return (resp.get("Error") or {}).get("Code")
    return None


def http_status(exc: BaseException) -> int | None:
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        return (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return None


def aws_retryable(exc: BaseException) -> bool:
    """Throttling, HTTP 429/5xx, or a connection refused/reset/closed while a call was under way."""
    from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

    if isinstance(exc, ClientError):
        return error_code(exc) in THROTTLING_CODES or http_status_retryable(http_status(exc))
    if isinstance(exc, (ConnectionClosedError, EndpointConnectionError)):
        return True
    return connection_retryable(exc)


class RetryingClient:
    """The EC2 client as the provider (and the waiters it makes) see it: every operation goes
    through :func:`call_with_retries` and is counted."""

    def __init__(self, client: Any, provider: "AWSBase"):
        self._client = client
        self._provider = provider
        self.meta = client.meta

    def __getattr__(self, name: str) -> Callable[..., Any]:
        op = getattr(self._client, name)
        provider = self._provider

        def call(**kw: Any) -> Any:
            def once() -> Any:
                try:
                    return op(**kw)
                except Exception as exc:
                    if aws_retryable(exc):
                        logger.info("site %s: EC2 %s: %s, retrying with backoff", provider.site, name,
                                    provider.scrub(error_code(exc) or type(exc).__name__))
                    raise
            return call_with_retries(once, retryable=aws_retryable, stats=provider.stats, attempts=provider.attempts,
                                     base=provider.backoff_base, cap=provider.backoff_cap)

        return call



class AWSBase(CloudProvider):
    """What every part of the provider needs: the boto3 session and the retrying EC2 client,
    errors turned into ours, and the tags. Thread-safe: boto3 clients are."""

    attempts = 6  # per call, retries of throttling and server errors included
    backoff_base = 0.5
    backoff_cap = 20.0

    def __init__(self, config: "CloudSiteConfig", tower_id: str):
        super().__init__(config, tower_id)
        self._lock = threading.Lock()  # clients, caches
        self._session: Any = None
        self._ec2: RetryingClient | None = None
        self._secrets: list[str] = []
        # the lab answers at once; real EC2 needs seconds per state change
        self.poll = 0.5 if config.endpoint_url else 5.0

    # -- clients and errors ---------------------------------------------------------------

    def _boto_session(self) -> Any:
        with self._lock:
            if self._session is None:
                import boto3
                import botocore.session

                core = botocore.session.Session(profile=self.config.profile)
                if self.config.credentials_file is not None:
                    core.set_config_variable("credentials_file", str(self.config.credentials_file))
                self._session = boto3.session.Session(botocore_session=core, region_name=self.config.region)
            return self._session

    def _client(self, service: str, *, connect_timeout: float = 10, read_timeout: float = 60) -> Any:
        from botocore.config import Config

        session = self._boto_session()
        cfg = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=connect_timeout,
                     read_timeout=read_timeout, user_agent_extra="overcloud-tower")
        client = session.client(service, endpoint_url=self.config.endpoint_url, config=cfg)
        self._remember_secrets(session)
        return client

    def _remember_secrets(self, session: Any) -> None:
        try:
            creds = session.get_credentials()
        except Exception:  # noqa: BLE001 - a broken chain is reported by the call that needs it
            return
        if creds is None:
            return
        try:
            frozen = creds.get_frozen_credentials()
        except Exception:  # noqa: BLE001
            return
        found = [v for v in (frozen.secret_key, frozen.token, frozen.access_key) if v and len(v) >= 4]
        with self._lock:
            self._secrets = sorted(set(self._secrets) | set(found), key=len, reverse=True)

    @property
    def ec2(self) -> RetryingClient:
        if self._ec2 is None:
            client = self._client("ec2")
            with self._lock:
                if self._ec2 is None:
                    self._ec2 = RetryingClient(client, self)
        return self._ec2

    def scrub(self, text: str) -> str:
        """``text`` with every credential value of the session replaced by ``***``."""
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def _error(self, exc: BaseException, what: str, *, overcloud_id: str | None = None) -> UnderCloudError:
        """One of our errors for a boto3/botocore error, without secrets, naming the site."""
        from botocore import exceptions as bx

        site = self.site
        if isinstance(exc, UnderCloudError):
            return exc
        if isinstance(exc, bx.ClientError):
            code = error_code(exc) or "Unknown"
            msg = self.scrub(((exc.response.get("Error") or {}).get("Message") or "").strip())
            if code in AUTH_CODES:
                return CloudUnavailable(f"site {site}: AWS refused the credentials while trying to {what} ({code}: {msg})",
                                        site=site, overcloud_id=overcloud_id)
            if code in QUOTA_CODES:
                return CloudQuotaExceeded(f"site {site}: the AWS account's limits refuse to {what} ({code}: {msg})",
                                          {"instances": {"limit": None, "used": None, "asked": None, "code": code}},
                                          site=site, overcloud_id=overcloud_id)
            if aws_retryable(exc):
                return CloudUnavailable(f"site {site}: EC2 kept answering {code} (HTTP {http_status(exc)}) to {what} "
                                        f"after {self.attempts} attempts: {msg}", site=site, overcloud_id=overcloud_id)
            return UnderCloudError(f"site {site}: EC2 refused to {what}: {code}: {msg}", site=site, overcloud_id=overcloud_id)
        if isinstance(exc, bx.ProfileNotFound):
            return CloudUnavailable(f"site {site}: AWS profile {self.config.profile!r} is not in the credentials or "
                                    "config files", site=site, overcloud_id=overcloud_id)
        if isinstance(exc, bx.NoCredentialsError):
            return CloudUnavailable(f"site {site}: no AWS credentials found (name a `profile:` or `credentials_file:` "
                                    "in the site, or set AWS_* in the environment)", site=site, overcloud_id=overcloud_id)
        if isinstance(exc, (bx.PartialCredentialsError, bx.CredentialRetrievalError)):
            return CloudUnavailable(f"site {site}: the AWS credentials are incomplete or cannot be read "
                                    f"({type(exc).__name__})", site=site, overcloud_id=overcloud_id)
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ConnectionClosedError,
                            bx.ReadTimeoutError)):
            where = self.config.endpoint_url or f"EC2 in {self.config.region}"
            return CloudUnavailable(f"site {site}: {where} does not answer ({type(exc).__name__}) while trying to {what}",
                                    site=site, overcloud_id=overcloud_id)
        if isinstance(exc, bx.WaiterError):
            return UnderCloudError(f"site {site}: waiting to {what} failed: {self.scrub(str(exc))}", site=site,
                                   overcloud_id=overcloud_id)
        if isinstance(exc, bx.BotoCoreError):
            return CloudUnavailable(f"site {site}: AWS client error while trying to {what}: {type(exc).__name__}: "
                                    f"{self.scrub(str(exc))}", site=site, overcloud_id=overcloud_id)
        return UnderCloudError(f"site {site}: {what}: {type(exc).__name__}: {self.scrub(str(exc))}", site=site,
                               overcloud_id=overcloud_id)

    def _call(self, what: str, op: str, *, overcloud_id: str | None = None, ignore: Iterable[str] = (),
              **kw: Any) -> Any:
        """``ec2.<op>(**kw)`` with retries; errors whose code ends with one of ``ignore`` give None."""
        try:
            return getattr(self.ec2, op)(**kw)
        except Exception as exc:
            code = error_code(exc) or ""
            if any(code.endswith(i) for i in ignore):
                return None
            raise self._error(exc, what, overcloud_id=overcloud_id) from None

    def _tag_filters(self, overcloud_id: str | None) -> list[dict[str, Any]]:
        f = [{"Name": f"tag:{TAG_TOWER}", "Values": [self.tower_id]}]
        if overcloud_id is not None:
            f.append({"Name": f"tag:{TAG_OVERCLOUD}", "Values": [overcloud_id]})
        return f

    def _tag_spec(self, rtype: str, overcloud_id: str, name: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
        tags = {**self.base_tags(overcloud_id), "Name": name, **(extra or {})}
        return {"ResourceType": rtype, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
