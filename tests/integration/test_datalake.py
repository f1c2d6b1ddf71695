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
    fa = filer_auth_of(tower, d)  # the filer answers only signed calls: the OverCloud's own keys

    def fill():
        from concurrent.futures import ThreadPoolExecutor

        client = s3(cr)
        clients.ensure_bucket(client, "second")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda kv: client.put_object(Bucket="data", Key=kv[0], Body=kv[1]), small.items()))
        client.upload_fileobj(io.BytesIO(big), "second", "big.bin")
        for path, data in files.items():
            clients.filer_put(cr["filer_endpoint"], path, data, auth=fa)

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
    fa2 = filer_auth_of(tower, d2)
    assert fa2._read != fa._read  # every OverCloud has its own keys
    assert cr2["access_key"] != cr["access_key"]

    def read_back():
        client = s3(cr2)
        got = {k: _md5(client.get_object(Bucket="data", Key=k)["Body"].read()) for k in small}
        h = hashlib.md5()
        for chunk in client.get_object(Bucket="second", Key="big.bin")["Body"].iter_chunks(1 << 20):
            h.update(chunk)
        got_files = {p: _md5(clients.filer_get(cr2["filer_endpoint"], p, auth=fa2)) for p in files}
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


# --- inside an OverCloud, the DataLake's keys mean something (issue 10.3) --------------------

# Run in a cluster box with `ip netns exec` and the system's python3, as a workload would: the
# box's network namespace, shared with that box's volume server. Prints what each attempt got.
WORKLOAD_PROBE = r"""
import json, socket, ssl, sys, urllib.error, urllib.request
post, me, fid = sys.argv[1], sys.argv[2], sys.argv[3]
def code(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return type(e).__name__
def grpc(host, port, tls):
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            if tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                ctx.set_alpn_protocols(["h2"])
                raw = ctx.wrap_socket(raw)
            raw.sendall(preface)
            got = raw.recv(64)
            return "http2" if got[3:4] == b"\x04" else "closed"
    except ConnectionRefusedError:
        return "nothing listens"
    except (OSError, ssl.SSLError) as e:
        return "refused: " + type(e).__name__
J = {"Accept": "application/json"}
F, V, M, P = f"http://{post}:8888", f"http://{me}:8080/{fid}", f"http://{post}:9333", f"http://{post}:9090"
out = {
    "filer list /": code("GET", F + "/", headers=J),
    "filer list /buckets/": code("GET", F + "/buckets/", headers=J),
    "filer read an object": code("GET", F + "/buckets/data/secret"),
    "filer write": code("PUT", F + "/planted.txt", b"x"),
    "filer delete the bucket": code("DELETE", F + "/buckets/data?recursive=true"),
    "volume read": code("GET", V),
    "volume overwrite": code("POST", V, b"x"),
    "volume delete": code("DELETE", V),
    "master assign": code("GET", M + "/dir/assign"),
    "master lookup": code("GET", M + "/dir/lookup?fileId=" + fid),
    "master grow": code("GET", M + "/vol/grow?count=1"),
    "master delete collection": code("GET", M + "/col/delete?collection=data"),
    "master vacuum": code("GET", M + "/vol/vacuum"),
    "master status": code("GET", M + "/dir/status"),
    "prometheus quit": code("POST", P + "/-/quit"),
    "prometheus reload": code("POST", P + "/-/reload"),
}
for name, host, port in (("master", post, 19333), ("filer", post, 18888), ("s3", post, 18333), ("volume", me, 18080)):
    out[f"{name} grpc plaintext"] = grpc(host, port, False)
    out[f"{name} grpc tls without our certificate"] = grpc(host, port, True)
out["prometheus ready after"] = code("GET", P + "/-/ready")
print(json.dumps(out))
"""


def _box_security(tower, box: dict) -> dict:
    import tomllib

    return tomllib.loads((tower.state_dir / "local" / "boxes" / box["handle"] / "weed-security" / "security.toml").read_text())


def filer_auth_of(tower, d: dict) -> clients.FilerJwt:
    """The filer keys the OverCloud's own parts hold (read as root from the Post's dir): what
    the Tower signs its own filer calls with. Workloads have no such keys."""
    jwt = _box_security(tower, d["post"])["jwt"]["filer_signing"]
    return clients.FilerJwt(jwt["key"], jwt["read"]["key"])


def test_workloads_reach_the_datalake_only_through_s3_with_keys_and_cannot_stop_prometheus(tower):
    import json
    import stat
    import subprocess
    from types import SimpleNamespace

    import httpx
    from towers import local_host

    from overcloud.boxes.supervision import _rpc_proxy
    from overcloud.components import fabric
    from overcloud.underclouds.base import Box, Flavor

    d = create(tower, {"sites": [{"undercloud": "local", "clusters": 2}], "datalake": {"preserve": False}})
    oid, post, c1 = d["overcloud_ID"], d["post"], d["clusters"][0]
    post_ip, c1_ip = post["overlay_address"], c1["overlay_address"]
    cr = creds(tower, oid)
    try:
        # the keys are the OverCloud's own, root's alone; a cluster box holds no filer keys
        for box in (post, c1):
            conf = tower.state_dir / "local" / "boxes" / box["handle"] / "weed-security"
            assert stat.S_IMODE(conf.stat().st_mode) == 0o700
            assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in conf.iterdir()} == {
                "security.toml": 0o600, "ca.pem": 0o600, "cert.pem": 0o600, "key.pem": 0o600}
        assert "filer_signing" not in _box_security(tower, c1)["jwt"]
        assert cr["secret_key"] not in json.dumps(_box_security(tower, post))

        # S3 with keys works from the workload's box
        in_box(c1, lambda: s3(cr).put_object(Bucket="data", Key="secret", Body=b"s" * 4000))
        assert in_box(c1, lambda: s3(cr).get_object(Bucket="data", Key="secret")["Body"].read()) == b"s" * 4000
        # where that object's chunk lives (asked as the Tower does, from the Post, signed)
        fa = filer_auth_of(tower, d)

        def chunk():
            meta = httpx.get(f"http://{post_ip}:8888/buckets/data/secret", params={"metadata": "true"}, auth=fa).json()
            return meta["chunks"][0]["file_id"]

        fid = NetnsTransport(post["handle"]).call(chunk)

        prom = _rpc_proxy(f"/run/overcloud/{post['handle']}.sock").supervisor
        prom_pid = prom.getProcessInfo("prometheus")["pid"]
        probe = subprocess.run(["ip", "netns", "exec", c1["handle"], "/usr/bin/python3", "-I", "-c", WORKLOAD_PROBE,
                                post_ip, c1_ip, fid], capture_output=True, text=True, timeout=120)
        assert probe.returncode == 0, probe.stderr
        got = json.loads(probe.stdout)
        refused = {k: v for k, v in got.items() if "grpc" not in k and "prometheus" not in k}
        assert refused == {k: 401 for k in refused}, got
        for part in ("master", "filer", "s3", "volume"):
            # it listens, but speaks neither plaintext HTTP/2 nor TLS to a peer without our certificate
            assert got[f"{part} grpc plaintext"] == "closed", got
            assert got[f"{part} grpc tls without our certificate"] == "refused: SSLError", got
        assert got["prometheus quit"] == got["prometheus reload"] == 403, got
        assert got["prometheus ready after"] == 200, got
        info = prom.getProcessInfo("prometheus")
        assert info["statename"] == "RUNNING" and info["pid"] == prom_pid  # not stopped, not restarted
        # nothing the workload tried changed the data
        assert in_box(c1, lambda: s3(cr).get_object(Bucket="data", Key="secret")["Body"].read()) == b"s" * 4000

        # the Tower still reloads Prometheus when it regenerates the scrape config: the same
        # apply_config the service controller calls, over the Tower's own LocalHost's sessions, with one
        # extra scrape target (the controller's list of ready workloads, here given directly)
        boxes = [Box(oid, b["name"], b["role"], b["site"], Flavor(**b["flavor"]), b["handle"], b["address"],
                     b["overlay_address"]) for b in (post, *d["clusters"])]
        extra = {"target": f"{c1_ip}:9100", "labels": {"box": "c1", "site": c1["site"], "role": "cluster",
                                                         "service": "probe", "replica": "probe-0"}}
        facade = SimpleNamespace(
            session=local_host(tower.state_dir).session, settings=SimpleNamespace(fabric_scrape_interval=1.0),
            records=SimpleNamespace(get=lambda _id: SimpleNamespace(spec={})),
            services=SimpleNamespace(scrape_targets=lambda _id: [extra]))
        url = fabric.apply_config(facade, oid, boxes, {b.name: b.overlay_address for b in boxes})

        def jobs():
            with tower.client() as c:
                res = c.get(f"/overclouds/{oid}/metrics", params={"query": 'up{job="workloads"}'}).json()["result"]
            return [r for r in res if r["metric"].get("service") == "probe"]

        deadline = time.monotonic() + 20
        while not jobs() and time.monotonic() < deadline:
            time.sleep(0.25)
        assert jobs(), "the regenerated scrape job never appeared"
        assert prom.getProcessInfo("prometheus")["pid"] == prom_pid  # reloaded, not restarted
        assert url == f"http://{post_ip}:9090"
    finally:
        assert delete(tower, oid)["status"] == "DELETED"


# --- the Construction DataLake on the host (issue 10.4) --------------------------------------

# Run as an unprivileged local user (nobody): what it gets from each port of the Tower's store.
LOCAL_USER_PROBE = r"""
import json, socket, sys, urllib.error, urllib.request
def code(method, url, data=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return "refused: " + type(e).__name__
base = int(sys.argv[1])
master, volume, filer, s3 = (f"http://127.0.0.1:{base + i}" for i in range(4))
print(json.dumps({
    "master delete collection": code("GET", master + "/col/delete?collection=overcloud-archives"),
    "master assign": code("GET", master + "/dir/assign"),
    "volume status": code("GET", volume + "/status"),
    "filer list archives": code("GET", filer + "/buckets/overcloud-archives/"),
    "filer delete archives": code("DELETE", filer + "/buckets/overcloud-archives?recursive=true"),
    "filer grpc": code("GET", f"http://127.0.0.1:{base + 2 + 10000}/"),
    "s3 anonymous": code("GET", s3 + "/overcloud-archives"),
}))
"""


def test_construction_datalake_filer_requires_jwt_and_its_dirs_are_roots_alone(tower):
    import json
    import stat
    import subprocess
    import tomllib

    import httpx

    with tower.client() as c:  # the Tower's own S3 use works (and the store is up)
        assert c.get("/datalake/archives", timeout=90).status_code == 200
    cdl = tower.state_dir / "construction"
    base = json.loads((cdl / "ports.json").read_text())["base"]
    filer = f"http://127.0.0.1:{base + 2}"
    for d in (cdl, cdl / "data", cdl / "security"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    for f in (*(cdl / "security").iterdir(), cdl / "security.sealed", cdl / "credentials.sealed"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert b"jwt" not in (cdl / "security.sealed").read_bytes()  # sealed, not plain

    # unsigned, on 127.0.0.1 (as root even): every read, write and delete is refused
    with httpx.Client(timeout=5.0, trust_env=False) as http:
        codes = {
            "list /": http.get(f"{filer}/", headers={"Accept": "application/json"}).status_code,
            "list archives": http.get(f"{filer}/buckets/overcloud-archives/", headers={"Accept": "application/json"}).status_code,
            "read an artifact": http.get(f"{filer}/buckets/overcloud-artifacts/").status_code,
            "write": http.put(f"{filer}/buckets/overcloud-archives/planted/manifest.json", content=b"{}").status_code,
            "delete archives": http.delete(f"{filer}/buckets/overcloud-archives", params={"recursive": "true"}).status_code,
        }
    assert codes == {k: 401 for k in codes}, codes
    # signed with the store's own key the same listing answers: the JWT is the gate
    jwt = tomllib.loads((cdl / "security" / "security.toml").read_text())["jwt"]["filer_signing"]
    signed = httpx.get(f"{filer}/buckets/", headers={"Accept": "application/json"},
                       auth=clients.FilerJwt(jwt["key"], jwt["read"]["key"]))
    assert signed.status_code == 200 and "overcloud-archives" in signed.text

    # another local user gets nothing but S3 (which wants keys)
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-I", "-c",
                            LOCAL_USER_PROBE, str(base)], capture_output=True, text=True, timeout=60, cwd="/")
    assert probe.returncode == 0, probe.stderr
    got = json.loads(probe.stdout)
    assert got.pop("s3 anonymous") == 403, got
    assert all(str(v).startswith("refused") for v in got.values()), got
