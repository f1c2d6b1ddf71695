"""The Construction DataLake: the Tower's own SeaweedFS, for provisioning artifacts and for
the DataLakes preserved when OverClouds are deleted.

It runs under a supervisord of its own on the host (the same supervision as a box's), so it
outlives Tower restarts; ``overcloud serve`` starts it when it is not running. It listens on
the first site's gateway address: boxes of every site reach it there, the host reaches it
locally. Only its S3 port (authenticated) is reachable from the site bridges — the host
firewall table ``overcloud_cdl_<tag>`` drops packets from our bridges to its master, volume
and filer ports.

The host's other users get no further: the same table's output chain refuses non-root
connections to those ports on every local address, and the store protects itself
(SeaweedFS's ``security.toml``, secrets sealed in ``security.sealed``, written 0600 into the
0700 ``security/`` dir): the filer's HTTP API and the volume server answer only JWT-signed
requests, gRPC only peers holding the store's own certificate (mutual TLS), the master's
HTTP API -- which hands out write JWTs and deletes collections -- only local addresses. Its
directories are 0700. See docs/seaweedfs.md, "Security".

Artifacts (the ``weed`` binary, ...) are published once, content-addressed
(``overcloud-artifacts/sha256/<hex>``); boxes fetch them with a presigned GET through
``boxes/fetch.py``, which verifies the SHA-256 before running anything.

Cold start (issue 11): ``overcloud serve`` calls :meth:`ConstructionDataLake.start_background`,
which returns at once (the API answers meanwhile) and, in two threads, starts the store and
uploads the artifacts, and puts each artifact into this host's artifact cache (the boxes'
``fetch.py`` then finds it there: a fresh state dir's first DataLake no longer downloads
150 MB of ``weed`` from the store). A create that comes earlier waits in
:meth:`wait_running` for the store and in :meth:`program` for the one artifact it runs, and
fails with the reason (never a hang) when either failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from pathlib import Path

from overcloud.files import sha256_file, write_private
from overcloud.boxes.supervision import HostSupervisor
from overcloud.identity.secrets import SecretBox
from overcloud.underclouds.base import UnderCloudError

logger = logging.getLogger(__name__)

ARTIFACTS = "overcloud-artifacts"
ARCHIVES = "overcloud-archives"
# Ports: SeaweedFS also listens on 127.0.0.1 for every port it serves on -ip, so two
# Towers on one host (a demo and a test run) must not share them, or one's S3 gateway talks
# to the other's filer. Each store takes a block of four from its state dir's hash (below
# 12000, with gRPC at +10000 still below the ephemeral range), and refuses to start when one
# is taken by something else.
PORT_BASE, PORT_BLOCKS = 10000, 200
#: The white list of ``weed server`` (its master's HTTP API, its volume server's writes and gRPC
#: admin calls), with the store's bind address and 127.0.0.1: ``@`` is the peer name of a
#: unix-socket connection, which ``weed server``'s parts use between themselves
#: (/tmp/seaweedfs-*-grpc-<port>.sock, root-only, mutual TLS still required). A white list of
#: ``@`` alone refuses the S3 gateway's own uploads to the volume server (measured), so the
#: local addresses stay on it; non-root local users are kept off those ports by the host
#: firewall instead (``_guard``).
MASTER_WHITE_LIST = ("@",)
SINGLE_PUT_BYTES = 1 << 30  # artifacts up to this size are uploaded in one PUT (see _upload)
PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4's maximum; boxes keep the fetched file in their cache
FETCH = Path(__file__).resolve().parent.parent / "boxes" / "fetch.py"


class ConstructionError(UnderCloudError, RuntimeError):
    """The store did not start, or an artifact is not where boxes fetch it; says why. An
    UnderCloudError: the API answers it as the infrastructure's trouble, not the caller's."""


class _Artifact:
    """One artifact published in the background (:meth:`ConstructionDataLake.start_background`).
    ``cached`` is set once its digest is known and it is in this host's artifact cache (or that
    failed: ``cache_error``); ``done`` once it is in the store (or that failed: ``error``)."""

    def __init__(self, path: Path):
        self.path = path
        self.sha: str | None = None
        self.cache_error: BaseException | None = None
        self.error: BaseException | None = None
        self.cached = threading.Event()
        self.done = threading.Event()


class ConstructionDataLake:
    def __init__(self, state_dir: Path, bind_ip: str = "", bridges: list[str] | None = None,
                 secrets: SecretBox | None = None):
        """``bind_ip``, ``bridges`` and ``secrets`` are needed to run it; to stop one
        (tests, ``make demo-stop``) the state dir is enough."""
        self.dir = Path(state_dir) / "construction"
        self.bind_ip = bind_ip
        self.bridges = list(bridges or [])
        self.secrets = secrets
        self.tag = hashlib.sha1(str(self.dir).encode()).hexdigest()[:8]
        self._set_ports(self._saved_base() or PORT_BASE + (int(self.tag, 16) % PORT_BLOCKS) * 10)
        self.supervisor = HostSupervisor(f"cdl-{self.tag}", self.dir / "supervisor")
        self.cache_dir = Path(state_dir) / "artifact-cache"
        self._lock = threading.Lock()
        self._published: dict[str, str] = {}
        # the background start (start_background): the store, then every artifact
        self._running = threading.Event()
        self._addressable = threading.Event()  # its ports are chosen (set before it runs)
        self._started = False  # start_background was called: wait_running waits for it
        self._start_error: BaseException | None = None
        self._pending: dict[str, _Artifact] = {}
        self.timeline: dict[str, float] = {}  # what finished when, in seconds after start_background
        self._t0: float | None = None

    # -- ports --------------------------------------------------------------
    def _set_ports(self, base: int) -> None:
        self.master_port, self.volume_port, self.filer_port, self.s3_port = base, base + 1, base + 2, base + 3

    def _saved_base(self) -> int | None:
        try:
            return int(json.loads((self.dir / "ports.json").read_text())["base"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _choose_ports(self) -> None:
        """Keep the block this store has used before; else take the first free block from its
        hashed place (hashing alone collided with another live store, ~n/200 per start), and
        remember it so restarts — and presigned URLs — keep the same ports."""
        start = (int(self.tag, 16) % PORT_BLOCKS)
        candidates = ([self._saved_base()] if self._saved_base() else []) + [
            PORT_BASE + ((start + i) % PORT_BLOCKS) * 10 for i in range(PORT_BLOCKS)]
        for base in candidates:
            self._set_ports(base)
            if self._ports_free():
                self.dir.mkdir(parents=True, exist_ok=True)
                (self.dir / "ports.json").write_text(json.dumps({"base": base}))
                return
        raise ConstructionError(f"no free block of ports for the Construction DataLake in {PORT_BASE}-{PORT_BASE + PORT_BLOCKS * 10}")

    # -- endpoints ---------------------------------------------------------
    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.bind_ip}:{self.s3_port}"

    @property
    def filer_url(self) -> str:
        return f"http://{self.bind_ip}:{self.filer_port}"

    def credentials(self) -> tuple[str, str]:
        """Its S3 keys, to talk to it: while :meth:`start_background` is starting it, waits
        until it runs (or raises why it did not start)."""
        self.wait_running()
        return self._credentials()

    def _credentials(self) -> tuple[str, str]:
        path = self.dir / "credentials.sealed"
        from overcloud.datalake import seaweed

        with self._lock:
            if not path.exists():
                access, secret = seaweed.new_credentials()
                self.dir.mkdir(parents=True, exist_ok=True)
                write_private(path, self.secrets.seal(json.dumps([access, secret])))
            access, secret = json.loads(self.secrets.open(path.read_text()))
        return access, secret

    def client(self):
        """An S3 client of the store, once it runs (see :meth:`credentials`)."""
        self.wait_running()
        return self._client()

    def _client(self):
        from overcloud.datalake import clients

        return clients.s3_client(self.s3_endpoint, *self._credentials())

    def security(self) -> dict[str, str]:
        """The store's SeaweedFS secrets (JWT keys, gRPC CA and certificate), made and sealed
        on first use beside the S3 credentials."""
        path = self.dir / "security.sealed"
        from overcloud.datalake import seaweed

        with self._lock:
            if not path.exists():
                self.dir.mkdir(parents=True, exist_ok=True)
                write_private(path, self.secrets.seal(json.dumps(seaweed.new_security("overcloud-cdl"))))
            return json.loads(self.secrets.open(path.read_text()))

    def filer_auth(self):
        """Signs calls to this store's filer (which refuses unsigned ones), once it runs."""
        self.wait_running()
        from overcloud.datalake import clients

        return clients.FilerJwt.of(self.security())

    # -- lifecycle ----------------------------------------------------------
    def ensure_running(self, timeout: float = 60.0) -> None:
        """Start it (idempotent), wait until S3 answers, make its buckets."""
        from overcloud.datalake import clients, seaweed

        access, secret = self._credentials()
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        for d in (self.dir, data):  # the Tower's alone, also when made by an older version
            os.chmod(d, 0o700)
        config = self.dir / "s3.json"
        write_private(config, json.dumps(seaweed.s3_config(access, secret, admin_name="tower")))
        security = seaweed.write_security(self.dir / "security", self.security(),
                                          white_list=[*MASTER_WHITE_LIST, self.bind_ip, "127.0.0.1"])
        self._mark("secrets and config")
        if not self.supervisor.is_running():
            self._choose_ports()
        self._addressable.set()  # URLs to it can be made now (its ports are in them)
        self._guard()
        self.supervisor.write_files()
        self.supervisor.start()
        self.supervisor.wait_ready(10)
        self._mark("supervisord up")
        argv = seaweed.server_argv(
            seaweed.weed_binary(), ip=self.bind_ip, data_dir=str(data), logdir=str(self.supervisor.log_dir),
            s3_config_path=str(config), master_port=self.master_port, volume_port=self.volume_port,
            filer_port=self.filer_port, s3_port=self.s3_port, config_dir=str(security.parent),
        )
        self.supervisor.add_program("weed-server", argv, startsecs=1, startretries=5)
        seaweed.wait_http(self.s3_endpoint, timeout)
        self._mark("S3 answers")
        try:
            clients.ensure_buckets(self._client(), (ARTIFACTS, ARCHIVES), timeout)
        except clients.S3Error as exc:
            raise ConstructionError(f"the Construction DataLake at {self.s3_endpoint} is not ready: {exc}") from exc
        self._mark("buckets")

    def _mark(self, what: str) -> None:
        if self._t0 is not None:
            self.timeline[what] = round(time.monotonic() - self._t0, 3)

    def start_background(self, artifacts: Iterable[Path], *, when_running: Callable[[], None] | None = None,
                         timeout: float = 60.0) -> None:
        """Start the store and publish ``artifacts`` without blocking the caller (``overcloud
        serve``). One thread starts the store, runs ``when_running`` (the Tower opens the
        store's S3 port to the boxes) and uploads each artifact; the other puts each artifact
        into this host's artifact cache meanwhile (a local copy, no store needed, by
        ``fetch.py``'s own protocol: flock, SHA-256 checked, atomic rename). Errors are kept
        and raised to whoever waits (:meth:`wait_running`, :meth:`program`, :meth:`published`)."""
        self._t0 = time.monotonic()
        items = [_Artifact(Path(p)) for p in artifacts]
        with self._lock:
            self._started = True
            for a in items:
                self._pending[str(a.path)] = a

        def cache() -> None:
            for a in items:
                try:
                    a.sha = self._digest(a.path)
                    self._seed_cache(a.path, a.sha)
                    self._mark(f"{a.path.name} cached")
                except BaseException as exc:  # noqa: BLE001 - kept for whoever runs it
                    logger.error("the Construction DataLake could not put %s into the artifact cache %s: %s",
                                 a.path, self.cache_dir, exc)
                    a.cache_error = ConstructionError(
                        f"cannot put {a.path.name} into the artifact cache {self.cache_dir}: {exc}")
                    if a.sha is None:  # not even its digest: nothing to publish either
                        a.error = a.cache_error
                        a.done.set()
                finally:
                    a.cached.set()

        def store() -> None:
            try:
                self.ensure_running(timeout)
                if when_running is not None:
                    when_running()
            except BaseException as exc:  # noqa: BLE001 - handed to whoever needs it
                logger.error("the Construction DataLake did not start: %s", exc)
                self._start_error = exc
                for a in items:
                    a.error = a.error or ConstructionError(
                        f"{a.path.name} is not published: the Construction DataLake did not start: {exc}")
                    a.done.set()
                return
            finally:
                self._addressable.set()
                self._running.set()
            self._mark("store running")
            logger.info("Construction DataLake running at %s after %.2f s", self.s3_endpoint, self.timeline["store running"])
            for a in items:
                a.cached.wait()  # its digest is known
                if a.done.is_set():
                    continue
                try:
                    self._upload(a.path, a.sha)
                    self._mark(f"{a.path.name} published")
                    logger.info("Construction DataLake published %s (sha256 %s) after %.2f s", a.path.name, a.sha[:12],
                                self.timeline[f"{a.path.name} published"])
                except BaseException as exc:  # noqa: BLE001
                    logger.error("the Construction DataLake could not publish %s: %s", a.path, exc)
                    a.error = ConstructionError(f"cannot publish {a.path.name} into the Construction DataLake: {exc}")
                finally:
                    a.done.set()
            logger.info("Construction DataLake start-up, seconds after serve: %s",
                        ", ".join(f"{k} {v:.2f}" for k, v in sorted(self.timeline.items(), key=lambda kv: kv[1])))

        threading.Thread(target=cache, name="construction-cache", daemon=True).start()
        threading.Thread(target=store, name="construction-datalake", daemon=True).start()

    def wait_running(self, timeout: float = 60.0) -> None:
        """Wait for a store started by :meth:`start_background` (at once when it runs);
        raises ConstructionError with the reason when it did not start."""
        if self._started and not self._running.wait(timeout):
            raise ConstructionError(f"the Construction DataLake is still starting after {timeout:.0f} s "
                                    "(see the Tower's log)")
        if self._start_error is not None:
            raise ConstructionError(f"the Construction DataLake did not start: {self._start_error}") from self._start_error

    def refuse_if_failed(self) -> None:
        """Never waits: raises ConstructionError (an UnderCloudError: the API's 503) when the
        store that :meth:`start_background` started did not start, so a create that needs it
        is refused at once with the reason, rather than failing in its DataLake task (where the
        Fabric task beside it then waits out its own timeout for SeaweedFS targets that never
        come up: 120 s, measured)."""
        if self._start_error is not None:
            raise ConstructionError(f"the Construction DataLake did not start: {self._start_error}; OverClouds "
                                    "with a DataLake cannot be made until it runs (fix it, then restart the Tower)")

    def wait_addressable(self, timeout: float = 60.0) -> None:
        """Wait until URLs to a store that :meth:`start_background` is starting can be made
        (its ports are chosen: a fraction of a second after serve), not until it runs; raises
        ConstructionError when it did not start. Talking to it (:meth:`client`,
        :meth:`credentials`, :meth:`filer_auth`) still waits until it runs."""
        if self._started and not self._addressable.wait(timeout):
            raise ConstructionError(f"the Construction DataLake is still choosing its ports after {timeout:.0f} s "
                                    "(see the Tower's log)")
        if self._start_error is not None:
            raise ConstructionError(f"the Construction DataLake did not start: {self._start_error}") from self._start_error

    def published(self, path: Path, timeout: float = 60.0) -> str:
        """The SHA-256 of an artifact once it is in the store: waits only for that artifact
        when :meth:`start_background` is still publishing it; publishes it now otherwise."""
        a = self._pending.get(str(Path(path)))
        if a is None:
            self.wait_running()
            return self._upload(Path(path), self._digest(Path(path)))
        if not a.done.wait(timeout):
            raise ConstructionError(f"{a.path.name} is still being published into the Construction DataLake "
                                    f"after {timeout:.0f} s (see the Tower's log)")
        if a.error is not None and a.sha is not None and self._start_error is None:
            try:  # the background upload failed (logged): once more, now, for whoever needs it
                self._upload(a.path, a.sha)
                a.error = None
            except Exception as exc:  # noqa: BLE001
                a.error = ConstructionError(f"cannot publish {a.path.name} into the Construction DataLake: {exc}")
        if a.error is not None:
            raise ConstructionError(str(a.error)) from a.error
        return a.sha

    def cached_here(self, path: Path, timeout: float = 60.0) -> str:
        """The SHA-256 of an artifact this host's boxes can start now: at once when
        :meth:`start_background` has put it into this host's artifact cache (its upload may
        still run: a box needs the store only to fetch it again); else once it is in the store
        (:meth:`published`), from where the box's ``fetch.py`` downloads it."""
        a = self._pending.get(str(Path(path)))
        if a is not None:
            if not a.cached.wait(timeout):
                raise ConstructionError(f"{a.path.name} is still being put into the artifact cache after "
                                        f"{timeout:.0f} s (see the Tower's log)")
            if a.cache_error is None and (self.cache_dir / a.sha).is_file():
                return a.sha
        return self.published(path, timeout)

    def _ports_free(self) -> bool:
        import socket

        ports = [self.master_port, self.volume_port, self.filer_port, self.s3_port]
        for ip in ("127.0.0.1", self.bind_ip):
            for port in ports + [p + 10000 for p in ports]:
                with socket.socket() as s:
                    # as the Go listener does: a port of a store killed a moment ago (TIME_WAIT) is free
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s.bind((ip, port))
                    except OSError:
                        return False
        return True

    def stop(self) -> None:
        """Stop it (its data stays in the state dir); removes its host firewall table."""
        self.supervisor.stop_box()
        self.supervisor.sock_path.unlink(missing_ok=True)
        subprocess.run(["nft", "delete", "table", "inet", f"overcloud_cdl_{self.tag}"], capture_output=True)

    def pids(self) -> list[int]:
        return self.supervisor.box_pids()

    def _guard(self) -> None:
        """Boxes must not reach this store's internal ports (master, volume, filer and their
        gRPC ports); its S3 port is authenticated. Nor may the host's non-root users: the
        output chain drops their connections to those ports on any local address (the master's
        HTTP API answers every local address ``weed server`` itself uses, and hands out write
        JWTs and /col/delete). Root -- the Tower, ``weed`` itself -- passes; S3 stays open to
        all, with keys. Only this store's own ports are named, so several Towers' stores on one
        host never block each other."""
        bridges = ", ".join(f'"{b}"' for b in self.bridges)
        ports = [self.master_port, self.volume_port, self.filer_port]
        closed = ", ".join(str(p) for p in ports + [p + 10000 for p in ports] + [self.s3_port + 10000])
        rules = f"""
table inet overcloud_cdl_{self.tag} {{
  chain input {{
    type filter hook input priority -10; policy accept;
    iifname {{ {bridges} }} ip daddr {{ {self.bind_ip}, 127.0.0.1 }} tcp dport {{ {closed} }} drop
  }}
  chain output {{
    type filter hook output priority -10; policy accept;
    fib daddr type local meta skuid != 0 tcp dport {{ {closed} }} reject with tcp reset
  }}
}}
"""
        subprocess.run(["nft", "delete", "table", "inet", f"overcloud_cdl_{self.tag}"], capture_output=True)
        r = subprocess.run(["nft", "-f", "-"], input=rules.encode(), capture_output=True)
        if r.returncode != 0:
            raise ConstructionError(f"cannot install the host firewall for the Construction DataLake: {r.stderr.decode().strip()}")

    # -- artifacts ----------------------------------------------------------
    def publish(self, path: Path) -> str:
        """Put a file into the store once, by content; returns its SHA-256. An artifact that
        :meth:`start_background` is publishing is waited for, not uploaded twice."""
        return self.published(path)

    @staticmethod
    def _digest(path: Path) -> str:
        from overcloud.datalake import seaweed

        return seaweed.weed_sha256(path) if path == seaweed.weed_binary() else sha256_file(path)

    def _upload(self, path: Path, sha: str) -> str:
        if sha in self._published.values():
            return sha
        client = self._client()
        key = f"sha256/{sha}"
        try:
            client.head_object(Bucket=ARTIFACTS, Key=key)
        except Exception:  # noqa: BLE001 - missing: upload it
            if path.stat().st_size <= SINGLE_PUT_BYTES:
                # one PUT, not a multipart upload: measured for the 150 MB weed, the store
                # spends 1.6 s of CPU instead of 2.6 s (and the Tower 0.2 s instead of 0.35 s),
                # CPU that a first create, running meanwhile, wants (bench/coldstart.py)
                with open(path, "rb") as f:
                    client.put_object(Bucket=ARTIFACTS, Key=key, Body=f)
            else:
                client.upload_file(str(path), ARTIFACTS, key)
        self._published[str(path)] = sha
        return sha

    def _seed_cache(self, path: Path, sha: str) -> None:
        """Put ``path`` into this host's artifact cache as ``<sha>``, the way a box's
        ``fetch.py`` would after a download (flock, temporary file, SHA-256 checked, atomic
        rename), from the local file: the host's boxes then start it without a download."""
        from overcloud.boxes import fetch

        if not (self.cache_dir / sha).exists():
            fetch.fetch(path.resolve().as_uri(), sha, str(self.cache_dir))

    def artifact_url(self, sha: str) -> str:
        # presigning is computed here, no request: the store need not run yet (see program)
        return self._client().generate_presigned_url(
            "get_object", Params={"Bucket": ARTIFACTS, "Key": f"sha256/{sha}"}, ExpiresIn=PRESIGN_SECONDS
        )

    def program(self, path: Path, args: list[str], url_dir: Path, session: Any = None) -> list[str]:
        """A supervisord command that fetches artifact ``path`` into the box cache, then runs it.
        The presigned URL goes to ``url_dir/<sha>.url`` (0600), refreshed on every call, so the
        command itself is the same every time (supervisord does not restart the program when a
        workflow task runs again). Right after ``serve`` it waits only for what this host's box
        still lacks: the artifact in this host's cache, or in the store when it could not be
        cached (:meth:`cached_here`); the URL needs the store's ports, not the store itself."""
        self.wait_addressable()
        sha = self.cached_here(path)
        staged = session.stage_artifact(path, sha) if session is not None else None
        if staged is not None:
            # a box on another machine (the ssh UnderCloud) cannot reach this store: its session
            # put the artifact into its host's cache, content-addressed, and the fetch program
            # there (our fetch.py under the host's python3) finds it and checks it again
            url_file = f"{url_dir}/{sha}.url"
            session.put_file(os.path.relpath(url_file, session.box_dir), self.artifact_url(sha), mode=0o600)
            return [*staged.fetch, f"@{url_file}", sha, staged.cache, "--", *args]
        url_dir.mkdir(parents=True, exist_ok=True)
        url_file = url_dir / f"{sha}.url"
        write_private(url_file, self.artifact_url(sha))
        return [sys.executable, "-I", "-S", str(FETCH), f"@{url_file}", sha, str(self.cache_dir), "--", *args]
