"""Clients for one SeaweedFS: S3 through boto3, the filer through httpx, and a round-trip check.

All calls are in-process from the calling thread (network namespaces: see the package
docstring). The filer's URL is ``http://host:port`` without a trailing slash. A filer with
JWT keys in its ``security.toml`` answers 401 to unsigned calls: pass ``auth=FilerJwt(...)``
(each request is then signed, reads with the read key, everything else with the write key).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Iterator
from typing import IO
from urllib.parse import quote

import httpx

logger = logging.getLogger(__name__)

#: The filer holds S3 buckets, the S3 gateway's own config and message-queue topics under
#: these; an archive copies buckets through S3 and leaves the rest.
FILER_EXCLUDE = ("/buckets", "/etc", "/topics")
_FILER_PAGE = 1000
_FILER_TIMEOUT = httpx.Timeout(connect=2.0, read=60.0, write=60.0, pool=5.0)


class S3Error(RuntimeError):
    """A check against a SeaweedFS instance failed; the message says which step."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(key: str, seconds: int = 60, **claims) -> str:
    """An HS256 JSON Web Token expiring in ``seconds``, as SeaweedFS checks it."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64(json.dumps({"exp": int(time.time()) + seconds, **claims}, separators=(",", ":")).encode())
    mac = hmac.new(key.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(mac)}"


class FilerJwt(httpx.Auth):
    """Signs every filer request with a fresh JWT (``jwt.filer_signing`` keys of the filer's
    ``security.toml``): GET and HEAD with the read key, PUT/POST/DELETE with the write key.
    Its repr never shows a key."""

    def __init__(self, write_key: str, read_key: str):
        self._write, self._read = write_key, read_key

    @classmethod
    def of(cls, sec: dict[str, str] | None) -> "FilerJwt | None":
        """From :func:`overcloud.datalake.seaweed.new_security`'s dict; None for None."""
        return None if sec is None else cls(sec["jwt_filer"], sec["jwt_filer_read"])

    def __repr__(self) -> str:
        return "FilerJwt(<keys hidden>)"

    def auth_flow(self, request: httpx.Request):
        key = self._read if request.method in ("GET", "HEAD") else self._write
        request.headers["Authorization"] = f"Bearer {sign_jwt(key)}"
        yield request


def filer_http(auth: httpx.Auth | None = None) -> httpx.Client:
    """An httpx client for a filer: its timeouts, no proxies from the environment, ``auth``."""
    return httpx.Client(timeout=_FILER_TIMEOUT, trust_env=False, auth=auth)


def s3_client(endpoint: str, access_key: str, secret_key: str, *, max_pool_connections: int = 32):
    """A boto3 S3 client for SeaweedFS: path-style, us-east-1, 2 s connect / 60 s read,
    3 attempts. Checksums only when required (SeaweedFS checks Content-MD5 itself).
    Thread-safe: one client may serve a pool of workers."""
    import boto3  # lazily: the Tower starts without it
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path"}, region_name="us-east-1", signature_version="s3v4",
        connect_timeout=2, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=max_pool_connections,
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
    )
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, config=config)


def ensure_bucket(client, name: str) -> bool:
    """Create bucket ``name`` unless it exists; True when created. Idempotent."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=name)
        return False
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise
    try:
        client.create_bucket(Bucket=name)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
        return False
    return True


def ensure_buckets(client, names: list[str] | tuple[str, ...], timeout: float = 30.0) -> None:
    """:func:`ensure_bucket` for each of ``names``, retried for ``timeout`` seconds: a freshly
    started S3 gateway answers HTTP before the filer behind it serves buckets, and until
    then HeadBucket may get a 400 or a 5xx. Raises :class:`S3Error` naming the last error."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            for name in names:
                ensure_bucket(client, name)
            return
        except Exception as exc:  # noqa: BLE001 - retried until the deadline, then named
            if time.monotonic() > deadline:
                raise S3Error(f"bucket(s) {', '.join(names)} not ready after {timeout:g} s: {exc}") from exc
            time.sleep(0.1)


# --- filer -----------------------------------------------------------------------------

def _url(filer_url: str, path: str) -> str:
    if not path.startswith("/"):
        path = "/" + path
    return filer_url.rstrip("/") + quote(path)


def filer_put(filer_url: str, path: str, data: bytes | IO[bytes], *, client: httpx.Client | None = None,
              auth: httpx.Auth | None = None) -> int:
    """Write ``data`` (bytes or a binary file object, streamed) at ``path``, creating parent
    directories; returns the size the filer reports."""
    body = data if isinstance(data, bytes) else iter(lambda: data.read(1 << 20), b"")
    owned = client is None
    http = client or filer_http(auth)
    try:
        resp = http.put(_url(filer_url, path), content=body)
        resp.raise_for_status()
        return int(resp.json().get("size", 0))
    finally:
        if owned:
            http.close()


def filer_get(filer_url: str, path: str, *, auth: httpx.Auth | None = None) -> bytes:
    """The whole content of the file at ``path`` (raises httpx.HTTPStatusError on 404)."""
    with filer_http(auth) as http:
        return http.get(_url(filer_url, path)).raise_for_status().content


def filer_download(filer_url: str, path: str, out: IO[bytes] | None, *, client: httpx.Client) -> tuple[int, str]:
    """Stream the file at ``path`` into ``out`` (or only through an MD5 when None);
    returns (size, hex md5)."""
    md5, size = hashlib.md5(), 0
    with client.stream("GET", _url(filer_url, path)) as resp:
        resp.raise_for_status()
        for block in resp.iter_bytes(1 << 20):
            md5.update(block)
            size += len(block)
            if out is not None:
                out.write(block)
    return size, md5.hexdigest()


def filer_delete(filer_url: str, path: str, *, recursive: bool = False, auth: httpx.Auth | None = None) -> None:
    """Delete the file (or, with ``recursive``, the directory) at ``path``; absent is fine."""
    params = {"recursive": "true"} if recursive else None
    with filer_http(auth) as http:
        resp = http.delete(_url(filer_url, path), params=params)
        if resp.status_code != 404:
            resp.raise_for_status()


def filer_entries(filer_url: str, root: str = "/", exclude: tuple[str, ...] = FILER_EXCLUDE,
                  *, client: httpx.Client | None = None, auth: httpx.Auth | None = None
                  ) -> Iterator[tuple[str, int, str | None]]:
    """Every file under ``root`` as (path, size, md5 hex or None when the filer has none),
    depth first, skipping the ``exclude`` directories and everything below them. Pages
    through the filer's JSON listing with ``lastFileName``; a directory that vanishes
    mid-walk is skipped."""
    http = client or filer_http(auth)
    try:
        stack = [root.rstrip("/") or "/"]
        while stack:
            directory, last = stack.pop(), ""
            while True:
                params = {"limit": _FILER_PAGE, **({"lastFileName": last} if last else {})}
                resp = http.get(_url(filer_url, directory.rstrip("/") + "/"), params=params,
                                headers={"Accept": "application/json"})
                if resp.status_code == 404:
                    break
                listing = resp.raise_for_status().json()
                entries = listing.get("Entries") or []
                for entry in entries:
                    path = entry["FullPath"]
                    if any(path == ex or path.startswith(ex.rstrip("/") + "/") for ex in exclude):
                        continue
                    if entry.get("Mode", 0) & 0x80000000:  # os.ModeDir in Go
                        stack.append(path)
                    else:
                        md5 = base64.b64decode(entry["Md5"]).hex() if entry.get("Md5") else None
                        yield path, int(entry.get("FileSize", 0)), md5
                last = listing.get("LastFileName") or ""
                if not listing.get("ShouldDisplayLoadMore") or not entries or not last:
                    break
    finally:
        if client is None:
            http.close()


def filer_walk(filer_url: str, root: str = "/", exclude: tuple[str, ...] = FILER_EXCLUDE,
               *, auth: httpx.Auth | None = None) -> Iterator[tuple[str, int]]:
    """Every file under ``root`` as (path, size); see :func:`filer_entries`."""
    for path, size, _ in filer_entries(filer_url, root, exclude, auth=auth):
        yield path, size


# --- round trip ------------------------------------------------------------------------

def round_trip_check(s3_endpoint: str, filer_url: str, keys: tuple[str, str], bucket: str,
                     *, size: int = 64 * 1024, filer_auth: httpx.Auth | None = None) -> dict:
    """A real S3 put/get/delete of a probe object in ``bucket`` (created if missing) and a
    filer write/read/delete of a probe file, contents compared. Returns milliseconds per
    step; raises :class:`S3Error` naming the step that failed."""
    probe = secrets.token_bytes(size)
    name = f"overcloud-probe-{secrets.token_hex(6)}"
    timings: dict[str, float] = {}

    def step(label, fn):
        start = time.monotonic()
        try:
            result = fn()
        except Exception as exc:
            raise S3Error(f"round trip: {label} failed against s3={s3_endpoint} filer={filer_url}: {exc}") from exc
        timings[f"{label}_ms"] = round((time.monotonic() - start) * 1000, 1)
        return result

    client = s3_client(s3_endpoint, *keys)
    step("s3_bucket", lambda: ensure_bucket(client, bucket))
    step("s3_put", lambda: client.put_object(Bucket=bucket, Key=name, Body=probe))
    got = step("s3_get", lambda: client.get_object(Bucket=bucket, Key=name)["Body"].read())
    if got != probe:
        raise S3Error(f"round trip: S3 object {bucket}/{name} read back {len(got)} bytes differing from the {size} written")
    step("s3_delete", lambda: client.delete_object(Bucket=bucket, Key=name))
    path = f"/.overcloud-probe/{name}"
    step("filer_put", lambda: filer_put(filer_url, path, probe, auth=filer_auth))
    got = step("filer_get", lambda: filer_get(filer_url, path, auth=filer_auth))
    if got != probe:
        raise S3Error(f"round trip: filer file {path} read back {len(got)} bytes differing from the {size} written")
    step("filer_delete", lambda: filer_delete(filer_url, "/.overcloud-probe", recursive=True, auth=filer_auth))
    timings["total_ms"] = round(sum(timings.values()), 1)
    return timings
