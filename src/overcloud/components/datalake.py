"""The Connected DataLake: per-OverCloud SeaweedFS (object + file), preserved on delete.

Layout: master, filer and S3 gateway on the DevOps Post, one volume server on every cluster
box, all bound to overlay addresses (only the OverCloud's own boxes reach them). Replication
``001`` (a second copy on another server) with two or more cluster boxes, ``000`` with one.
The ``weed`` binary reaches each box from the Construction DataLake (content-addressed,
SHA-256 checked). Every OverCloud has its own S3 key pair, sealed in the repository.

Security (docs/seaweedfs.md): every OverCloud also has its own SeaweedFS ``security.toml``
secrets (JWT keys for volume servers and filer, a mutual-TLS CA for gRPC), sealed in the
repository and written 0600 into a 0700 ``weed-security/`` dir of each box, read with
``weed -config_dir``. The master's HTTP API answers only the Post's own address. A workload,
even one sharing a cluster box's network namespace with its volume server, reaches the
DataLake only through S3 with keys.

The S3 gateway alone is also published on the Post's site address (``PUBLISHED``: an nft
table of the Post rewriting ``<site address>:8333`` to the gateway; the box firewall admits
only such rewritten connections from the site network), so S3 with the OverCloud's keys is
reachable from where the user is; the master, filer and volume servers never are.

Everything that talks to SeaweedFS does so from inside a box, through its BoxSession: HTTP
readiness checks over the session's own connections (``session.http_client``), S3 work (the
bucket, restore, the round trip, the archive copy) as ``overcloud.datalake.boxops``, run in
the box with ``session.run_module``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

from pathlib import Path

from overcloud.boxes import entry
from overcloud.components.post import find_post
from overcloud.components.programs import remove_everywhere
from overcloud.southbound import Southbound
from overcloud.underclouds.base import Box, UnderCloudError
from overcloud.workflows.actions import ActionContext, registry

logger = logging.getLogger(__name__)

MASTER, VOLUME, FILER, S3 = 9333, 8080, 8888, 8333
#: Prometheus metrics ports of each SeaweedFS part (scraped by the Fabric's Datastore)
METRICS = {"weed-master": 9324, "weed-volume": 9325, "weed-filer": 9326, "weed-s3": 9327}
BUCKET = "data"
SECRET = "datalake.s3"
SECURITY = "datalake.security"
SECURITY_DIR = "weed-security"
PROGRAMS = ("weed-s3", "weed-filer", "weed-volume", "weed-master")  # stop order
BOXOPS = "overcloud.datalake.boxops"  # what runs inside a box (see its module doc)
PUBLISHED = "overcloud_pub"  # the Post's nft table publishing S3 on its site address


class DataLakeError(RuntimeError):
    pass


class NoDataLake(LookupError):
    def __init__(self, overcloud_id: str):
        super().__init__(f"OverCloud {overcloud_id} has no DataLake (not deployed yet, disabled, or deleted)")
        self.overcloud_id = overcloud_id


def settings_of(sb: Southbound, overcloud_id: str) -> dict[str, Any]:
    spec = sb.records.get(overcloud_id).spec or {}
    return {"enabled": True, "preserve": True, "restore_from": None, **(spec.get("datalake") or {})}


def credentials(sb: Southbound, overcloud_id: str) -> tuple[str, str]:
    """This OverCloud's S3 keys, made and sealed on first use (idempotent across retries)."""
    from overcloud.datalake import seaweed

    if sb.records.get_secret(overcloud_id, SECRET) is None:
        access, secret = seaweed.new_credentials()
        sb.records.put_secret(overcloud_id, SECRET, sb.secrets.seal(json.dumps([access, secret])))
    sealed = sb.records.get_secret(overcloud_id, SECRET)
    access, secret = json.loads(sb.secrets.open(sealed))
    return access, secret


def client_credentials(sb: Southbound, overcloud_id: str) -> dict[str, Any]:
    """What a client of the OverCloud's DataLake needs (``GET .../datalake``, workloads'
    environment); NoDataLake when it has none."""
    info = (sb.records.get(overcloud_id).info or {}).get("datalake")
    if not info or sb.records.get_secret(overcloud_id, SECRET) is None:
        raise NoDataLake(overcloud_id)
    access, secret = credentials(sb, overcloud_id)
    return {"access_key": access, "secret_key": secret, "s3_endpoint": info["s3_endpoint"],
            "filer_endpoint": info["filer_endpoint"], "buckets": info["buckets"], "region": "us-east-1",
            "addressing_style": "path"}


def security(sb: Southbound, overcloud_id: str) -> dict[str, str]:
    """This OverCloud's SeaweedFS secrets (JWT keys, gRPC CA and certificate), made and sealed
    on first use like the S3 keys (idempotent across retries)."""
    from overcloud.datalake import seaweed

    if sb.records.get_secret(overcloud_id, SECURITY) is None:
        sb.records.put_secret(overcloud_id, SECURITY, sb.secrets.seal(json.dumps(seaweed.new_security())))
    return json.loads(sb.secrets.open(sb.records.get_secret(overcloud_id, SECURITY)))


def filer_auth(sb: Southbound, overcloud_id: str):
    """Signs the Tower's own filer calls (round trip, preserve, restore)."""
    from overcloud.datalake import clients

    return clients.FilerJwt.of(security(sb, overcloud_id))


def box_op(session: Any, op: str, args: dict[str, Any], timeout: float) -> Any:
    """One operation of ``overcloud.datalake.boxops`` with its network in ``session``'s box.

    Where the box's host runs our whole package (``session.full_package``: this machine), it
    runs there with ``run_module``. A box on another machine has only the host bundle (no
    boto3): the operation runs here, its connections to the DataLake's S3 and filer opened
    from the box through the session (``loopback_relay``), so the bytes still leave from the
    box. The Construction DataLake (``cdl_s3``) is reached directly from here, where it runs."""
    if session.full_package:
        return entry.call(session, BOXOPS, op, args, timeout=timeout)
    relay = session.loopback_relay
    from urllib.parse import urlsplit

    from overcloud.datalake import boxops

    with contextlib.ExitStack() as stack:
        args = dict(args)
        for key in ("s3", "filer"):
            if args.get(key):
                u = urlsplit(args[key])
                args[key] = f"{u.scheme}://{stack.enter_context(relay(u.hostname, u.port))}"
        return boxops.OPS[op](args)


def endpoints(post_ip: str) -> dict[str, str]:
    return {
        "master": f"http://{post_ip}:{MASTER}",
        "filer": f"http://{post_ip}:{FILER}",
        "s3": f"http://{post_ip}:{S3}",
    }


def _boxes(boxes: list[dict[str, Any]]) -> tuple[Box, list[Box]]:
    objs = [Box.from_dict(b) for b in boxes]
    return find_post(objs), [b for b in objs if b.role == "cluster"]


def _write_security(session, sec: dict[str, str], **kw: Any) -> Path:
    """The box's ``weed -config_dir`` (0700, files 0600); returns the dir."""
    from overcloud.datalake import seaweed

    conf_dir = Path(session.box_dir) / SECURITY_DIR
    for name, text in seaweed.security_files(conf_dir, sec, **kw).items():
        session.put_file(f"{SECURITY_DIR}/{name}", text, mode=0o600)
    return conf_dir


@registry.action("datalake.deploy", revert_on_failure=True)
def deploy(ctx: ActionContext, overcloud_id: str, boxes: list[dict[str, Any]], overlay: dict[str, Any]) -> dict[str, Any]:
    from overcloud.datalake import seaweed

    sb = ctx.services
    conf = settings_of(sb, overcloud_id)
    if not conf["enabled"]:
        return {"skipped": True, "message": "DataLake disabled for this OverCloud"}
    t0 = time.monotonic()
    cdl = sb.construction_datalake(timeout=60)
    post, clusters = _boxes(boxes)
    addr = overlay["addresses"]
    post_ip = addr[post.name]
    ep = endpoints(post_ip)
    access, secret = credentials(sb, overcloud_id)
    sec = security(sb, overcloud_id)
    replication = seaweed.replication_for(len(clusters))
    weed = seaweed.weed_binary()
    post_s = sb.session(post)
    post_dir = Path(post_s.box_dir)
    s3_json = post_dir / "s3.json"
    post_s.put_file("s3.json", json.dumps(seaweed.s3_config(access, secret)), mode=0o600)
    # the master's HTTP API (/dir/assign and /dir/lookup hand out write JWTs) only from the
    # Post itself: the Tower asks from the Post's network; no workload runs on the Post
    post_conf_dir = _write_security(post_s, sec, white_list=[post_ip, "127.0.0.1"])
    logs = post_s.log_dir

    def run(session, name: str, argv: list[str]) -> None:
        session.make_dirs([name])  # its data dir (the volume of a box's disk)
        # stopped only when the DataLake is reclaimed (after preserve) or reverted: its data is
        # going away with the box, so a graceful stop (volume servers wait 10 s) buys nothing
        session.add_program(name, cdl.program(weed, argv[1:], Path(session.box_dir) / "artifacts", session=session), startsecs=0,
                            startretries=10, stopsignal="KILL")

    steps: dict[str, float] = {}
    mark = time.monotonic()

    def step(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        steps[name] = round(now - mark, 3)
        mark = now

    step("prepare")
    http = post_s.http_client(timeout=2.0)  # the Post's own connections: the master answers only it
    try:
        run(post_s, "weed-master", seaweed.master_argv(weed, post_ip, MASTER, str(post_dir / "weed-master"), logs, replication,
                                                        metrics_port=METRICS["weed-master"], config_dir=post_conf_dir))
        seaweed.wait_master_leader(ep["master"], 30, http=http)
        step("master leader")
        for box in clusters:
            session = sb.session(box)
            # a cluster box holds only the volume keys: its volume server never signs filer calls
            conf_dir = _write_security(session, sec, filer_keys=False)
            run(session, "weed-volume", seaweed.volume_argv(weed, addr[box.name], VOLUME, f"{post_ip}:{MASTER}",
                                                             str(Path(session.box_dir) / "weed-volume"), session.log_dir,
                                                             metrics_port=METRICS["weed-volume"], config_dir=conf_dir))
        run(post_s, "weed-filer", seaweed.filer_argv(weed, post_ip, FILER, f"{post_ip}:{MASTER}", str(post_dir / "weed-filer"), logs,
                                                      metrics_port=METRICS["weed-filer"], config_dir=post_conf_dir))
        seaweed.wait_volume_servers(ep["master"], len(clusters), 30, http=http)
        step("volume servers registered")
        seaweed.wait_http(ep["filer"], 30, http=http)
        step("filer up")
        run(post_s, "weed-s3", seaweed.s3_argv(weed, post_ip, S3, f"{post_ip}:{FILER}", str(s3_json), logs,
                                                metrics_port=METRICS["weed-s3"], config_dir=post_conf_dir))
        seaweed.wait_http(ep["s3"], 30, http=http)
        step("s3 up")
    finally:
        http.close()
    published = publish_s3(post_s, post.address, post_ip)

    keys = {"s3": ep["s3"], "filer": ep["filer"], "access": access, "secret": secret, "bucket": BUCKET, "security": sec}
    prepare = dict(keys, restore_from=conf["restore_from"])
    if conf["restore_from"]:
        cdl_access, cdl_secret = cdl.credentials()
        prepare.update(cdl_s3=cdl.s3_endpoint, cdl_access=cdl_access, cdl_secret=cdl_secret)
    restored = box_op(post_s, "prepare", prepare, timeout=3600 if conf["restore_from"] else 120)
    step("bucket" + (" + restore" if conf["restore_from"] else ""))
    # ready only when a cluster box really writes and reads, over the overlay
    check_box = clusters[0]
    check = box_op(sb.session(check_box), "round-trip", keys, timeout=120)
    step("round trip from a cluster box")
    info = {
        "steps_seconds": steps,
        "s3_endpoint": ep["s3"],
        "filer_endpoint": ep["filer"],
        "master": ep["master"],
        "buckets": [BUCKET],
        "replication": replication,
        "replication_note": "one copy per object: only one volume server" if replication == "000"
        else "a second copy of every object on another volume server (001)",
        "volume_servers": [{"box": b.name, "site": b.site, "url": f"{addr[b.name]}:{VOLUME}"} for b in clusters],
        # S3 only (with the OverCloud's keys), on the Post's site address: reachable from where the user is
        "published": published,
        "restored_from": conf["restore_from"],
        "restored": restored,
        "ready_seconds": round(time.monotonic() - t0, 3),
        "checked_from": check_box.name,
    }
    sb.records.update_info(overcloud_id, datalake=info)
    msg = f"SeaweedFS on {post.name} + {len(clusters)} volume servers, replication {replication}; S3 and filer round trip from {check_box.name} ok"
    if replication == "000":
        msg += " (one cluster: no replication)"
    if conf["restore_from"]:
        msg += f"; restored {restored.get('objects', 0)} objects, {restored.get('files', 0)} files from {conf['restore_from']}"
    return {"message": msg, "replication": replication, "check": check}


@deploy.revert
def deploy_revert(ctx: ActionContext, result, overcloud_id: str, boxes: list[dict[str, Any]], **_: Any) -> None:
    _stop(ctx.services, boxes)


def publish_s3(session, site_address: str, s3_ip: str) -> dict[str, Any]:
    """Publish the S3 gateway (``s3_ip``:S3) on the Post's site address, same port: one nft
    table of the Post, replaced atomically; then where the user is (``session.publish``: a
    remote host's address). Nothing else of the DataLake is published. Returns the detail's
    ``published``: ``{"s3": url}``, or ``{"s3": None, "problem": ...}`` when the host's port is
    another box's (the DataLake still serves the OverCloud's boxes)."""
    script = (f"table ip {PUBLISHED}\ndelete table ip {PUBLISHED}\ntable ip {PUBLISHED} {{\n"
              f"  chain published {{\n    type nat hook prerouting priority -100; policy accept;\n"
              f"    ip daddr {site_address} tcp dport {S3} dnat to {s3_ip}:{S3} comment \"datalake-s3\"\n  }}\n}}\n")
    session.run(["nft", "-f", "-"], input=script, timeout=10)
    try:
        return {"s3": f"http://{session.publish([S3], group='s3')}:{S3}"}
    except UnderCloudError as exc:
        logger.warning("publishing S3 of box %s: %s", session.box.name, exc)
        return {"s3": None, "problem": str(exc)}


def unpublish_s3(session) -> None:
    """Take S3 off the Post's site address (idempotent: a box or table already gone is fine)."""
    try:
        session.run(["nft", "-f", "-"], input=f"table ip {PUBLISHED}\ndelete table ip {PUBLISHED}\n", timeout=10, check=False)
        session.unpublish("s3")
    except Exception as exc:  # noqa: BLE001 - the box may be gone already
        logger.info("unpublishing S3: %s", exc)


def _stop(sb: Southbound, boxes: list[dict[str, Any]]) -> list[str]:
    """Take S3 off the Post's site address, then remove the SeaweedFS programs from every box,
    S3 first and master last."""
    post = next((Box.from_dict(b) for b in boxes if b.get("role") == "post"), None)
    if post is not None:
        try:
            unpublish_s3(sb.session(post))
        except Exception as exc:  # noqa: BLE001 - its site may be gone; the programs go below anyway
            logger.info("unpublishing S3 on %s: %s", post.name, exc)
    return remove_everywhere(sb, boxes, PROGRAMS)


@registry.action("datalake.preserve")
def preserve(ctx: ActionContext, overcloud_id: str, boxes: list[dict[str, Any]], keep: bool = True) -> dict[str, Any]:
    """Copy every object and file into the Construction DataLake, checksums verified, before
    anything is destroyed. Idempotent: a resumed preserve skips what is already there.

    ``keep=False`` is the forced delete (``DELETE ?preserve=false``): nothing is copied, and the
    result names what is lost, so an OverCloud whose Post is gone can still be deleted."""
    sb = ctx.services
    row = sb.records.get(overcloud_id)
    info = (row.info or {}).get("datalake")
    conf = settings_of(sb, overcloud_id)
    if not info:
        return {"skipped": True, "message": "no DataLake was deployed: nothing to preserve"}
    if not keep:
        return {"skipped": True, "lost": {"s3_endpoint": info.get("s3_endpoint"), "filer_endpoint": info.get("filer_endpoint")},
                "message": "deleted with preserve=false: the DataLake's objects and files were not kept "
                           "(no archive was made; an earlier archive of this OverCloud, if any, is untouched)"}
    if not conf["preserve"]:
        return {"skipped": True, "message": "preserve: false was asked at create: the DataLake is not kept"}
    cdl = sb.construction_datalake(timeout=60)
    post, _ = _boxes(boxes)
    access, secret = credentials(sb, overcloud_id)
    cdl_access, cdl_secret = cdl.credentials()
    copy = {"s3": info["s3_endpoint"], "filer": info["filer_endpoint"], "access": access, "secret": secret,
            "cdl_s3": cdl.s3_endpoint, "cdl_access": cdl_access, "cdl_secret": cdl_secret,
            "overcloud_id": overcloud_id, "owner": row.tenant_id, "security": security(sb, overcloud_id)}

    t0 = time.monotonic()
    try:
        manifest = box_op(sb.session(post), "archive", copy, timeout=24 * 3600)
    except Exception as exc:
        raise DataLakeError(f"preserving the DataLake failed, so nothing was destroyed: {exc}") from exc
    secs = time.monotonic() - t0
    n_obj, n_files = manifest["counts"]["objects"], manifest["counts"]["files"]
    total = manifest["bytes"]["total"]
    transfer = manifest.get("transfer", {})
    mb_s = total / 1e6 / secs if secs > 0 else 0.0
    return {
        "archive": overcloud_id,
        "objects": n_obj,
        "files": n_files,
        "bytes": total,
        "seconds": round(secs, 3),
        "transfer": transfer,
        "message": f"preserved {n_obj} objects and {n_files} files ({total} bytes, every MD5 verified) as archive "
        f"{overcloud_id} in {secs:.1f} s ({mb_s:.1f} MB/s; copied {transfer.get('copied', '?')}, "
        f"already there {transfer.get('skipped', '?')})",
    }


@registry.action("datalake.reclaim")
def reclaim(ctx: ActionContext, overcloud_id: str, boxes: list[dict[str, Any]]) -> dict[str, Any]:
    stopped = _stop(ctx.services, boxes)
    return {"message": f"SeaweedFS stopped ({', '.join(stopped) or 'nothing was running'}); volumes go with the boxes"}
