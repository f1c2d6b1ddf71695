"""The host bundle: deterministic (same inputs, same SHA-256), holding what the host side needs
and nothing it must not carry, and importable by Debian's own python3 with nothing else."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from overcloud.underclouds.ssh import bundle

SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> bundle.Artifact:
    cache = tmp_path_factory.mktemp("bundle-cache")
    t0 = time.perf_counter()
    art = bundle.host_bundle(cache)
    print(f"\nhost bundle: built in {time.perf_counter() - t0:.3f}s, {art.path.stat().st_size / 1e6:.2f} MB, "
          f"{len(zipfile.ZipFile(art.path).namelist())} entries, sha256 {art.sha256[:16]}")
    return art


@pytest.fixture
def snapshot(tmp_path) -> list[tuple[str, Path]]:
    """The bundle's sources copied aside: other work may edit the tree while these tests run."""
    out = []
    for name, path in bundle.sources():
        copy = tmp_path / "snapshot" / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy)
        out.append((name, copy))
    return out


def test_same_inputs_give_the_same_sha(snapshot, tmp_path):
    sha = bundle.write_bundle(snapshot, tmp_path / "a.pyz")
    assert bundle.write_bundle(snapshot, tmp_path / "b.pyz") == sha
    assert (tmp_path / "a.pyz").read_bytes() == (tmp_path / "b.pyz").read_bytes()


def test_the_sha_follows_content_not_timestamps(snapshot, tmp_path):
    """A source touched (same bytes, new mtime) changes the cache key but not the bundle."""
    sha = bundle.write_bundle(snapshot, tmp_path / "a.pyz")
    key = bundle.inputs_key(snapshot)
    agent = dict(snapshot)["overcloud/underclouds/ssh/agent.py"]
    os.utime(agent, (1_000_000_000, 1_000_000_000))
    assert bundle.inputs_key(snapshot) != key
    assert bundle.write_bundle(snapshot, tmp_path / "t.pyz") == sha
    agent.write_text(agent.read_text() + "\n# changed\n")
    assert bundle.write_bundle(snapshot, tmp_path / "c.pyz") != sha


def test_cached_by_inputs(snapshot, tmp_path, monkeypatch):
    monkeypatch.setattr(bundle, "sources", lambda: snapshot)
    first = bundle.host_bundle(tmp_path / "cache")
    mtime = first.path.stat().st_mtime_ns
    again = bundle.host_bundle(tmp_path / "cache")
    assert again == first and first.path.stat().st_mtime_ns == mtime  # not rebuilt
    elsewhere = bundle.host_bundle(tmp_path / "other-cache")
    assert elsewhere.sha256 == first.sha256 and elsewhere.path.parent == tmp_path / "other-cache"
    # new inputs: a new bundle; the cache keeps the `keep` newest
    agent = dict(snapshot)["overcloud/underclouds/ssh/agent.py"]
    shas = {first.sha256}
    for i in range(3):
        agent.write_text(agent.read_text() + f"\n# {i}\n")
        shas.add(bundle.host_bundle(tmp_path / "cache", keep=2).sha256)
    assert len(shas) == 4
    assert len(list((tmp_path / "cache").glob("overcloud-host-*.pyz"))) == 2


def test_the_host_artifacts_are_the_bundle_and_weed_apart(built):
    from overcloud.datalake import seaweed
    from overcloud.files import sha256_file

    arts = bundle.host_artifacts(built.path.parent)
    assert [a.name for a in arts] == [bundle.NAME, "weed"]
    assert arts[1].path == seaweed.weed_binary() and arts[1].sha256 == sha256_file(arts[1].path)
    assert "weed" not in {n.split("/")[-1] for n in zipfile.ZipFile(arts[0].path).namelist()}
    assert arts[0].sha256 == sha256_file(arts[0].path)


def test_entries_are_fixed(built):
    with zipfile.ZipFile(built.path) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names[:2] == ["__main__.py", "BUNDLE.json"] and names[2:] == sorted(names[2:])
    assert {i.date_time for i in infos} == {bundle.ZIP_TIME}
    assert {i.external_attr >> 16 for i in infos} == {0o100644}


def test_holds_what_the_host_needs(built):
    names = set(zipfile.ZipFile(built.path).namelist())
    for needed in (
        "overcloud/underclouds/local/__init__.py",
        "overcloud/underclouds/base.py",
        "overcloud/boxes/supervision.py",
        "overcloud/boxes/cgroups.py",
        "overcloud/boxes/netns.py",
        "overcloud/boxes/health.py",  # run by path in boxes
        "overcloud/boxes/fetch.py",
        "overcloud/fabric/flowagent.py",
        "overcloud/underclouds/ssh/agent.py",
        "pyroute2/__init__.py",
        "supervisor/supervisord.py",
        "supervisor/version.txt",  # read beside supervisor/options.py at import
    ):
        assert needed in names, needed
    metas = sorted(n for n in names if n.endswith(".dist-info/METADATA"))
    assert [m.split("-")[0] for m in metas] == ["pyroute2", "supervisor"]
    # the ssh package's __init__ re-exports the Tower side (YAML sites, asyncssh): the host gets a stub
    stub = zipfile.ZipFile(built.path).read("overcloud/underclouds/ssh/__init__.py").decode()
    assert stub == bundle.HOST_STUBS["overcloud/underclouds/ssh/__init__.py"] and not [ln for ln in stub.splitlines() if ln.startswith(("import ", "from "))]
    manifest = bundle.read_manifest(built.path)
    assert set(manifest["distributions"]) == {"pyroute2", "supervisor"} and manifest["files"] == len(names) - 2


def test_leaves_out_caches_tests_and_compiled_code(built):
    names = zipfile.ZipFile(built.path).namelist()
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    assert not [n for n in names if "/tests/" in n or n.startswith("tests/")]
    assert not [n for n in names if n.endswith(bundle.COMPILED_SUFFIXES)]
    tops = {n.split("/")[0] for n in names}
    assert not tops & set(bundle.TOWER_ONLY)
    assert not [n for n in names if n.split("/")[-1] in ("RECORD", "direct_url.json", "INSTALLER")]


def test_a_compiled_distribution_is_refused(monkeypatch):
    monkeypatch.setitem(bundle.HOST_DISTRIBUTIONS, "psutil", "compiled: must be refused")
    with pytest.raises(bundle.BundleError, match="pure Python.*psutil"):
        bundle.sources()


HOST_SIDE = [
    "overcloud.underclouds.ssh.agent",
    "overcloud.underclouds.local",
    "overcloud.boxes.supervision",
    "overcloud.boxes.cgroups",
    "overcloud.boxes.netns",
    "overcloud.fabric.flowagent",
    "supervisor.supervisord",
    "supervisor.xmlrpc",
    "supervisor.rpcinterface",
    "supervisor.http",
]
#: Standard modules Debian 13's python3.13 no longer has (PEP 594, distutils, imp): the host
#: side must not import them, though this machine's 3.11 still would.
GONE_IN_313 = ["aifc", "asynchat", "asyncore", "audioop", "cgi", "cgitb", "chunk", "crypt", "distutils", "imghdr",
               "imp", "mailcap", "nis", "nntplib", "ossaudiodev", "pipes", "smtpd", "sndhdr", "spwd", "sunau",
               "telnetlib", "uu", "xdrlib", "lib2to3"]


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="needs Debian's python3")
def test_debians_python_imports_the_host_side_from_the_bundle_alone(built, tmp_path):
    """Debian's python3 with no site-packages (-I -S) and no environment unpacks the bundle
    (as a host does), and with only that on its path imports every host-side module: nothing
    host-side needs pydantic, cryptography, SQLAlchemy, FastAPI (they are not in the bundle, so
    an import of one fails here), nor a standard module that Debian 13's Python no longer has."""
    zipped = tmp_path / f"bundle-{built.sha256}.pyz"
    shutil.copyfile(built.path, zipped)
    t0 = time.perf_counter()
    r = subprocess.run([SYSTEM_PYTHON, "-I", "-S", str(zipped), "unpack"], capture_output=True, text=True, env={},
                       cwd=tmp_path, timeout=120)
    print(f"\nunpack (with compileall) {time.perf_counter() - t0:.3f}s")
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    unpacked = tmp_path / f"bundle-{built.sha256}"
    assert json.loads(r.stdout) == {"ok": True, "result": {"path": str(unpacked), "unpacked": True}}
    assert not zipped.exists() and (unpacked / ".installed").read_text().strip() == built.sha256
    assert os.access(unpacked / "bin" / "supervisord", os.X_OK)
    probe = f"""
import importlib, json, sys
sys.path.insert(0, {str(unpacked)!r})
for m in {HOST_SIDE!r}:
    importlib.import_module(m)
outside = sorted({{name.split(".")[0] for name, mod in list(sys.modules.items())
                   if getattr(mod, "__file__", None) and not mod.__file__.startswith({str(unpacked)!r})
                   and not mod.__file__.startswith(sys.base_prefix)}})
loaded = {{name.split(".")[0] for name in sys.modules}}
print(json.dumps({{"outside": outside, "tower_only": sorted(set({list(bundle.TOWER_ONLY)!r}) & loaded),
                  "gone_in_313": sorted(set({GONE_IN_313!r}) & loaded)}}))
"""
    r = subprocess.run([SYSTEM_PYTHON, "-I", "-S", "-c", probe], capture_output=True, text=True, env={},
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == {"outside": [], "tower_only": [], "gone_in_313": []}
    assert sys.executable != SYSTEM_PYTHON  # the venv's python is not the one that ran it


def test_a_build_writes_one_temp_file_and_renames_it_once(tmp_path, monkeypatch):
    """The bundle is named by its SHA-256 before it is written: one temp file, one rename."""
    renames = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((str(a), str(b))), real(a, b))[1])
    art = bundle.host_bundle(tmp_path / "cache")
    assert [b for _, b in renames] == [str(art.path)], renames
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".") and p.name != ".lock") == []
