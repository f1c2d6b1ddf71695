"""SeaweedFS's own access control (security.toml), on real instances on 127.0.0.1.

A: master + 2 volume servers + filer + s3 (an OverCloud's DataLake); B: ``weed server``
(the Construction DataLake's shape). Each instance has its own keys and CA (weedlab.py);
its master's HTTP API is white-listed for 127.0.0.1, so requests from 127.0.0.2 stand for
"any other address". With the old argv builders (no ``-config_dir``) every refusal below
was a 200.
"""

from __future__ import annotations

import socket
import ssl
import tomllib

import httpx
import pytest

from overcloud.datalake import clients
from overcloud.datalake import seaweed as sw

pytestmark = pytest.mark.root

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def _other_address() -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=5.0, trust_env=False)


def test_security_toml_holds_every_key_and_the_pem_paths(tmp_path):
    sec = sw.new_security()
    assert sec != sw.new_security() and len({sec[k] for k in sec}) == len(sec)
    path = sw.write_security(tmp_path / "conf", sec, white_list=["10.1.0.1", "127.0.0.1"])
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in path.parent.iterdir()} == {
        "security.toml": 0o600, "ca.pem": 0o600, "cert.pem": 0o600, "key.pem": 0o600}
    doc = tomllib.loads(path.read_text())
    assert doc["jwt"]["signing"]["key"] == sec["jwt_signing"] and doc["jwt"]["signing"]["read"]["key"] == sec["jwt_signing_read"]
    assert doc["jwt"]["filer_signing"]["key"] == sec["jwt_filer"]
    assert doc["jwt"]["filer_signing"]["read"]["key"] == sec["jwt_filer_read"]
    assert doc["guard"]["white_list"] == "10.1.0.1,127.0.0.1" and doc["access"]["ui"] is False
    assert doc["grpc"]["ca"] == str(path.parent / "ca.pem")
    for part in ("master", "volume", "filer", "s3", "client"):
        assert doc["grpc"][part] == {"cert": str(path.parent / "cert.pem"), "key": str(path.parent / "key.pem")}
    # a volume-server-only box does not get the filer's keys
    volume_only = tomllib.loads(sw.security_toml(sec, tmp_path, filer_keys=False))
    assert "filer_signing" not in volume_only["jwt"] and sec["jwt_filer"] not in sw.security_toml(sec, tmp_path, filer_keys=False)
    weed = sw.weed_binary()
    argv = sw.master_argv(weed, "10.0.0.1", 9333, "/m", "/log", "001", config_dir="/c")
    assert argv[1:4] == ["-config_dir=/c", "-logdir=/log", "master"]
    assert sw.server_argv(weed, "10.0.0.1", "/d", "/log", master_port=1, volume_port=2, filer_port=3, s3_port=4,
                          s3_config_path="/s", config_dir="/c")[1] == "-config_dir=/c"
    assert "keys hidden" in repr(sw.FilerJwt.of(sec)) and sec["jwt_filer"] not in repr(sw.FilerJwt.of(sec))


@pytest.mark.parametrize("which", ["lake_a", "lake_b"])
def test_filer_refuses_unsigned_list_read_write_delete(which, request):
    lake = request.getfixturevalue(which)
    path = f"/secret/{which}.txt"
    sw.filer_put(lake.filer_url, path, b"kept", auth=lake.filer_auth)
    with httpx.Client(timeout=5.0, trust_env=False) as http:
        listing = {"Accept": "application/json"}
        codes = {
            "list /": http.get(f"{lake.filer_url}/", headers=listing).status_code,
            "list /buckets/": http.get(f"{lake.filer_url}/buckets/", headers=listing).status_code,
            "read": http.get(lake.filer_url + path).status_code,
            "metadata": http.get(lake.filer_url + path, params={"metadata": "true"}).status_code,
            "write": http.put(lake.filer_url + path, content=b"changed").status_code,
            "new file": http.post(f"{lake.filer_url}/secret/new.txt", content=b"x").status_code,
            "delete": http.delete(lake.filer_url + path).status_code,
            "delete dir": http.delete(f"{lake.filer_url}/secret", params={"recursive": "true"}).status_code,
            # a token signed with another key is no better than none
            "forged": http.get(lake.filer_url + path,
                               headers={"Authorization": f"Bearer {clients.sign_jwt('not-the-key')}"}).status_code,
        }
    assert codes == {k: 401 for k in codes}, codes
    assert sw.filer_get(lake.filer_url, path, auth=lake.filer_auth) == b"kept"
    assert dict(sw.filer_walk(lake.filer_url, "/secret", auth=lake.filer_auth)) == {path: 4}


def test_volume_server_refuses_unsigned_read_write_delete(lake_a):
    client = sw.s3_client(lake_a.s3_url, *lake_a.keys)
    sw.ensure_buckets(client, ["vol-check"])
    client.put_object(Bucket="vol-check", Key="k", Body=b"v" * 5000)
    meta = httpx.get(f"{lake_a.filer_url}/buckets/vol-check/k", params={"metadata": "true"},
                     auth=lake_a.filer_auth).raise_for_status().json()
    fid = meta["chunks"][0]["file_id"]
    where = httpx.get(f"{lake_a.master_url}/dir/lookup", params={"volumeId": fid.split(",")[0]}).raise_for_status().json()
    with httpx.Client(timeout=5.0, trust_env=False) as http:
        codes = {}
        for loc in where["locations"]:  # both copies (replication 001)
            url = f"http://{loc['url']}/{fid}"
            codes[loc["url"]] = (http.get(url).status_code, http.post(url, files={"file": ("k", b"x")}).status_code,
                                 http.delete(url).status_code)
    assert len(codes) == 2 and set(codes.values()) == {(401, 401, 401)}, codes
    assert client.get_object(Bucket="vol-check", Key="k")["Body"].read() == b"v" * 5000


def test_master_http_answers_only_its_white_list(lake_a):
    guarded = ["/dir/assign", "/dir/lookup?volumeId=1", "/dir/status", "/vol/status", "/vol/grow?count=1",
               "/vol/vacuum", "/col/delete?collection=data", "/submit"]
    with _other_address() as http:
        codes = {p: http.get(lake_a.master_url + p).status_code for p in guarded}
        open_info = http.get(f"{lake_a.master_url}/cluster/status").status_code
    assert codes == {p: 401 for p in guarded}, codes
    assert open_info == 200  # read-only, documented as open
    # the white-listed address gets a write JWT with its assignment
    assigned = httpx.get(f"{lake_a.master_url}/dir/assign")
    assert assigned.status_code == 200 and assigned.headers["Authorization"].startswith("Bearer ")
    # and that JWT is for that file only: another fid is refused with it
    fid, url = assigned.json()["fid"], assigned.json()["url"]
    other = fid.split(",")[0] + ",01" + fid.split(",")[1][2:]
    r = httpx.post(f"http://{url}/{other}", files={"file": ("x", b"x")}, headers={"Authorization": assigned.headers["Authorization"]})
    assert r.status_code == 401


def _grpc_answer(port: int, context: ssl.SSLContext | None) -> bytes | str:
    """What a gRPC port answers an HTTP/2 preface with: bytes, or the TLS error's name."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            conn = context.wrap_socket(raw) if context else raw
            conn.sendall(H2_PREFACE)
            return conn.recv(64)
        except (ssl.SSLError, OSError) as exc:
            return type(exc).__name__ + ": " + str(exc)


@pytest.mark.parametrize("which", ["lake_a", "lake_b"])
def test_grpc_serves_only_peers_with_the_store_certificate(which, request, tmp_path):
    lake = request.getfixturevalue(which)
    ports = ({"master": lake.master_port, "filer": lake.filer_port, "volume": lake.volume_ports[0]} if which == "lake_a"
             else {"master": lake.master_port, "filer": lake.filer_port, "volume": lake.volume_port})
    no_cert = ssl.create_default_context()
    no_cert.check_hostname, no_cert.verify_mode = False, ssl.CERT_NONE
    no_cert.set_alpn_protocols(["h2"])
    ours = ssl.create_default_context(cafile=str(lake.config_dir / "ca.pem"))
    ours.check_hostname = False
    ours.load_cert_chain(lake.config_dir / "cert.pem", lake.config_dir / "key.pem")
    ours.set_alpn_protocols(["h2"])
    for part, http_port in ports.items():
        port = http_port + 10000
        plain = _grpc_answer(port, None)
        assert not (isinstance(plain, bytes) and plain[3:4] == b"\x04"), f"{part} gRPC answered plaintext HTTP/2"
        refused = _grpc_answer(port, no_cert)
        assert isinstance(refused, str) and "CERTIFICATE_REQUIRED" in refused.upper(), (part, refused)
        # another CA's certificate is refused too
        other = sw.new_security()
        for name in ("cert", "key"):
            (tmp_path / f"{name}.pem").write_text(other[f"{name}_pem"])
        stranger = ssl.create_default_context()
        stranger.check_hostname, stranger.verify_mode = False, ssl.CERT_NONE
        stranger.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
        stranger.set_alpn_protocols(["h2"])
        assert isinstance(_grpc_answer(port, stranger), str), f"{part} accepted another CA's certificate"
        # the store's own certificate gets an HTTP/2 SETTINGS frame back: gRPC is there
        answer = _grpc_answer(port, ours)
        assert isinstance(answer, bytes) and answer[3:4] == b"\x04", (part, answer)
