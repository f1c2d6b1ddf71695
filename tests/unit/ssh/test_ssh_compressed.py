"""Artifacts compressed once on the Tower (underclouds/ssh/compressed.py) and the host's side of a
transfer into the artifact cache (driver.STAGE_SCRIPT), run here with the real sh, gzip and
sha256sum a Debian host has: a good gzip stream lands, a corrupted or truncated one is refused
and leaves nothing, as does a raw stream with the wrong SHA-256."""

from __future__ import annotations

import gzip
import hashlib
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from overcloud.underclouds.ssh import compressed
from overcloud.underclouds.ssh.driver import STAGE_SCRIPT


def _compressible(n: int) -> bytes:
    """Bytes that shrink (a program's do: repeated structure), unique per call."""
    words = [secrets.token_hex(4).encode() for _ in range(64)]
    out = bytearray(secrets.token_bytes(32))
    while len(out) < n:
        out += words[len(out) % 64] + b" "
    return bytes(out[:n])


def _artifact(tmp_path: Path, data: bytes) -> tuple[Path, str]:
    p = tmp_path / "tool"
    p.write_bytes(data)
    return p, hashlib.sha256(data).hexdigest()


def test_compressed_form_is_a_gzip_of_the_artifact_kept_beside_it(tmp_path, monkeypatch):
    monkeypatch.setattr(compressed, "CHUNK", 1 << 20)  # several gzip members
    data = _compressible(5 << 20)
    path, sha = _artifact(tmp_path, data)
    fut = compressed.start(path, sha, tmp_path / "fallback")
    form = fut.result(60)
    assert form == tmp_path / ".compressed" / f"{sha}.gz"
    assert form.stat().st_size < len(data) // 2
    assert gzip.decompress(form.read_bytes()) == data
    assert subprocess.run(["gzip", "-dc"], input=form.read_bytes(), capture_output=True, check=True).stdout == data
    assert compressed.start(path, sha, tmp_path / "fallback") is fut  # once per artifact
    assert compressed.under_way(sha) is fut
    assert not [p for p in form.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    # dropped (a host refused it): made again on the next start
    compressed.forget(sha, form)
    assert not form.exists() and compressed.under_way(sha) is None
    again = compressed.start(path, sha, tmp_path / "fallback")
    assert again is not fut and again.result(60) == form and form.is_file()


def test_found_on_disk_by_a_new_process_without_compressing(tmp_path):
    data = _compressible(1 << 20)
    path, sha = _artifact(tmp_path, data)
    form = compressed.start(path, sha).result(60)
    with compressed._lock:
        compressed._pending.pop(sha)  # as a new Tower process sees it
    assert compressed.cached(path, sha) == form
    fut = compressed.start(path, sha)
    assert fut.done() and fut.result() == form


def test_incompressible_artifact_is_recorded_and_sent_raw(tmp_path):
    path, sha = _artifact(tmp_path, secrets.token_bytes(1 << 20))
    assert compressed.start(path, sha).result(60) is None
    assert (tmp_path / ".compressed" / f"{sha}.gz.none").exists()
    assert not (tmp_path / ".compressed" / f"{sha}.gz").exists()
    assert compressed.cached(path, sha) is False


def test_artifact_changed_since_its_sha_gives_no_form(tmp_path):
    path, _ = _artifact(tmp_path, _compressible(1 << 20))
    other = hashlib.sha256(b"not these bytes " + secrets.token_bytes(8)).hexdigest()
    assert compressed.start(path, other).result(60) is None
    assert not (tmp_path / ".compressed").exists() or not any((tmp_path / ".compressed").iterdir())


def test_fallback_dir_when_beside_the_artifact_is_not_writable(tmp_path):
    data = _compressible(1 << 20)
    path, sha = _artifact(tmp_path, data)
    (tmp_path / ".compressed").write_text("a file where the dir would be")
    form = compressed.start(path, sha, tmp_path / "state").result(60)
    assert form == tmp_path / "state" / f"{sha}.gz"
    assert gzip.decompress(form.read_bytes()) == data


# -- the host's side (STAGE_SCRIPT), with the real sh, gzip, sha256sum ------------------------

def _stage(cache: Path, sha: str, codec: str, stream: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", STAGE_SCRIPT, "sh", str(cache), sha, codec], input=stream,
                          capture_output=True, timeout=60)


def test_host_side_decompresses_while_receiving_and_checks_the_sha(tmp_path):
    data = _compressible(3 << 20)
    sha = hashlib.sha256(data).hexdigest()
    cache = tmp_path / "cache"
    r = _stage(cache, sha, "gz", gzip.compress(data, 1) + gzip.compress(b"", 1))  # two members
    assert r.returncode == 0, r.stderr
    assert (cache / sha).read_bytes() == data and os.access(cache / sha, os.X_OK)
    assert os.listdir(cache) == [sha]
    r = _stage(cache, sha, "raw", data)  # raw still works
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "not-gzip"])
def test_host_side_refuses_a_corrupted_compressed_stream_and_leaves_nothing(tmp_path, damage):
    data = _compressible(2 << 20)
    sha = hashlib.sha256(data).hexdigest()
    z = bytearray(gzip.compress(data, 1))
    if damage == "flip":
        z[len(z) // 2] ^= 0xFF
    elif damage == "truncate":
        z = z[: len(z) // 2]
    elif damage == "garbage":
        z += b"trailing bytes that are no gzip member"
    else:
        z = bytearray(data)
    cache = tmp_path / "cache"
    r = _stage(cache, sha, "gz", bytes(z))
    assert r.returncode in (3, 5), (r.returncode, r.stderr)
    assert r.stderr.strip()  # the reason
    assert not cache.exists() or os.listdir(cache) == []


def test_host_side_refuses_raw_bytes_with_another_sha(tmp_path):
    data = _compressible(1 << 20)
    cache = tmp_path / "cache"
    r = _stage(cache, hashlib.sha256(b"other").hexdigest(), "raw", data)
    assert r.returncode == 3 and b"sha256 of the transferred artifact" in r.stderr
    assert os.listdir(cache) == []


def test_cipher_preference_puts_aes_gcm_first_on_an_aes_cpu_and_keeps_chacha20():
    from overcloud.underclouds.ssh import transport

    ciphers = transport._cipher_preference()
    assert "chacha20-poly1305@openssh.com" in ciphers  # a host without AES-GCM still connects
    assert len(set(ciphers)) == len(ciphers)
    flags = " ".join(line for line in open("/proc/cpuinfo") if line.startswith("flags"))
    if " aes " in f" {flags} ":
        assert ciphers[0] == "aes128-gcm@openssh.com"
    else:
        assert ciphers[0] == "chacha20-poly1305@openssh.com"
