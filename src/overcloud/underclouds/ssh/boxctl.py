"""Box operations on a remote host, for the ssh driver and its RemoteBoxSession.

Run on the host from the bundle: ``python3 -IS <bundle> module overcloud.underclouds.ssh.boxctl
<op>``, one JSON object on stdin, the agent's answer on stdout (``{"ok": true, "result": ...}``
or ``{"ok": false, "error": {...}}``; the Tower raises the error again). The Tower normally
sends these ops to the host's kept agent instead (``agent.serve``: the same functions, no
Python start per call). Ops that need the Tower's host
config (``ensure-host``, ``boxes``, ``join``, ``leave``) carry it as the agent's ops do
(``tower_id``, ``sites``, ``overlay_cidr``, ``max_boxes``); box ops name the box by ``handle``
and ``box_dir``.

``relay <host> <port> <timeout>`` (run in the box's netns) is the remote ``connect_tcp``: it
connects, writes ``+`` (or ``-<reason>`` and exits 1), then copies stdin to the socket and the
socket to stdout until the socket ends. The Tower runs the same code as ``relay.py``, by path.

Standard library and our host-side package only (it runs under the host's ``python3 -IS``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

HANDLE = re.compile(r"^oc-[0-9a-f]{8}-[A-Za-z0-9-]{1,3}$")
PROGRAM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _box(req: dict[str, Any]):
    from overcloud.boxes.cgroups import Cgroups
    from overcloud.boxes.supervision import BoxSupervisor

    handle, box_dir = req.get("handle"), req.get("box_dir")
    if not isinstance(handle, str) or not HANDLE.match(handle):
        raise ValueError("handle must be a box handle oc-<8 hex>-<name>")
    if not isinstance(box_dir, str) or not box_dir.startswith("/") or ".." in Path(box_dir).parts \
            or Path(box_dir).name != handle:
        raise ValueError("box_dir must be the box's absolute directory (ending in its handle)")
    return BoxSupervisor(handle, Path(box_dir), Cgroups())


def _host(req: dict[str, Any]):
    from overcloud.underclouds.ssh import agent

    return agent._host(req)


# -- host-wide -------------------------------------------------------------------------------
def ensure_host(req: dict[str, Any]) -> dict[str, Any]:
    """agent ensure-site, then the host guard again letting box traffic to and from the peers'
    box subnets through (``peer_cidrs``: every other host's ``box_cidr``)."""
    from overcloud.underclouds.local import net

    peers = [str(ipaddress.ip_network(c)) for c in req.get("peer_cidrs", [])]
    host = _host(req)
    host.ensure_sites()
    with host.leases.lock():
        net.install_host_guard(host.bridges, peer_cidrs=peers)
    return {"gateways": host.gateways, "state_dir": str(host.state_dir)}


def boxes(req: dict[str, Any]) -> list[dict[str, Any]]:
    """This Tower's box leases on the host (placement counts what they use)."""
    host = _host(req)
    return [{k: lease.get(k) for k in ("handle", "overcloud_id", "name", "site", "flavor", "address")}
            for lease in host.leases.boxes()]


def join(req: dict[str, Any]) -> dict[str, Any]:
    """Join this host's ``boxes`` to an OverCloud's overlay made by the Tower (``vni``,
    ``subnet``, ``addresses`` by box name, ``peers``: every box's site address): what
    LocalHost.join_overlay does per box, plus a route to each other host's box subnet."""
    from overcloud.underclouds.local import net

    host = _host(req)
    vni, subnet = int(req["vni"]), ipaddress.ip_network(req["subnet"])
    addresses: dict[str, str] = dict(req["addresses"])
    routes = [str(ipaddress.ip_network(c)) for c in req.get("routes", [])]
    gateways = list(host.gateways.values())
    for b in req["boxes"]:
        handle, name, address, oc = b["handle"], b["name"], b["address"], b["overcloud_id"]
        if not HANDLE.match(handle):
            raise ValueError("boxes[].handle must be a box handle")
        peers = [p for p in req["peers"] if p != address]
        gateway = host.gateways[b["site"]]
        for cidr in routes:
            net_run(["ip", "-n", handle, "route", "replace", cidr, "via", gateway])
        net.box_firewall(handle, gateways, peers)
        net.ensure_vxlan(handle, vni, address, addresses[name], subnet.prefixlen, peers, host.tag(oc, name))
        if req.get("mtu"):  # what every underlay path between the OverCloud's hosts carries
            net_run(["ip", "-n", handle, "link", "set", net.VXLAN_DEV, "mtu", str(int(req["mtu"]))])
        sup = host.supervisor(handle)
        sup.set_hosts(addresses)
        sup.enable_inet(addresses[name])
        host.leases.update_box(handle, overlay={"vni": vni, "subnet": str(subnet), "address": addresses[name],
                                                "peers": peers})
    return {"joined": [b["name"] for b in req["boxes"]]}


def leave(req: dict[str, Any]) -> dict[str, Any]:
    from overcloud.boxes import netns as boxnetns
    from overcloud.underclouds.local import net

    host = _host(req)
    gateways = list(host.gateways.values())
    left = []
    for b in req["boxes"]:
        handle = b["handle"]
        if not HANDLE.match(handle):
            raise ValueError("boxes[].handle must be a box handle")
        if not os.path.exists(boxnetns.netns_path(handle)):
            continue
        net.delete_vxlan(handle)
        net.box_firewall(handle, gateways, [])
        try:
            host.supervisor(handle).remove_program("overcloud-health")
        except Exception:  # noqa: BLE001 - as LocalHost.leave_overlay
            pass
        if host.leases.box(handle) is not None:
            host.leases.update_box(handle, overlay=None)
        left.append(b["name"])
    return {"left": left}


def publish(req: dict[str, Any]) -> list[int]:
    """Publish a box's ``ports`` on this host's ``address`` (see overcloud.underclouds.local.publish);
    no ports: unpublish that group."""
    from overcloud.underclouds.local import publish as pub

    handle = req.get("handle")
    if not isinstance(handle, str) or not HANDLE.match(handle):
        raise ValueError("handle must be a box handle")
    ports = req.get("ports")
    if not isinstance(ports, list) or not all(isinstance(p, int) for p in ports):
        raise ValueError("ports must be a list of port numbers")
    bridge = req["sites"][0]["bridge"]
    return pub.publish(handle=handle, group=str(req.get("group")), address=str(req.get("address")),
                       box_address=str(req.get("box_address")), bridge=bridge, ports=ports,
                       comment=f"overcloud tower={req.get('tower_id')} box={handle}")


def net_run(argv: list[str]) -> None:
    import subprocess

    r = subprocess.run(argv, capture_output=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:5])} failed: {r.stderr.decode(errors='replace').strip()[-300:]}")


# -- one box -----------------------------------------------------------------------------------
def sup(req: dict[str, Any]) -> Any:
    """One supervisor call of a box: ``method`` (below) with ``args``."""
    s = _box(req)
    method, args = req.get("method"), req.get("args") or {}
    names = args.get("names") or []
    if not all(isinstance(n, str) and PROGRAM.match(n) for n in [*names, *([args["name"]] if "name" in args else [])]):
        raise ValueError("program names are letters, digits and _.-")
    if method == "state":
        return s.rpc().supervisor.getState()["statename"]
    if method == "running":
        return s.is_running()
    if method == "add":
        s.add_program(args["name"], args["command"], **args.get("options", {}))
        return None
    if method == "remove":
        return s.remove_programs(names, timeout=float(args.get("timeout", 10.0)))
    if method == "forget":
        for name in names:
            (s.programs_dir / f"{name}.conf").unlink(missing_ok=True)
            for stream in ("out", "err"):
                (s.log_dir / f"{name}.{stream}.log").unlink(missing_ok=True)
        return None
    if method == "start":
        return s.rpc().supervisor.startProcess(args["name"], bool(args.get("wait", False)))
    if method == "stop":
        return s.rpc().supervisor.stopProcess(args["name"], bool(args.get("wait", True)))
    if method == "stop-all":
        return s.rpc().supervisor.stopAllProcesses(False)
    if method == "signal":
        return s.rpc().supervisor.signalProcess(args["name"], str(args["signal"]))
    if method == "states":
        return s.program_states()
    if method == "info":
        return s.rpc().supervisor.getAllProcessInfo()
    if method == "hosts":
        s.set_hosts(dict(args["entries"]))
        return None
    if method == "limits":
        return list(s.cgroups.limits(s.handle))
    if method == "service-table":
        from overcloud.underclouds.local import net

        net.service_table(s.handle, str(args["script"]), str(args["vip_cidr"]))
        return None
    raise ValueError(f"unknown supervisor method {method!r}")


def tcp_check(req: dict[str, Any]) -> bool:
    """Whether a TCP connection to host:port succeeds from the box ``handle``'s netns (without
    a handle: from where this runs)."""
    handle = req.get("handle")
    if handle is not None:
        from overcloud.boxes.netns import NetnsTransport

        if not isinstance(handle, str) or not HANDLE.match(handle):
            raise ValueError("handle must be a box handle oc-<8 hex>-<name>")
        return NetnsTransport(handle).tcp_check(str(req["host"]), int(req["port"]), float(req.get("timeout", 1.0)))
    try:
        with socket.create_connection((str(req["host"]), int(req["port"])), timeout=float(req.get("timeout", 1.0))):
            return True
    except OSError:
        return False


def relay(host: str, port: int, timeout: float) -> int:
    """stdin/stdout <-> a TCP connection opened from here (see relay.py, which the Tower runs by
    path: it starts faster without our package)."""
    from overcloud.underclouds.ssh.relay import relay as run

    return run(host, port, timeout)


OPS = {"ensure-host": ensure_host, "boxes": boxes, "join": join, "leave": leave, "sup": sup, "tcp-check": tcp_check,
       "publish": publish}


def main(argv: list[str]) -> int:
    if argv[:1] == ["relay"] and len(argv) == 4:
        return relay(argv[1], int(argv[2]), float(argv[3]))
    import json

    from overcloud.underclouds.ssh import agent

    if len(argv) != 1:
        sys.stdout.write(json.dumps(agent.answer_error("input", f"usage: boxctl <op> < request.json; ops: {', '.join(OPS)}")) + "\n")
        return 2
    status, answer = agent.run_op(argv[0], sys.stdin.buffer.read(agent.MAX_INPUT + 1), OPS)
    sys.stdout.write(json.dumps(answer, default=str) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
