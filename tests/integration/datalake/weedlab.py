"""Real SeaweedFS instances on 127.0.0.1 for the DataLake tests (used by conftest.py).

Each process is started with Popen from the argv builders under test, in its own temp
dir, with the instance's own ``security.toml`` (JWT keys, gRPC mutual TLS, the master's HTTP
API for 127.0.0.1 only -- and ``@``, unix-socket peers: ``weed server``'s own parts --, so
tests reach it from 127.0.0.2 to be refused), and stopped by PID (SIGTERM, then SIGKILL after a bounded wait) in the order
s3 -> filer -> volumes -> master. Loopback only.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from overcloud.datalake import seaweed as sw

LOOPBACK = "127.0.0.1"
TIMINGS: dict[str, float] = {}


def port_pair() -> int:
    """A port p with p and p + 10000 (SeaweedFS's default gRPC port) both free on loopback."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 30000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind((LOOPBACK, port))
                b.bind((LOOPBACK, port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair on 127.0.0.1 in 20000-39999 after 200 tries")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Weeds:
    """The processes of one SeaweedFS instance, stopped by PID in reverse start order."""

    def __init__(self, name: str):
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"oc-weed-{name}-"))
        self.logdir = self.dir / "log"
        self.logdir.mkdir()
        self.procs: dict[str, subprocess.Popen] = {}
        self.weed = sw.weed_binary()
        self.keys = sw.new_credentials()
        self.s3_config = self.dir / "s3.json"
        self.s3_config.write_text(json.dumps(sw.s3_config(*self.keys)))
        self.sec = sw.new_security()
        self.config_dir = sw.write_security(self.dir / "security", self.sec, white_list=[LOOPBACK, "@"]).parent
        self.filer_auth = sw.FilerJwt.of(self.sec)

    def start(self, role: str, argv: list[str]) -> subprocess.Popen:
        out = open(self.dir / f"{role}.out", "wb")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        self.procs[role] = proc
        return proc

    def kill(self, role: str) -> None:
        proc = self.procs.pop(role)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM by group in stop order, SIGKILL after ``grace``: a filer (and ``weed
        server``) takes ~15 s to exit on SIGTERM, too long for a test's teardown."""
        for group in (["s3"], ["filer"], [r for r in self.procs if r.startswith("volume")], ["master", "server"]):
            live = [self.procs.pop(r) for r in group if r in self.procs]
            for proc in live:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in live:
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def tail(self, role: str) -> str:
        path = self.dir / f"{role}.out"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


class Distributed(Weeds):
    """An OverCloud DataLake's shape: master + N volume servers + filer + s3, started in order."""

    def __init__(self, name: str, n_volumes: int = 2):
        super().__init__(name)
        self.n_volumes = n_volumes
        self.master_port, self.filer_port, self.s3_port = port_pair(), port_pair(), port_pair()
        self.volume_ports = [port_pair() for _ in range(n_volumes)]
        self.master = f"{LOOPBACK}:{self.master_port}"
        self.master_url = f"http://{self.master}"
        self.filer_url = f"http://{LOOPBACK}:{self.filer_port}"
        self.s3_url = f"http://{LOOPBACK}:{self.s3_port}"

    def up(self, timeout: float = 30.0) -> dict[str, float]:
        t0 = time.monotonic()
        marks = {}
        for sub in ("m", "f", *[f"v{i}" for i in range(self.n_volumes)]):
            (self.dir / sub).mkdir()
        self.start("master", sw.master_argv(self.weed, LOOPBACK, self.master_port, self.dir / "m", self.logdir,
                                            sw.replication_for(self.n_volumes), config_dir=self.config_dir))
        sw.wait_master_leader(self.master_url, timeout)
        marks["master_leader_s"] = time.monotonic() - t0
        for i, port in enumerate(self.volume_ports):
            self.start(f"volume{i}", sw.volume_argv(self.weed, LOOPBACK, port, self.master, self.dir / f"v{i}",
                                                    self.logdir, config_dir=self.config_dir))
        sw.wait_volume_servers(self.master_url, self.n_volumes, timeout)
        marks["volumes_registered_s"] = time.monotonic() - t0
        self.start("filer", sw.filer_argv(self.weed, LOOPBACK, self.filer_port, self.master, self.dir / "f",
                                          self.logdir, config_dir=self.config_dir))
        sw.wait_http(self.filer_url + "/", timeout)
        marks["filer_up_s"] = time.monotonic() - t0
        self.start("s3", sw.s3_argv(self.weed, LOOPBACK, self.s3_port, f"{LOOPBACK}:{self.filer_port}",
                                    self.s3_config, self.logdir, config_dir=self.config_dir))
        sw.wait_http(self.s3_url + "/", timeout)
        marks["s3_up_s"] = time.monotonic() - t0
        client = sw.s3_client(self.s3_url, *self.keys)
        sw.ensure_buckets(client, ["first-put"], timeout)
        client.put_object(Bucket="first-put", Key="hello", Body=b"hello")
        marks["first_put_s"] = time.monotonic() - t0
        return marks


class AllInOne(Weeds):
    """The Construction DataLake's shape: one ``weed server -filer -s3``."""

    def __init__(self, name: str):
        super().__init__(name)
        self.master_port, self.volume_port = port_pair(), port_pair()
        self.filer_port, self.s3_port = port_pair(), port_pair()
        self.master_url = f"http://{LOOPBACK}:{self.master_port}"
        self.filer_url = f"http://{LOOPBACK}:{self.filer_port}"
        self.s3_url = f"http://{LOOPBACK}:{self.s3_port}"

    def up(self, timeout: float = 30.0) -> dict[str, float]:
        t0 = time.monotonic()
        (self.dir / "data").mkdir()
        self.start("server", sw.server_argv(
            self.weed, LOOPBACK, self.dir / "data", self.logdir, master_port=self.master_port,
            volume_port=self.volume_port, filer_port=self.filer_port, s3_port=self.s3_port,
            s3_config_path=self.s3_config, config_dir=self.config_dir))
        sw.wait_master_leader(self.master_url, timeout)
        sw.wait_volume_servers(self.master_url, 1, timeout)
        sw.wait_http(self.filer_url + "/", timeout)
        sw.wait_http(self.s3_url + "/", timeout)
        marks = {"all_up_s": time.monotonic() - t0}
        client = sw.s3_client(self.s3_url, *self.keys)
        sw.ensure_buckets(client, ["first-put"], timeout)
        client.put_object(Bucket="first-put", Key="hello", Body=b"hello")
        marks["first_put_s"] = time.monotonic() - t0
        return marks
