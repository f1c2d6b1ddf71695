"""Archive an OverCloud's DataLake into another SeaweedFS (the Tower's Construction
DataLake) and restore it, every copy checked by MD5.

Layout in the archive store, bucket ``overcloud-archives`` by default::

    <archive_id>/objects/<bucket>/<key>   every object of every bucket
    <archive_id>/files/<path>             every filer file outside /buckets, /etc, /topics
    <archive_id>/manifest.json            written last: its presence means complete

Promises:

- **Verified.** Every object is streamed through an MD5 and uploaded in one part with
  ``Content-MD5`` (SeaweedFS rejects a body that does not match) and the returned ETag is
  compared too; a source whose single-part ETag disagrees with what was read is an error.
  Objects over 5 GiB go multipart and are re-read to check.
- **Idempotent and resumable.** Archived copies carry their MD5 and the source ETag in
  metadata; an object already archived with the same source ETag and size (or a file with
  the same MD5) is skipped, so a preserve resumed after a crash copies nothing twice.
  Restore skips a destination object whose ETag is already the MD5.
- **Bounded memory.** Bodies go through a spooled temp file (in memory up to 8 MiB, on
  disk beyond); a 100 MB object is never held whole in memory.
- **All-or-error.** A failed item does not stop the others; at the end, any failure raises
  :class:`ArchiveError` listing them, and no manifest is written.
- **Same network namespace.** The worker pool is created inside each call, so its threads
  are started by (and share the namespace of) the calling thread.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import IO

import httpx

from overcloud.datalake.clients import _FILER_TIMEOUT, ensure_bucket, filer_download, filer_entries, filer_put

logger = logging.getLogger(__name__)

ARCHIVE_BUCKET = "overcloud-archives"
MANIFEST = "manifest.json"
_SPOOL_BYTES = 8 << 20
_SINGLE_PUT_MAX = 5 << 30
_BLOCK = 1 << 20


class ArchiveError(RuntimeError):
    """An archive or restore did not complete; ``failures`` lists (item, reason)."""

    def __init__(self, archive_id: str, message: str, failures: list[tuple[str, str]] | None = None):
        super().__init__(f"archive {archive_id}: {message}")
        self.archive_id, self.failures = archive_id, failures or []


class VerificationError(ArchiveError):
    """A copy's MD5 differs from what was expected."""

    def __init__(self, archive_id: str, item: str, expected: str, got: str):
        super().__init__(archive_id, f"{item}: md5 {got} where {expected} was expected")
        self.item, self.expected, self.got = item, expected, got


# --- streaming helpers -----------------------------------------------------------------

def _is_md5(etag: str) -> bool:
    return len(etag) == 32 and all(c in "0123456789abcdef" for c in etag)


def _etag(resp: dict) -> str:
    return (resp.get("ETag") or "").strip('"').lower()


def _spool() -> IO[bytes]:
    return tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)


def _download(client, bucket: str, key: str, out: IO[bytes]) -> tuple[int, str, str]:
    """Stream ``bucket/key`` into ``out``; (size, md5 hex, source ETag)."""
    resp = client.get_object(Bucket=bucket, Key=key)
    md5, size = hashlib.md5(), 0
    for block in resp["Body"].iter_chunks(_BLOCK):
        md5.update(block)
        out.write(block)
        size += len(block)
    return size, md5.hexdigest(), _etag(resp)


def _object_md5(client, bucket: str, key: str) -> str:
    md5 = hashlib.md5()
    for block in client.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(_BLOCK):
        md5.update(block)
    return md5.hexdigest()


def _upload(archive_id: str, client, bucket: str, key: str, fh: IO[bytes], size: int, md5: str,
            metadata: dict[str, str] | None = None) -> None:
    """Upload ``fh`` and prove the stored copy has MD5 ``md5``."""
    fh.seek(0)
    if size <= _SINGLE_PUT_MAX:
        resp = client.put_object(Bucket=bucket, Key=key, Body=fh, ContentLength=size,
                                 ContentMD5=base64.b64encode(bytes.fromhex(md5)).decode(),
                                 Metadata=metadata or {})
        got = _etag(resp)
    else:
        from boto3.s3.transfer import TransferConfig
        client.upload_fileobj(fh, bucket, key, ExtraArgs={"Metadata": metadata or {}},
                              Config=TransferConfig(multipart_chunksize=256 << 20, use_threads=False))
        got = _object_md5(client, bucket, key)
    if got != md5:
        raise VerificationError(archive_id, f"{bucket}/{key}", md5, got)


def _head(client, bucket: str, key: str) -> dict | None:
    from botocore.exceptions import ClientError
    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _listing(client, bucket: str, prefix: str = "") -> dict[str, tuple[str, int]]:
    """{key: (etag, size)} of everything under ``prefix``; empty when the bucket is absent."""
    from botocore.exceptions import ClientError
    found = {}
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.update({o["Key"]: (_etag(o), o["Size"]) for o in page.get("Contents", [])})
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
            raise
    return found


def _run(archive_id: str, workers: int, jobs: list, verb: str) -> list:
    """Run ``jobs`` (callables) on a pool created here (same namespace as the caller);
    collect every failure, raise once at the end."""
    results, failures = [], []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=f"datalake-{verb}") as pool:
        futures = [(label, pool.submit(fn)) for label, fn in jobs]
        for label, future in futures:
            try:
                results.append(future.result())
            except Exception as exc:  # one bad item never stops the others
                logger.warning("%s %s: %s failed: %s", verb, archive_id, label, exc)
                failures.append((label, f"{type(exc).__name__}: {exc}"))
    if failures:
        raise ArchiveError(archive_id, f"{verb} failed for {len(failures)} of {len(jobs)} items, "
                           f"first: {failures[0][0]}: {failures[0][1]}", failures)
    return results


def _prefix(archive_id: str) -> str:
    if not archive_id or "/" in archive_id or archive_id in (".", ".."):
        raise ValueError(f"archive id must be a non-empty name without '/': {archive_id!r}")
    return f"{archive_id}/"


# --- archive ---------------------------------------------------------------------------

def archive(src_s3_client, src_filer_url: str, dst_s3_client, archive_id: str, owner: str, *,
            dst_bucket: str = ARCHIVE_BUCKET, workers: int = 8, filer_auth: httpx.Auth | None = None) -> dict:
    """Copy every object of every bucket and every filer file of the source into the
    archive store, then write the manifest. Returns the manifest plus ``transfer``
    (copied, skipped, bytes copied, seconds) which is not stored. ``filer_auth`` signs the
    source filer calls (:class:`~overcloud.datalake.clients.FilerJwt`)."""
    prefix, started = _prefix(archive_id), time.monotonic()
    ensure_bucket(dst_s3_client, dst_bucket)
    previous = read_manifest(dst_s3_client, archive_id, bucket=dst_bucket, missing_ok=True)
    have = _listing(dst_s3_client, dst_bucket, prefix)

    buckets = sorted(b["Name"] for b in src_s3_client.list_buckets().get("Buckets", []))
    jobs = []
    for bucket in buckets:
        for page in src_s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                jobs.append((f"s3://{bucket}/{obj['Key']}",
                             _object_job(archive_id, src_s3_client, dst_s3_client, dst_bucket, prefix, have,
                                         bucket, obj["Key"], obj["Size"], _etag(obj))))
    with httpx.Client(timeout=_FILER_TIMEOUT, trust_env=False, auth=filer_auth) as http:
        for path, size, md5 in filer_entries(src_filer_url, client=http):
            jobs.append((f"filer:{path}", _file_job(archive_id, src_filer_url, dst_s3_client, dst_bucket,
                                                     prefix, have, path, size, md5, filer_auth)))
        results = _run(archive_id, workers, jobs, "archive")

    objects = sorted((r for r in results if "bucket" in r), key=lambda r: (r["bucket"], r["key"]))
    files = sorted((r for r in results if "path" in r), key=lambda r: r["path"])
    copied = [r for r in results if r.pop("copied")]
    manifest = {
        "archive_id": archive_id,
        "owner": owner,
        "created_at": (previous or {}).get("created_at") or datetime.now(timezone.utc).isoformat(),
        "buckets": buckets,
        "objects": objects,
        "files": files,
        "counts": {"buckets": len(buckets), "objects": len(objects), "files": len(files)},
        "bytes": {"objects": sum(o["size"] for o in objects), "files": sum(f["size"] for f in files)},
    }
    manifest["bytes"]["total"] = manifest["bytes"]["objects"] + manifest["bytes"]["files"]
    body = json.dumps(manifest, indent=1).encode()
    with _spool() as fh:
        fh.write(body)
        _upload(archive_id, dst_s3_client, dst_bucket, prefix + MANIFEST, fh, len(body),
                hashlib.md5(body).hexdigest())
    seconds = time.monotonic() - started
    transfer = {"copied": len(copied), "skipped": len(results) - len(copied),
                "bytes_copied": sum(r["size"] for r in copied), "seconds": round(seconds, 3)}
    logger.info("archive %s: %d objects, %d files, %d bytes; copied %d, skipped %d in %.1fs",
                archive_id, len(objects), len(files), manifest["bytes"]["total"],
                transfer["copied"], transfer["skipped"], seconds)
    return {**manifest, "transfer": transfer}


def _object_job(archive_id, src, dst, dst_bucket, prefix, have, bucket, key, size, src_etag):
    def job():
        dst_key = f"{prefix}objects/{bucket}/{key}"
        done = {"bucket": bucket, "key": key, "size": size, "copied": False}
        if dst_key in have:
            # a single-part source's ETag is its MD5, and so is our copy's: no HEAD needed
            if _is_md5(src_etag) and have[dst_key] == (src_etag, size):
                return {**done, "md5": src_etag}
            meta = (_head(dst, dst_bucket, dst_key) or {}).get("Metadata", {})
            etag, stored = have[dst_key]
            if (meta.get("src-etag") == src_etag and meta.get("md5") and stored == size
                    and (etag == meta["md5"] or not _is_md5(etag))):  # multipart copies (> 5 GiB)
                return {**done, "md5": meta["md5"]}
        with _spool() as fh:
            got_size, md5, etag = _download(src, bucket, key, fh)
            if _is_md5(etag) and etag != md5:
                raise VerificationError(archive_id, f"source {bucket}/{key}", etag, md5)
            _upload(archive_id, dst, dst_bucket, dst_key, fh, got_size, md5, {"md5": md5, "src-etag": etag})
        return {"bucket": bucket, "key": key, "size": got_size, "md5": md5, "copied": True}
    return job


def _file_job(archive_id, filer_url, dst, dst_bucket, prefix, have, path, size, listed_md5, filer_auth=None):
    def job():
        dst_key = f"{prefix}files/{path.lstrip('/')}"
        if listed_md5 and have.get(dst_key) == (listed_md5, size):
            return {"path": path, "size": size, "md5": listed_md5, "copied": False}
        with _spool() as fh, httpx.Client(timeout=_FILER_TIMEOUT, trust_env=False, auth=filer_auth) as http:
            got_size, md5 = filer_download(filer_url, path, fh, client=http)
            if listed_md5 and listed_md5 != md5:
                raise VerificationError(archive_id, f"source filer {path}", listed_md5, md5)
            if have.get(dst_key) == (md5, got_size):
                return {"path": path, "size": got_size, "md5": md5, "copied": False}
            _upload(archive_id, dst, dst_bucket, dst_key, fh, got_size, md5, {"md5": md5})
        return {"path": path, "size": got_size, "md5": md5, "copied": True}
    return job


# --- restore ---------------------------------------------------------------------------

def restore(src_s3_client, archive_id: str, dst_s3_client, dst_filer_url: str, *,
            src_bucket: str = ARCHIVE_BUCKET, workers: int = 8, filer_auth: httpx.Auth | None = None) -> dict:
    """Recreate the archived buckets, objects and filer files in the destination, each
    checked against the manifest's MD5. Returns counts, bytes, copied/skipped, seconds.
    ``filer_auth`` signs the destination filer calls."""
    prefix, started = _prefix(archive_id), time.monotonic()
    manifest = read_manifest(src_s3_client, archive_id, bucket=src_bucket)
    have: dict[tuple[str, str], tuple[str, int]] = {}
    for bucket in manifest.get("buckets") or sorted({o["bucket"] for o in manifest["objects"]}):
        ensure_bucket(dst_s3_client, bucket)
        have.update({(bucket, key): found for key, found in _listing(dst_s3_client, bucket).items()})
    with httpx.Client(timeout=_FILER_TIMEOUT, trust_env=False, auth=filer_auth) as http:
        have_files = {path: (md5, size) for path, size, md5 in filer_entries(dst_filer_url, client=http)}

    def object_job(obj):
        def job():
            if have.get((obj["bucket"], obj["key"])) == (obj["md5"], obj["size"]):
                return (obj["size"], False)
            with _spool() as fh:
                size, md5, _ = _download(src_s3_client, src_bucket, f"{prefix}objects/{obj['bucket']}/{obj['key']}", fh)
                if md5 != obj["md5"] or size != obj["size"]:
                    raise VerificationError(archive_id, f"archived {obj['bucket']}/{obj['key']}", obj["md5"], md5)
                _upload(archive_id, dst_s3_client, obj["bucket"], obj["key"], fh, size, md5)
            return (size, True)
        return job

    def file_job(entry):
        def job():
            path = entry["path"]
            if have_files.get(path) == (entry["md5"], entry["size"]):
                return (entry["size"], False)
            with _spool() as fh, httpx.Client(timeout=_FILER_TIMEOUT, trust_env=False, auth=filer_auth) as http:
                size, md5, _ = _download(src_s3_client, src_bucket, f"{prefix}files/{path.lstrip('/')}", fh)
                if md5 != entry["md5"]:
                    raise VerificationError(archive_id, f"archived file {path}", entry["md5"], md5)
                fh.seek(0)
                filer_put(dst_filer_url, path, fh, client=http)
                got, check = filer_download(dst_filer_url, path, None, client=http)
                if check != md5 or got != size:
                    raise VerificationError(archive_id, f"restored file {path}", md5, check)
            return (size, True)
        return job

    jobs = [(f"s3://{o['bucket']}/{o['key']}", object_job(o)) for o in manifest["objects"]]
    jobs += [(f"filer:{f['path']}", file_job(f)) for f in manifest["files"]]
    results = _run(archive_id, workers, jobs, "restore")
    seconds = time.monotonic() - started
    copied = [size for size, did in results if did]
    return {"archive_id": archive_id, "buckets": len(manifest.get("buckets") or []),
            "objects": len(manifest["objects"]), "files": len(manifest["files"]),
            "bytes": sum(size for size, _ in results), "copied": len(copied),
            "skipped": len(results) - len(copied), "bytes_copied": sum(copied), "seconds": round(seconds, 3)}


# --- catalogue -------------------------------------------------------------------------

def read_manifest(s3_client, archive_id: str, *, bucket: str = ARCHIVE_BUCKET, missing_ok: bool = False) -> dict | None:
    """The manifest of a complete archive; ``None`` (with ``missing_ok``) or
    :class:`ArchiveError` when the archive is absent or incomplete."""
    from botocore.exceptions import ClientError
    try:
        body = s3_client.get_object(Bucket=bucket, Key=_prefix(archive_id) + MANIFEST)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NoSuchBucket"):
            raise
        if missing_ok:
            return None
        raise ArchiveError(archive_id, f"no manifest in {bucket}: absent or incomplete") from exc
    return json.loads(body)


def list_archives(s3_client, bucket: str = ARCHIVE_BUCKET) -> list[dict]:
    """A summary per archive id: owner, created_at, counts, bytes, ``complete`` (False for
    a prefix without manifest: an interrupted archive, or one being purged)."""
    from botocore.exceptions import ClientError
    ids = []
    try:
        for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter="/"):
            ids += [p["Prefix"].rstrip("/") for p in page.get("CommonPrefixes", [])]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
            return []
        raise
    summaries = []
    for archive_id in sorted(ids):
        manifest = read_manifest(s3_client, archive_id, bucket=bucket, missing_ok=True)
        if manifest is None:
            # SeaweedFS keeps a purged archive's empty directories, listed as prefixes
            if not s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{archive_id}/", MaxKeys=1).get("Contents"):
                continue
            summaries.append({"archive_id": archive_id, "complete": False})
        else:
            summaries.append({"archive_id": archive_id, "complete": True, "owner": manifest.get("owner"),
                              "created_at": manifest.get("created_at"), "counts": manifest.get("counts"),
                              "bytes": manifest.get("bytes")})
    return summaries


def purge_archive(s3_client, archive_id: str, *, bucket: str = ARCHIVE_BUCKET) -> int:
    """Delete the archive, manifest first (so a half-purged archive never looks complete);
    returns the number of keys deleted. Absent is fine (0)."""
    prefix = _prefix(archive_id)
    deleted = 0
    if _head(s3_client, bucket, prefix + MANIFEST) is not None:
        s3_client.delete_object(Bucket=bucket, Key=prefix + MANIFEST)
        deleted = 1
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            resp = s3_client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            if resp.get("Errors"):
                raise ArchiveError(archive_id, f"purge: {len(resp['Errors'])} keys not deleted, "
                                   f"first: {resp['Errors'][0]}")
            deleted += len(keys)
    return deleted
