"""The Connected DataLake on real SeaweedFS: per-OverCloud keys, replication, preserve and restore."""

from __future__ import annotations

import hashlib
import io
import os
import time

import pytest
from botocore.exceptions import ClientError

from kernel import leftovers
from overcloud.boxes.netns import NetnsTransport
from overcloud.datalake import clients

pytestmark = pytest.mark.slow


def create(tower, body, timeout=120) -> dict:
    with tower.client() as c:
        r = c.post("/overclouds", json=body, params={"wait": "true"}, timeout=timeout)
    assert r.status_code in (200, 201), r.text
    d = r.json()
    assert d["status"] == "READY", d["error"]
    return d


def creds(tower, oid) -> dict:
    with tower.client() as c:
        r = c.get(f"/overclouds/{oid}/datalake/credentials")
    assert r.status_code == 200, r.text
    return r.json()


def in_box(box: dict, fn):
    return NetnsTransport(box["handle"]).call(fn)


def s3(cr: dict, secret: str | None = None):
    return clients.s3_client(cr["s3_endpoint"], cr["access_key"], secret or cr["secret_key"])


def delete(tower, oid, timeout=300) -> dict:
    with tower.client() as c:
        assert c.delete(f"/overclouds/{oid}").status_code == 202
    return tower.wait_status(oid, {"DELETED", "FAILED"}, timeout=timeout)


def test_three_cluster_datalake_keys_replication_and_a_lost_volume_server(tower):
    d = create(tower, {"provider": "local", "number": "3", "size": "m1.small"})
    oid, dl = d["overcloud_ID"], d["datalake"]
    assert dl["status"] == "deployed" and dl["replication"] == "001"
    assert dl["s3_endpoint"].startswith(f"http://{d['post']['overlay_address']}:")
    assert {v["box"] for v in dl["volume_servers"]} == {"c1", "c2", "c3"}
    assert dl["buckets"] == ["data"] and "capacity" in dl and "error" not in dl["capacity"]
    assert d["post"]["flavor"]["name"] == "medium"  # the Post carries master, filer and S3
    cr = creds(tower, oid)
    # the keys are shown only by the credentials endpoint: not in the detail, list, workflow or log
    with tower.client() as c:
        texts = [c.get(f"/overclouds/{oid}").text, c.get("/overclouds").text, c.get(f"/overclouds/{oid}/workflow").text,
                 c.get(f"/overclouds/{oid}/events").text]
    for text in texts + [tower.log.read_text()]:
        assert cr["secret_key"] not in text
    db = (tower.state_dir / "overcloud.db").read_bytes()
    assert cr["secret_key"].encode() not in db  # sealed at rest

    c1, c2 = d["clusters"][0], d["clusters"][1]
    blobs = {f"k{i}": os.urandom(1000 + i) for i in range(60)}

    def write():
        client = s3(cr)
        for k, v in blobs.items():
            client.put_object(Bucket="data", Key=k, Body=v)

    in_box(c1, write)

    def refused():
        codes = []
        for client in (s3(cr, secret="x" * 40), clients.s3_client(cr["s3_endpoint"], "AKIAUNKNOWN000000000", "y" * 40)):
            try:
                client.get_object(Bucket="data", Key="k1")
                codes.append(200)
            except ClientError as e:
                codes.append(e.response["ResponseMetadata"]["HTTPStatusCode"])
        import httpx

        codes.append(httpx.get(f"{cr['s3_endpoint']}/data/k1").status_code)  # anonymous
        return codes

    assert in_box(c2, refused) == [403, 403, 403]

    # lose one of three volume servers: every object written before is still there
    sup_sock = f"/run/overcloud/{c1['handle']}.sock"
    from overcloud.boxes.supervision import _rpc_proxy

    _rpc_proxy(sup_sock).supervisor.stopProcess("weed-volume")

    def read_all():
        client = s3(cr)
        return {k: client.get_object(Bucket="data", Key=k)["Body"].read() for k in blobs}

    assert in_box(c2, read_all) == blobs
    _rpc_proxy(sup_sock).supervisor.startProcess("weed-volume")
    with tower.client() as c:
        c.delete(f"/overclouds/{oid}")
    gone = tower.wait_status(oid, {"DELETED", "FAILED"}, timeout=300)
    assert gone["status"] == "DELETED", gone["error"]
    assert leftovers(oid, tower.state_dir) == []
    with tower.client() as c:
        assert c.get(f"/overclouds/{oid}/datalake/credentials").status_code == 404  # keys die with it


def test_one_cluster_has_no_replication_and_says_so(tower):
    d = create(tower, {"sites": [{"undercloud": "local", "clusters": 1}], "datalake": {"preserve": False}})
    assert d["datalake"]["replication"] == "000"
    msg = {t["task"]: t for t in d["workflow"]["workflows"]["create_overcloud"]}["datalake"]["message"]
    assert "no replication" in msg
    gone = delete(tower, d["overcloud_ID"])
    assert gone["status"] == "DELETED"
    pres = {t["task"]: t for t in gone["workflow"]["workflows"]["delete_overcloud"]}["preserve_datalake"]
    assert "not kept" in pres["message"]
    with tower.client() as c:
        ids = [a["archive_id"] for a in c.get("/datalake/archives").json()]
    assert d["overcloud_ID"] not in ids


def test_restore_from_unknown_archive_is_404_and_block_storage_is_refused(tower):
    with tower.client() as c:
        r = c.post("/overclouds", json={"sites": [{"undercloud": "local", "clusters": 1}],
                                        "datalake": {"restore_from": "0" * 32}})
        assert r.status_code == 404 and "no preserved DataLake" in r.json()["message"]
        r = c.post("/overclouds", json={"sites": [{"undercloud": "local", "clusters": 1}],
                                        "datalake": {"block": {"size_gb": 1}}})
        assert r.status_code == 422 and "block storage is not supported" in r.json()["message"]
        assert c.delete(f"/datalake/archives/{'0' * 32}").status_code == 404


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_preserve_on_delete_then_restore_1000_objects_a_100mb_object_and_files(tower):
    d = create(tower, {"provider": "local", "number": "2", "size": "m1.small"})
    oid = d["overcloud_ID"]
    cr = creds(tower, oid)
    small = {f"many/{i:04d}": os.urandom(200 + i % 50) for i in range(1000)}
    big = os.urandom(100 * 1024 * 1024)
    files = {"/notes/readme.txt": b"hello from the filer\n", "/notes/deep/data.bin": os.urandom(5000)}

    def fill():
        from concurrent.futures import ThreadPoolExecutor

        client = s3(cr)
        clients.ensure_bucket(client, "second")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda kv: client.put_object(Bucket="data", Key=kv[0], Body=kv[1]), small.items()))
        client.upload_fileobj(io.BytesIO(big), "second", "big.bin")
        for path, data in files.items():
            clients.filer_put(cr["filer_endpoint"], path, data)

    in_box(d["clusters"][0], fill)
    gone = delete(tower, oid, timeout=600)
    assert gone["status"] == "DELETED", gone["error"]
    pres = {t["task"]: t for t in gone["workflow"]["workflows"]["delete_overcloud"]}["preserve_datalake"]
    assert "preserved 1001 objects and 2 files" in pres["message"], pres
    assert leftovers(oid, tower.state_dir) == []
    with tower.client() as c:
        archives = {a["archive_id"]: a for a in c.get("/datalake/archives").json()}
    assert oid in archives

    d2 = create(tower, {"sites": [{"undercloud": "local", "clusters": 2}], "datalake": {"restore_from": oid}}, timeout=600)
    assert d2["datalake"]["restored_from"] == oid
    cr2 = creds(tower, d2["overcloud_ID"])
    assert cr2["access_key"] != cr["access_key"]

    def read_back():
        client = s3(cr2)
        got = {k: _md5(client.get_object(Bucket="data", Key=k)["Body"].read()) for k in small}
        h = hashlib.md5()
        for chunk in client.get_object(Bucket="second", Key="big.bin")["Body"].iter_chunks(1 << 20):
            h.update(chunk)
        got_files = {p: _md5(clients.filer_get(cr2["filer_endpoint"], p)) for p in files}
        return got, h.hexdigest(), got_files

    got, big_md5, got_files = in_box(d2["clusters"][1], read_back)
    assert got == {k: _md5(v) for k, v in small.items()}
    assert big_md5 == _md5(big)
    assert got_files == {p: _md5(v) for p, v in files.items()}

    with tower.client() as c:
        assert c.delete(f"/datalake/archives/{oid}").status_code == 204
        for _ in range(50):  # the filer's listing of the emptied prefix settles within moments
            if oid not in [a["archive_id"] for a in c.get("/datalake/archives").json()]:
                break
            time.sleep(0.1)
        assert oid not in [a["archive_id"] for a in c.get("/datalake/archives").json()]
        assert c.post("/overclouds", json={"sites": [{"undercloud": "local", "clusters": 1}],
                                           "datalake": {"restore_from": oid}}).status_code == 404
    with tower.client() as c:
        c.delete(f"/overclouds/{d2['overcloud_ID']}")
    assert tower.wait_status(d2["overcloud_ID"], {"DELETED", "FAILED"}, timeout=600)["status"] == "DELETED"
    with tower.client() as c:  # the restored one was preserved under its own id: purge it too
        c.delete(f"/datalake/archives/{d2['overcloud_ID']}")
