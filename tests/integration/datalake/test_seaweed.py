"""overcloud.datalake against real SeaweedFS 4.x on 127.0.0.1 (see conftest.py for the instances).

The tests of this module share instances A, B and C and run in file order: populate A,
archive A->B, archive again (no-op), resume, restore B->C, list/purge, then kill one of
A's volume servers and read everything back.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from weedlab import TIMINGS, rss_mb
from overcloud.datalake import seaweed as sw

pytestmark = pytest.mark.timeout(240)

BUCKETS = ["alpha", "beta", "gamma", "delta"]
N_SMALL = 1000
BIG_KEY = ("alpha", "big/100mb.bin")
BIG_SIZE = 100 * 1024 * 1024
FILES = {f"/home/user{i % 3}/notes/{i}.txt": os.urandom(100 + 997 * i) for i in range(12)}
STATE: dict = {}


# --- pure parts ------------------------------------------------------------------------

def test_argv_and_identities():
    weed = sw.weed_binary()
    assert weed.is_file() and len(sw.weed_sha256(weed)) == 64
    assert sw.weed_sha256(weed) == sw.weed_sha256(str(weed))  # cached, same answer
    assert sw.replication_for(1) == "000" and sw.replication_for(2) == sw.replication_for(5) == "001"
    with pytest.raises(ValueError):
        sw.replication_for(0)
    argv = sw.master_argv(weed, "10.0.0.1", 9333, "/m", "/log", "001", metrics_port=9324)
    assert argv[1:3] == ["-logdir=/log", "master"] and "-telemetry=false" in argv and "-metricsPort=9324" in argv
    argv = sw.s3_argv(weed, "10.0.0.1", 8333, "10.0.0.1:8888", "/s3.json", "/log")
    assert "-port.iceberg=0" in argv and "-port.lance=0" in argv
    assert "-max=0" in sw.volume_argv(weed, "10.0.0.1", 8080, "10.0.0.1:9333", "/d", "/log")
    access, secret = sw.new_credentials()
    assert re.fullmatch(r"AKIA[A-Z0-9]{16}", access) and re.fullmatch(r"[A-Za-z0-9+/]{40}", secret)
    assert sw.new_credentials() != (access, secret)
    ident = sw.s3_config(access, secret)["identities"][0]
    assert ident["name"] == "overcloud" and ident["credentials"] == [{"accessKey": access, "secretKey": secret}]
    assert set(ident["actions"]) == {"Admin", "Read", "Write", "List", "Tagging"}


def test_readiness_timeout_names_what_is_missing():
    with pytest.raises(TimeoutError, match=r"HTTP http://127.0.0.1:1/ not ready after 0.2s"):
        sw.wait_http("http://127.0.0.1:1/", timeout=0.2)


# --- instance A: start, auth, round trip, status -------------------------------------------

def test_start_in_order_and_status(lake_a):
    assert TIMINGS["A.first_put_s"] < 20
    with pytest.raises(TimeoutError, match="3 of .* volume servers|3 volume servers"):
        sw.wait_volume_servers(lake_a.master_url, 3, timeout=0.2)
    status = sw.cluster_status(lake_a.master_url)
    assert len(status["volume_servers"]) == 2
    assert all(s["max"] > 24 for s in status["volume_servers"]), status  # -max=0: slots from free disk
    assert status["volume_slots"]["used"] >= 12  # first-put bucket: 6 volumes x 2 copies
    assert "first-put" in status["collections"]


def test_s3_rejects_wrong_unknown_and_anonymous(lake_a):
    access, secret = lake_a.keys
    sw.s3_client(lake_a.s3_url, access, secret).list_buckets()
    cases = {
        "wrong secret": sw.s3_client(lake_a.s3_url, access, "x" * 40),
        "unknown key": sw.s3_client(lake_a.s3_url, "AKIANOTAREALKEY00000", secret),
    }
    codes = {}
    for label, client in cases.items():
        with pytest.raises(ClientError) as info:
            client.get_object(Bucket="first-put", Key="hello")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403, label
        codes[label] = info.value.response["Error"]["Code"]
    assert codes["wrong secret"] == "SignatureDoesNotMatch"
    assert codes["unknown key"] == "InvalidAccessKeyId"
    import boto3

    anon = boto3.client("s3", endpoint_url=lake_a.s3_url, region_name="us-east-1",
                        config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}))
    with pytest.raises(ClientError) as info:
        anon.get_object(Bucket="first-put", Key="hello")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert httpx.get(f"{lake_a.s3_url}/first-put/hello").status_code == 403


def test_round_trip_check(lake_a):
    timings = sw.round_trip_check(lake_a.s3_url, lake_a.filer_url, lake_a.keys, "probe", filer_auth=lake_a.filer_auth)
    assert {"s3_put_ms", "s3_get_ms", "filer_put_ms", "filer_get_ms", "total_ms"} <= set(timings)
    TIMINGS["A.round_trip_ms"] = timings["total_ms"]
    with pytest.raises(sw.S3Error, match="s3_bucket failed"):
        sw.round_trip_check(lake_a.s3_url, lake_a.filer_url, (lake_a.keys[0], "wrong" * 8), "probe", filer_auth=lake_a.filer_auth)


def test_populate_a(lake_a):
    client = sw.s3_client(lake_a.s3_url, *lake_a.keys)
    for bucket in BUCKETS:
        sw.ensure_bucket(client, bucket)
    assert sw.ensure_bucket(client, BUCKETS[0]) is False
    expected = {}

    def put(i):
        bucket, key = BUCKETS[i % len(BUCKETS)], f"dir{i % 7}/obj-{i:04d}.bin"
        body = os.urandom(200 + (i * 37) % 3000)
        client.put_object(Bucket=bucket, Key=key, Body=body)
        return (bucket, key), hashlib.md5(body).hexdigest(), len(body)

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        for ident, md5, size in pool.map(put, range(N_SMALL)):
            expected[ident] = (md5, size)
    TIMINGS["A.put_small_objects_per_s"] = round(N_SMALL / (time.monotonic() - t0))

    with tempfile.TemporaryFile() as fh:
        md5 = hashlib.md5()
        for _ in range(BIG_SIZE // (4 << 20)):
            block = os.urandom(4 << 20)
            md5.update(block)
            fh.write(block)
        fh.seek(0)
        t0 = time.monotonic()
        client.upload_fileobj(fh, *BIG_KEY)  # multipart: its ETag is not an MD5
        TIMINGS["A.put_100mb_MB_per_s"] = round(100 / (time.monotonic() - t0), 1)
    expected[BIG_KEY] = (md5.hexdigest(), BIG_SIZE)
    expected[("first-put", "hello")] = (hashlib.md5(b"hello").hexdigest(), 5)
    for path, body in FILES.items():
        sw.filer_put(lake_a.filer_url, path, body, auth=lake_a.filer_auth)
    assert sw.filer_get(lake_a.filer_url, "/home/user1/notes/1.txt", auth=lake_a.filer_auth) == FILES["/home/user1/notes/1.txt"]
    walked = dict(sw.filer_walk(lake_a.filer_url, auth=lake_a.filer_auth))
    assert walked == {p: len(b) for p, b in FILES.items()}  # /buckets, /etc, /topics excluded
    assert any(p.startswith("/buckets/") for p, _ in sw.filer_walk(lake_a.filer_url, exclude=(), auth=lake_a.filer_auth))
    STATE["expected"] = expected


# --- archive A -> B, restore B -> C --------------------------------------------------------

def test_archive_a_to_b(lake_a, lake_b):
    src = sw.s3_client(lake_a.s3_url, *lake_a.keys)
    dst = sw.s3_client(lake_b.s3_url, *lake_b.keys)
    manifest = sw.archive(src, lake_a.filer_url, dst, "oc-1", "owner:alice", filer_auth=lake_a.filer_auth)
    expected = STATE["expected"]
    objects = {(o["bucket"], o["key"]): (o["md5"], o["size"]) for o in manifest["objects"]}
    assert objects == expected
    assert {f["path"]: f["md5"] for f in manifest["files"]} == {p: hashlib.md5(b).hexdigest() for p, b in FILES.items()}
    assert manifest["counts"] == {"buckets": len(BUCKETS) + 2, "objects": len(expected), "files": len(FILES)}
    assert manifest["bytes"]["objects"] == sum(s for _, s in expected.values())
    assert manifest["bytes"]["total"] == manifest["bytes"]["objects"] + sum(map(len, FILES.values()))
    assert manifest["transfer"]["copied"] == len(expected) + len(FILES) and manifest["transfer"]["skipped"] == 0
    stored = sw.read_manifest(dst, "oc-1")
    assert stored["owner"] == "owner:alice" and "transfer" not in stored and stored["objects"] == manifest["objects"]
    big = dst.head_object(Bucket="overcloud-archives", Key="oc-1/objects/alpha/big/100mb.bin")
    assert big["ETag"].strip('"') == expected[BIG_KEY][0]  # stored single-part: ETag is the MD5
    secs = manifest["transfer"]["seconds"]
    TIMINGS["archive.seconds"] = secs
    TIMINGS["archive.MB_per_s"] = round(manifest["bytes"]["total"] / secs / 1e6, 1)
    TIMINGS["archive.items_per_s"] = round((len(expected) + len(FILES)) / secs)


def test_archive_again_is_a_noop_and_resumes(lake_a, lake_b):
    src = sw.s3_client(lake_a.s3_url, *lake_a.keys)
    dst = sw.s3_client(lake_b.s3_url, *lake_b.keys)
    again = sw.archive(src, lake_a.filer_url, dst, "oc-1", "owner:alice", filer_auth=lake_a.filer_auth)
    assert again["transfer"]["copied"] == 0 and again["transfer"]["skipped"] == len(STATE["expected"]) + len(FILES)
    TIMINGS["archive_noop.seconds"] = again["transfer"]["seconds"]
    # a preserve that crashed: no manifest yet, a few copies missing -> only those are copied
    dst.delete_object(Bucket="overcloud-archives", Key="oc-1/manifest.json")
    dst.delete_object(Bucket="overcloud-archives", Key="oc-1/objects/beta/dir1/obj-0001.bin")
    dst.delete_object(Bucket="overcloud-archives", Key="oc-1/files/home/user0/notes/0.txt")
    assert sw.list_archives(dst) == [{"archive_id": "oc-1", "complete": False}]
    resumed = sw.archive(src, lake_a.filer_url, dst, "oc-1", "owner:alice", filer_auth=lake_a.filer_auth)
    assert resumed["transfer"]["copied"] == 2
    assert resumed["objects"] == again["objects"] and resumed["files"] == again["files"]


def test_restore_b_to_c(lake_b, lake_c):
    archive_store = sw.s3_client(lake_b.s3_url, *lake_b.keys)
    dst = sw.s3_client(lake_c.s3_url, *lake_c.keys)
    result = sw.restore(archive_store, "oc-1", dst, lake_c.filer_url, filer_auth=lake_c.filer_auth)
    expected = STATE["expected"]
    assert result["objects"] == len(expected) and result["files"] == len(FILES)
    assert result["copied"] == len(expected) + len(FILES) - 1  # first-put/hello already in C
    secs = result["seconds"]
    TIMINGS["restore.seconds"] = secs
    TIMINGS["restore.MB_per_s"] = round(result["bytes"] / secs / 1e6, 1)
    TIMINGS["restore.items_per_s"] = round((len(expected) + len(FILES)) / secs)
    for (bucket, key), (md5, size) in expected.items():  # every md5 checked again, independently
        head = dst.head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == size
        if (bucket, key) != BIG_KEY:
            assert head["ETag"].strip('"') == md5
    body = dst.get_object(Bucket=BIG_KEY[0], Key=BIG_KEY[1])["Body"]
    digest = hashlib.md5()
    for block in body.iter_chunks(1 << 20):
        digest.update(block)
    assert digest.hexdigest() == expected[BIG_KEY][0]
    assert {p: sw.filer_get(lake_c.filer_url, p, auth=lake_c.filer_auth) for p in FILES} == FILES
    assert sw.restore(archive_store, "oc-1", dst, lake_c.filer_url, filer_auth=lake_c.filer_auth)["skipped"] >= len(expected)


def test_restore_detects_a_corrupted_archive_and_archive_repairs_it(lake_a, lake_b, lake_c):
    src = sw.s3_client(lake_a.s3_url, *lake_a.keys)
    store = sw.s3_client(lake_b.s3_url, *lake_b.keys)
    dst = sw.s3_client(lake_c.s3_url, *lake_c.keys)
    store.put_object(Bucket="overcloud-archives", Key="oc-1/objects/beta/dir1/obj-0001.bin", Body=b"tampered")
    dst.delete_object(Bucket="beta", Key="dir1/obj-0001.bin")
    with pytest.raises(sw.ArchiveError) as info:
        sw.restore(store, "oc-1", dst, lake_c.filer_url, filer_auth=lake_c.filer_auth)
    assert [label for label, _ in info.value.failures] == ["s3://beta/dir1/obj-0001.bin"]
    assert "VerificationError" in info.value.failures[0][1]
    # the tampered copy lost its metadata, so archiving again copies exactly that one
    assert sw.archive(src, lake_a.filer_url, store, "oc-1", "owner:alice", filer_auth=lake_a.filer_auth)["transfer"]["copied"] == 1
    assert sw.restore(store, "oc-1", dst, lake_c.filer_url, filer_auth=lake_c.filer_auth)["copied"] == 1


def test_list_and_purge(lake_b):
    store = sw.s3_client(lake_b.s3_url, *lake_b.keys)
    [summary] = sw.list_archives(store)
    assert summary["archive_id"] == "oc-1" and summary["complete"] and summary["owner"] == "owner:alice"
    assert summary["counts"]["objects"] == len(STATE["expected"])
    assert sw.list_archives(store, bucket="no-such-bucket") == []
    with pytest.raises(sw.ArchiveError, match="no manifest"):
        sw.read_manifest(store, "oc-404")
    deleted = sw.purge_archive(store, "oc-1")
    assert deleted == len(STATE["expected"]) + len(FILES) + 1
    assert sw.list_archives(store) == []
    assert sw.purge_archive(store, "oc-1") == 0
    TIMINGS["B.cluster_used_bytes_after_purge"] = sw.cluster_status(lake_b.master_url)["used_bytes"]


# --- memory, then the loss of a volume server -------------------------------------------

def test_memory_per_process(lake_a, lake_b, lake_c):
    for inst in (lake_a, lake_b):
        for role, proc in inst.procs.items():
            TIMINGS[f"{inst.name}.rss_mb.{role}"] = round(rss_mb(proc.pid))
    assert TIMINGS["B.rss_mb.server"] > 0


def test_kill_one_volume_server_loses_nothing(lake_a):
    client = sw.s3_client(lake_a.s3_url, *lake_a.keys)
    lake_a.kill("volume1")
    t0 = time.monotonic()

    def check(item):
        (bucket, key), (md5, size) = item
        digest, got = hashlib.md5(), 0
        for block in client.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(1 << 20):
            digest.update(block)
            got += len(block)
        return (bucket, key) if (digest.hexdigest(), got) != (md5, size) else None

    with ThreadPoolExecutor(8) as pool:
        bad = [r for r in pool.map(check, STATE["expected"].items()) if r]
    assert bad == []
    assert {p: sw.filer_get(lake_a.filer_url, p, auth=lake_a.filer_auth) for p in FILES} == FILES
    TIMINGS["A.read_all_after_kill_s"] = round(time.monotonic() - t0, 2)
