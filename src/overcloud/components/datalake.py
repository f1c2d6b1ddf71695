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

Everything that talks to SeaweedFS runs inside a box's namespace (``transport.call``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from overcloud.files import write_private
from overcloud.components.post import find_post
from overcloud.components.programs import remove_everywhere
from overcloud.underclouds.base import Box
from overcloud.workflows.actions import registry

logger = logging.getLogger(__name__)

MASTER, VOLUME, FILER, S3 = 9333, 8080, 8888, 8333
#: Prometheus metrics ports of each SeaweedFS part (scraped by the Fabric's Datastore)
METRICS = {"weed-master": 9324, "weed-volume": 9325, "weed-filer": 9326, "weed-s3": 9327}
BUCKET = "data"
SECRET = "datalake.s3"
SECURITY = "datalake.security"
SECURITY_DIR = "weed-security"
PROGRAMS = ("weed-s3", "weed-filer", "weed-volume", "weed-master")  # stop order


class DataLakeError(RuntimeError):
    pass


def settings_of(tower, overcloud_id: str) -> dict[str, Any]:
    spec = tower.repo.get(overcloud_id).spec or {}
    return {"enabled": True, "preserve": True, "restore_from": None, **(spec.get("datalake") or {})}


def credentials(tower, overcloud_id: str) -> tuple[str, str]:
    """This OverCloud's S3 keys, made and sealed on first use (idempotent across retries)."""
    from overcloud.datalake import seaweed

    if tower.repo.get_secret(overcloud_id, SECRET) is None:
        access, secret = seaweed.new_credentials()
        tower.repo.put_secret(overcloud_id, SECRET, tower.secrets.seal(json.dumps([access, secret])))
    sealed = tower.repo.get_secret(overcloud_id, SECRET)
    access, secret = json.loads(tower.secrets.open(sealed))
    return access, secret


def security(tower, overcloud_id: str) -> dict[str, str]:
    """This OverCloud's SeaweedFS secrets (JWT keys, gRPC CA and certificate), made and sealed
    on first use like the S3 keys (idempotent across retries)."""
    from overcloud.datalake import seaweed

    if tower.repo.get_secret(overcloud_id, SECURITY) is None:
        tower.repo.put_secret(overcloud_id, SECURITY, tower.secrets.seal(json.dumps(seaweed.new_security())))
    return json.loads(tower.secrets.open(tower.repo.get_secret(overcloud_id, SECURITY)))


def filer_auth(tower, overcloud_id: str):
    """Signs the Tower's own filer calls (round trip, preserve, restore)."""
    from overcloud.datalake import clients

    return clients.FilerJwt.of(security(tower, overcloud_id))


def endpoints(post_ip: str) -> dict[str, str]:
    return {
        "master": f"http://{post_ip}:{MASTER}",
        "filer": f"http://{post_ip}:{FILER}",
        "s3": f"http://{post_ip}:{S3}",
    }


def _boxes(boxes: list[dict[str, Any]]) -> tuple[Box, list[Box]]:
    objs = [Box.from_dict(b) for b in boxes]
    return find_post(objs), [b for b in objs if b.role == "cluster"]


@registry.action("datalake.deploy", revert_on_failure=True)
def deploy(ctx, overcloud_id: str, boxes: list[dict[str, Any]], overlay: dict[str, Any]) -> dict[str, Any]:
    from overcloud.datalake import clients, seaweed

    tower = ctx.services
    conf = settings_of(tower, overcloud_id)
    if not conf["enabled"]:
        return {"skipped": True, "message": "DataLake disabled for this OverCloud"}
    t0 = time.monotonic()
    cdl = tower.construction_datalake(timeout=60)
    post, clusters = _boxes(boxes)
    addr = overlay["addresses"]
    post_ip = addr[post.name]
    ep = endpoints(post_ip)
    access, secret = credentials(tower, overcloud_id)
    sec = security(tower, overcloud_id)
    fauth = clients.FilerJwt.of(sec)
    replication = seaweed.replication_for(len(clusters))
    weed = seaweed.weed_binary()
    post_sup = tower.local.supervisor(post)
    post_dir = post_sup.box_dir
    s3_json = post_dir / "s3.json"
    write_private(s3_json, json.dumps(seaweed.s3_config(access, secret)))
    # the master's HTTP API (/dir/assign and /dir/lookup hand out write JWTs) only from the
    # Post itself: the Tower asks from the Post's namespace; no workload runs on the Post
    post_conf = seaweed.write_security(post_dir / SECURITY_DIR, sec, white_list=[post_ip, "127.0.0.1"])
    logs = str(post_sup.log_dir)
    post_net = tower.local.transport(post)

    def run(sup, name: str, argv: list[str]) -> None:
        (sup.box_dir / name).mkdir(exist_ok=True)  # its data dir (the volume of a box's disk)
        # stopped only when the DataLake is reclaimed (after preserve) or reverted: its data is
        # going away with the box, so a graceful stop (volume servers wait 10 s) buys nothing
        sup.add_program(name, cdl.program(weed, argv[1:], sup.box_dir / "artifacts"), startsecs=0, startretries=10,
                        stopsignal="KILL")

    steps: dict[str, float] = {}
    mark = time.monotonic()

    def step(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        steps[name] = round(now - mark, 3)
        mark = now

    step("prepare")
    run(post_sup, "weed-master", seaweed.master_argv(weed, post_ip, MASTER, str(post_dir / "weed-master"), logs, replication,
                                                        metrics_port=METRICS["weed-master"], config_dir=post_conf.parent))
    post_net.call(lambda: seaweed.wait_master_leader(ep["master"], 30))
    step("master leader")
    for box in clusters:
        sup = tower.local.supervisor(box)
        # a cluster box holds only the volume keys: its volume server never signs filer calls
        conf_dir = seaweed.write_security(sup.box_dir / SECURITY_DIR, sec, filer_keys=False).parent
        run(sup, "weed-volume", seaweed.volume_argv(weed, addr[box.name], VOLUME, f"{post_ip}:{MASTER}",
                                                     str(sup.box_dir / "weed-volume"), str(sup.log_dir),
                                                     metrics_port=METRICS["weed-volume"], config_dir=conf_dir))
    run(post_sup, "weed-filer", seaweed.filer_argv(weed, post_ip, FILER, f"{post_ip}:{MASTER}", str(post_dir / "weed-filer"), logs,
                                                      metrics_port=METRICS["weed-filer"], config_dir=post_conf.parent))
    post_net.call(lambda: seaweed.wait_volume_servers(ep["master"], len(clusters), 30))
    step("volume servers registered")
    post_net.call(lambda: seaweed.wait_http(ep["filer"], 30))
    step("filer up")
    run(post_sup, "weed-s3", seaweed.s3_argv(weed, post_ip, S3, f"{post_ip}:{FILER}", str(s3_json), logs,
                                                metrics_port=METRICS["weed-s3"], config_dir=post_conf.parent))
    post_net.call(lambda: seaweed.wait_http(ep["s3"], 30))
    step("s3 up")

    def prepare() -> dict[str, Any]:
        client = clients.s3_client(ep["s3"], access, secret)
        try:
            clients.ensure_buckets(client, (BUCKET,), 30)
        except clients.S3Error as exc:
            raise DataLakeError(f"create bucket {BUCKET}: {exc}") from exc
        if conf["restore_from"]:
            src = clients.s3_client(cdl.s3_endpoint, *cdl.credentials())
            return seaweed.restore(src, conf["restore_from"], client, ep["filer"], filer_auth=fauth)
        return {}

    restored = post_net.call(prepare)
    step("bucket" + (" + restore" if conf["restore_from"] else ""))
    # ready only when a cluster box really writes and reads, over the overlay
    check_box = clusters[0]
    check = tower.local.transport(check_box).call(
        lambda: clients.round_trip_check(ep["s3"], ep["filer"], (access, secret), BUCKET, filer_auth=fauth)
    )
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
        "restored_from": conf["restore_from"],
        "restored": restored,
        "ready_seconds": round(time.monotonic() - t0, 3),
        "checked_from": check_box.name,
    }
    tower.repo.update_info(overcloud_id, datalake=info)
    msg = f"SeaweedFS on {post.name} + {len(clusters)} volume servers, replication {replication}; S3 and filer round trip from {check_box.name} ok"
    if replication == "000":
        msg += " (one cluster: no replication)"
    if conf["restore_from"]:
        msg += f"; restored {restored.get('objects', 0)} objects, {restored.get('files', 0)} files from {conf['restore_from']}"
    return {"message": msg, "replication": replication, "check": check}


@deploy.revert
def deploy_revert(ctx, result, overcloud_id: str, boxes: list[dict[str, Any]], **_: Any) -> None:
    _stop(ctx.services, boxes)


def _stop(tower, boxes: list[dict[str, Any]]) -> list[str]:
    """Remove the SeaweedFS programs from every box, S3 first and master last."""
    return remove_everywhere(tower, boxes, PROGRAMS)


@registry.action("datalake.preserve")
def preserve(ctx, overcloud_id: str, boxes: list[dict[str, Any]], keep: bool = True) -> dict[str, Any]:
    """Copy every object and file into the Construction DataLake, checksums verified, before
    anything is destroyed. Idempotent: a resumed preserve skips what is already there.

    ``keep=False`` is the forced delete (``DELETE ?preserve=false``): nothing is copied, and the
    result names what is lost, so an OverCloud whose Post is gone can still be deleted."""
    from overcloud.datalake import clients, seaweed

    tower = ctx.services
    row = tower.repo.get(overcloud_id)
    info = (row.info or {}).get("datalake")
    conf = settings_of(tower, overcloud_id)
    if not info:
        return {"skipped": True, "message": "no DataLake was deployed: nothing to preserve"}
    if not keep:
        return {"skipped": True, "lost": {"s3_endpoint": info.get("s3_endpoint"), "filer_endpoint": info.get("filer_endpoint")},
                "message": "deleted with preserve=false: the DataLake's objects and files were not kept "
                           "(no archive was made; an earlier archive of this OverCloud, if any, is untouched)"}
    if not conf["preserve"]:
        return {"skipped": True, "message": "preserve: false was asked at create: the DataLake is not kept"}
    cdl = tower.construction_datalake(timeout=60)
    post, _ = _boxes(boxes)
    access, secret = credentials(tower, overcloud_id)

    def copy() -> dict[str, Any]:
        src = clients.s3_client(info["s3_endpoint"], access, secret)
        dst = clients.s3_client(cdl.s3_endpoint, *cdl.credentials())
        return seaweed.archive(src, info["filer_endpoint"], dst, overcloud_id, owner=row.tenant_id,
                               filer_auth=filer_auth(tower, overcloud_id))

    t0 = time.monotonic()
    try:
        manifest = tower.local.transport(post).call(copy)
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
def reclaim(ctx, overcloud_id: str, boxes: list[dict[str, Any]]) -> dict[str, Any]:
    tower = ctx.services
    stopped = _stop(tower, boxes)
    return {"message": f"SeaweedFS stopped ({', '.join(stopped) or 'nothing was running'}); volumes go with the boxes"}
