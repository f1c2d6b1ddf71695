"""ssh site definitions: what is accepted, and the message for each thing that is not."""

from __future__ import annotations

import json
import os
from pathlib import Path

import asyncssh
import pytest

from overcloud.underclouds.ssh.sites import (
    SiteConfigError,
    load_ssh_sites,
    load_ssh_sites_file,
    parse_ssh_sites,
    ssh_sites_from_env,
)


@pytest.fixture
def keys(tmp_path):
    """A client key file and two host public keys."""
    client = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "id_ed25519"
    key_file.write_bytes(client.export_private_key())
    key_file.chmod(0o600)
    h1 = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    h2 = asyncssh.generate_private_key("ssh-ed25519")
    return {"key_file": str(key_file), "h1": h1, "h2_fp": h2.get_fingerprint("sha256"), "client": client}


def _host(keys, **over):
    h = {"name": "h1", "address": "10.77.0.11", "key_file": keys["key_file"], "host_key": keys["h1"],
         "lan_address": "10.78.1.11", "box_cidr": "10.79.1.0/24", "cpus": 2, "memory_mb": 2048}
    h.update(over)
    return {k: v for k, v in h.items() if v is not None}


def _sites(*hosts_by_site):
    return [{"name": f"ssh-{chr(ord('a') + i)}", "kind": "ssh", "hosts": list(hosts)} for i, hosts in enumerate(hosts_by_site)]


def _error(data, **kw) -> str:
    with pytest.raises(SiteConfigError) as exc:
        parse_ssh_sites(data, **kw)
    return str(exc.value)


def test_a_full_definition_parses_with_defaults(keys):
    h2 = _host(keys, name="h2", address="host2.example.org", host_key=keys["h2_fp"], lan_address="10.78.1.12",
               box_cidr="10.79.2.0/24", labels={"zone": "z1"})
    del h2["cpus"]
    [site] = parse_ssh_sites([{"name": "local-a", "kind": "local"}, *_sites([_host(keys), h2])])
    assert site.name == "ssh-a" and site.kind == "ssh"
    a, b = site.hosts
    assert (a.name, a.address, a.port, a.user, a.key_file, a.cpus, a.memory_mb) == (
        "h1", "10.77.0.11", 22, "root", Path(keys["key_file"]), 2, 2048)
    assert a.host_key == keys["h1"] and a.box_cidr == "10.79.1.0/24" and a.lan_address == "10.78.1.11"
    assert a.endpoint == "h1 (10.77.0.11:22)"
    assert (b.address, b.host_key, b.cpus, dict(b.labels), b.max_sessions) == ("host2.example.org", keys["h2_fp"], 1, {"zone": "z1"}, 10)


def test_a_host_without_a_name_is_named_by_its_address(keys):
    [site] = parse_ssh_sites(_sites([_host(keys, name=None)]))
    assert site.hosts[0].name == "10.77.0.11" and site.hosts[0].endpoint == "10.77.0.11:22"


def test_a_mapping_with_sites_and_json_text_are_accepted(keys):
    assert parse_ssh_sites({"sites": _sites([_host(keys)])})[0].name == "ssh-a"
    assert load_ssh_sites(json.dumps(_sites([_host(keys)])))[0].hosts[0].name == "h1"
    assert load_ssh_sites("") == []


def test_a_missing_key_file_is_named_by_path(keys, tmp_path):
    missing = tmp_path / "nope" / "id"
    msg = _error(_sites([_host(keys, key_file=str(missing))]))
    assert msg == f"site 'ssh-a', host 'h1': key_file {missing} does not exist"


def test_an_unreadable_key_file_is_named_by_path(keys, tmp_path):
    msg = _error(_sites([_host(keys, key_file=str(tmp_path))]))
    assert f"key_file {tmp_path} is not a regular file" in msg
    if os.geteuid() != 0:  # root reads a 0000 file anyway
        Path(keys["key_file"]).chmod(0)
        assert f"key_file {keys['key_file']} cannot be read" in _error(_sites([_host(keys)]))


def test_a_key_file_that_is_no_key_or_is_encrypted_is_refused_without_its_contents(keys, tmp_path):
    junk = tmp_path / "junk"
    junk.write_text("SECRET-MATERIAL not a key\n")
    msg = _error(_sites([_host(keys, key_file=str(junk))]))
    assert f"key_file {junk} is not an SSH private key" in msg and "SECRET" not in msg
    enc = tmp_path / "enc"
    enc.write_bytes(keys["client"].export_private_key("pkcs8-pem", passphrase="pw"))
    assert f"key_file {enc} is encrypted; use a key without a passphrase" in _error(_sites([_host(keys, key_file=str(enc))]))


def test_a_relative_key_file_is_taken_from_the_sites_files_directory(keys, tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "client").write_bytes(Path(keys["key_file"]).read_bytes())
    sites = conf / "sites.yaml"
    sites.write_text(json.dumps(_sites([_host(keys, key_file="client")])))
    assert load_ssh_sites_file(sites)[0].hosts[0].key_file == conf / "client"
    assert ssh_sites_from_env({"OVERCLOUD_SITES_FILE": str(sites)})[0].hosts[0].key_file == conf / "client"


def test_a_missing_host_key_is_refused_with_what_to_give(keys):
    msg = _error(_sites([_host(keys, host_key=None)]))
    assert "site 'ssh-a', host 'h1': host_key is missing" in msg and "SHA256:" in msg and "never accepted" in msg


@pytest.mark.parametrize("bad", ["SHA256:short", "ssh-ed25519 AAAAnotbase64!", "just words", "MD5:aa:bb"])
def test_a_bad_host_key_is_refused(keys, bad):
    assert "host_key" in _error(_sites([_host(keys, host_key=bad)]))


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("address", "10.77.0.300", "address '10.77.0.300' is not an IP address or DNS name"),
        ("address", "bad host!", "address 'bad host!' is not an IP address or DNS name"),
        ("address", None, "address is missing"),
        ("port", 0, "port must be from 1 to 65535, not 0"),
        ("port", 70000, "port must be from 1 to 65535, not 70000"),
        ("port", "22", "port must be an integer from 1 to 65535, not '22'"),
        ("port", True, "port must be an integer"),
        ("lan_address", "lan", "lan_address 'lan' is not an IPv4 address"),
        ("box_cidr", "10.79.1.1/24", "box_cidr '10.79.1.1/24' is not an IPv4 network"),
        ("box_cidr", "10.79.1.0/30", "box_cidr 10.79.1.0/30 is too small"),
        ("cpus", 0, "cpus must be from 1"),
        ("memory_mb", "lots", "memory_mb must be an integer"),
        ("user", "root; rm", "user 'root; rm' is not a valid user name"),
        ("labels", {"a": 1}, "labels must be a mapping of strings to strings"),
        ("connect_timeout", 0, "connect_timeout must be seconds"),
    ],
)
def test_bad_fields_are_refused_naming_site_host_and_field(keys, field, value, expected):
    host = _host(keys, **{field: value})
    if value is None:
        host.pop(field, None)
    msg = _error(_sites([host]))
    assert msg.startswith("site 'ssh-a', host ") and expected in msg, msg


def test_an_unknown_field_is_named_with_the_known_ones(keys):
    msg = _error(_sites([_host(keys, adress="10.0.0.1")]))
    assert "unknown field(s) adress" in msg and "address" in msg


def test_a_host_listed_twice_is_refused(keys):
    msg = _error(_sites([_host(keys)], [_host(keys, name="h9", lan_address="10.78.2.11", box_cidr="10.79.9.0/24")]))
    assert msg == "site 'ssh-b', host 'h9': 10.77.0.11:22 is listed twice (also site 'ssh-a', host 'h1')"
    msg = _error(_sites([_host(keys), _host(keys, address="10.77.0.12", lan_address="10.78.1.12", box_cidr="10.79.2.0/24")]))
    assert "host name 'h1' is already used by site 'ssh-a', host 'h1'" in msg
    # the same address on another port is another host
    parse_ssh_sites(_sites([_host(keys), _host(keys, name="h2", port=2222, lan_address="10.78.1.12", box_cidr="10.79.2.0/24")]))


def test_overlapping_box_subnets_are_refused_across_sites(keys):
    msg = _error(_sites([_host(keys)], [_host(keys, name="h2", address="10.77.0.12", lan_address="10.78.2.12", box_cidr="10.79.0.0/16")]))
    assert msg == ("site 'ssh-b', host 'h2': box_cidr 10.79.0.0/16 overlaps 10.79.1.0/24 of site 'ssh-a', host 'h1'; "
                   "give each host its own subnet")


def test_sites_are_unique_and_need_hosts(keys):
    assert "site 'ssh-a' is defined twice" in _error(_sites([_host(keys)]) + [{"name": "ssh-a", "kind": "local"}])
    assert "hosts must be a non-empty list" in _error([{"name": "ssh-a", "kind": "ssh", "hosts": []}])
    assert "site #1: name must be" in _error([{"name": "Bad Name", "kind": "ssh"}])
    assert "sites must be a list" in _error("ssh-a")


def test_env_and_file_errors_say_where(keys, tmp_path):
    with pytest.raises(SiteConfigError, match=r"OVERCLOUD_SITES: not valid YAML or JSON at line 1"):
        ssh_sites_from_env({"OVERCLOUD_SITES": "[{"})
    with pytest.raises(SiteConfigError, match=f"sites file {tmp_path}/none.yaml cannot be read"):
        ssh_sites_from_env({"OVERCLOUD_SITES_FILE": str(tmp_path / "none.yaml")})
    bad = tmp_path / "s.yaml"
    bad.write_text(json.dumps(_sites([_host(keys, port=0)])))
    with pytest.raises(SiteConfigError, match=f"sites file {bad}: site 'ssh-a', host 'h1': port"):
        ssh_sites_from_env({"OVERCLOUD_SITES_FILE": str(bad), "OVERCLOUD_SITES": "[]"})
    assert ssh_sites_from_env({"OVERCLOUD_SITES": json.dumps([{"name": "local-a", "kind": "local"}])}) == []
    assert ssh_sites_from_env({}) == []
