#!/usr/bin/env python3
"""The AWS lab's harness: every instance moto reports as running becomes a namespace instance.

    python3 lab/aws_harness.py --endpoint http://127.0.0.1:PORT --state-dir D [--region us-east-1]
                               [--interval 0.5]

Run by scripts/aws-lab.sh as a background process (its PID recorded there), as root. Every
``--interval`` seconds it lists moto's instances (DescribeInstances). Each instance in state
``running`` is booted once (lab/instance.py) with its user data (DescribeInstanceAttribute
userData) at its PrivateIpAddress, named ``awi-<first 8 hex of its id after "i-">``, on a bridge
per subnet (``awb-<8 hex of the subnet id>``, gateway = the subnet's first address, .1). Instances
that are stopping, stopped, shutting-down or terminated (or that moto no longer lists) are
killed. On SIGTERM (or SIGINT) it kills every instance it booted and exits.

Boots run in threads (several instances at once); a boot that fails is logged and tried again
after 5 s while the instance still runs. Its log: D/harness.log; the instances' dirs: D/instances/.
The credentials do not matter to moto: the harness uses the standard chain when it finds
credentials there (scripts/aws-lab.sh's AWS_SHARED_CREDENTIALS_FILE) and fixed dummy ones otherwise.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import instance  # noqa: E402  (lab/instance.py)

RETRY_S = 5.0
GONE_STATES = {"shutting-down", "terminated", "stopping", "stopped"}


def instance_name(instance_id: str) -> str:
    return "awi-" + instance_id.removeprefix("i-")[:8]


def bridge_name(subnet_id: str) -> str:
    return "awb-" + subnet_id.removeprefix("subnet-")[:8]


class Harness:
    def __init__(self, endpoint: str, state_dir: Path, region: str, interval: float):
        import boto3
        import botocore.config

        self.state_dir = state_dir
        self.instances_dir = state_dir / "instances"
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        self.interval = interval
        self.log_file = open(state_dir / "harness.log", "a", buffering=1)
        session = boto3.session.Session(region_name=region)
        creds = {} if session.get_credentials() else {"aws_access_key_id": "lab", "aws_secret_access_key": "lab"}
        self.ec2 = session.client("ec2", endpoint_url=endpoint, config=botocore.config.Config(
            retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30), **creds)
        self.lock = threading.Lock()
        self.booted: dict[str, dict] = {}      # instance id -> {"name", "bridge", ...}: booted and running
        self.booting: set[str] = set()         # instance ids with a boot under way
        self.failed: dict[str, float] = {}     # instance id -> monotonic time of its last failed boot
        self.subnets: dict[str, str] = {}      # subnet id -> cidr
        self.stopping = threading.Event()
        # instances an earlier harness of this dir left running (it was killed with -9): adopted
        # when moto still runs them, killed after the first poll otherwise
        self.adoptable = {rec["name"]: rec for rec in instance.list_instances(self.instances_dir) if rec["running"]}

    def log(self, msg: str) -> None:
        self.log_file.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {msg}\n")

    # one poll ---------------------------------------------------------------------------------
    def poll(self) -> None:
        seen: dict[str, dict] = {}
        for page in self.ec2.get_paginator("describe_instances").paginate():
            for res in page.get("Reservations", []):
                for inst in res.get("Instances", []):
                    seen[inst["InstanceId"]] = inst
        for iid, inst in seen.items():
            state = inst.get("State", {}).get("Name")
            if state == "running":
                self._want_running(iid, inst)
            elif state in GONE_STATES:
                self._want_gone(iid, state)
        with self.lock:
            vanished = [iid for iid in self.booted if iid not in seen]
            orphans, self.adoptable = list(self.adoptable), {}
        for name in orphans:
            self.log(f"{name}: left by an earlier run, not running in moto: killed")
            instance.kill(name, self.instances_dir)
        for iid in vanished:
            self._want_gone(iid, "no longer listed")

    def _want_running(self, iid: str, inst: dict) -> None:
        with self.lock:
            if iid in self.booted or iid in self.booting:
                return
            if time.monotonic() - self.failed.get(iid, -1e9) < RETRY_S:
                return
            rec = self.adoptable.pop(instance_name(iid), None)
            if rec is not None:
                self.booted[iid] = {"name": rec["name"], "bridge": rec["bridge"], "address": rec["address"],
                                    "pid": rec["pid"]}
                self.log(f"{iid}: {rec['name']} left running by an earlier run: adopted")
                return
            self.booting.add(iid)
        threading.Thread(target=self._boot, args=(iid, inst), name=f"boot-{iid}", daemon=True).start()

    def _want_gone(self, iid: str, why: str) -> None:
        with self.lock:
            rec = self.booted.pop(iid, None)
            self.failed.pop(iid, None)
        if rec is None:
            return
        t0 = time.monotonic()
        try:
            instance.kill(rec["name"], self.instances_dir)
            self.log(f"{iid}: {why}: killed {rec['name']} ({time.monotonic() - t0:.2f} s)")
        except Exception as exc:  # keep going: the next poll does not see it booted any more
            self.log(f"{iid}: {why}: killing {rec['name']} failed: {exc}")

    def _subnet_cidr(self, subnet_id: str) -> str:
        if subnet_id not in self.subnets:
            r = self.ec2.describe_subnets(SubnetIds=[subnet_id])
            self.subnets[subnet_id] = r["Subnets"][0]["CidrBlock"]
        return self.subnets[subnet_id]

    def _boot(self, iid: str, inst: dict) -> None:
        name = instance_name(iid)
        try:
            ip = inst.get("PrivateIpAddress")
            subnet = inst.get("SubnetId")
            if not ip or not subnet:
                raise RuntimeError(f"no private address or subnet (PrivateIpAddress={ip}, SubnetId={subnet})")
            net = ipaddress.IPv4Network(self._subnet_cidr(subnet))
            gateway = f"{net.network_address + 1}/{net.prefixlen}"
            attr = self.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
            b64 = (attr.get("UserData") or {}).get("Value") or ""
            user_data = base64.b64decode(b64).decode() if b64 else ""
            bridge = bridge_name(subnet)
            self.log(f"{iid}: running at {ip} in {subnet} ({net}): booting {name} on {bridge}")
            t0 = time.monotonic()
            r = instance.boot(name, self.instances_dir, bridge, gateway, f"{ip}/{net.prefixlen}", user_data,
                              hostname=name)
            self.log(f"{iid}: {name} up in {time.monotonic() - t0:.1f} s: {json.dumps(r)}")
            with self.lock:
                self.booted[iid] = {"name": name, "bridge": bridge, "address": ip, "pid": r["pid"]}
                self.failed.pop(iid, None)
        except Exception as exc:
            self.log(f"{iid}: booting {name} failed (again in {RETRY_S:.0f} s while it runs): {exc}")
            if not isinstance(exc, instance.InstanceError):
                self.log(traceback.format_exc())
            with self.lock:
                self.failed[iid] = time.monotonic()
        finally:
            with self.lock:
                self.booting.discard(iid)
            if self.stopping.is_set():  # booted while the harness stops: it goes too
                self._want_gone(iid, "harness stopping")

    # the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        self.log(f"harness up (pid {os.getpid()}), state {self.state_dir}")
        while not self.stopping.is_set():
            try:
                self.poll()
            except Exception as exc:  # moto not there yet, or gone for a moment: keep polling
                self.log(f"poll failed: {type(exc).__name__}: {exc}")
            self.stopping.wait(self.interval)
        self.shutdown()

    def shutdown(self) -> None:
        deadline = time.monotonic() + 150  # boots under way finish (or fail) first
        while time.monotonic() < deadline:
            with self.lock:
                if not self.booting:
                    break
            time.sleep(0.1)
        with self.lock:
            ids = list(self.booted)
        for iid in ids:
            self._want_gone(iid, "harness stopping")
        # instances of an earlier harness of this dir (killed with -9) go too
        for rec in instance.list_instances(self.instances_dir):
            try:
                instance.kill(rec["name"], self.instances_dir)
                self.log(f"{rec['name']}: left by an earlier run: killed")
            except Exception as exc:
                self.log(f"{rec['name']}: killing failed: {exc}")
        self.log("harness down")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab/aws_harness.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", required=True, help="moto's URL, e.g. http://127.0.0.1:5000")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    ap.add_argument("--interval", type=float, default=0.5)
    a = ap.parse_args(argv)
    state = Path(a.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    h = Harness(a.endpoint, state, a.region, a.interval)
    signal.signal(signal.SIGTERM, lambda *_: h.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: h.stopping.set())
    h.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
