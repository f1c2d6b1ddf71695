"""Artifacts staged with the hosts' preparation (what the Tower does with ``weed`` at ``serve``):
``SSHUnderCloud.prepare(artifacts)`` puts each artifact into every host's artifact cache once
the host is prepared; a host whose staging fails is named, stays prepared, and the next need
stages it; callers that ask at once share one transfer."""

from __future__ import annotations

import hashlib
import secrets
import threading

import pytest
from cryptography.fernet import Fernet

from overcloud.identity.secrets import SecretBox
from overcloud.underclouds.base import UnderCloudError
from overcloud.underclouds.ssh.driver import ARTIFACT_CACHE, SSHUnderCloud
from overcloud.underclouds.ssh.sites import load_ssh_sites_file

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]


def _cached(lab, host: str, sha: str) -> str:
    """The SHA-256 of ``<cache>/<sha>`` on the host, read from outside ("" when absent)."""
    r = lab.outside(host, ["sh", "-c", f'f="{ARTIFACT_CACHE}/{sha}"; [ -f "$f" ] && sha256sum "$f" || true'])
    return r.stdout.split()[0] if r.stdout.strip() else ""


def test_prepare_stages_artifacts_and_a_host_that_fails_stages_on_its_next_need(hosts_lab, tmp_path):  # noqa: F811
    data = secrets.token_bytes(3 << 20)
    sha = hashlib.sha256(data).hexdigest()
    art = tmp_path / "tool"
    art.write_bytes(data)
    failing = "och-b2"
    # och-b2's cache cannot be made: a file where its directory would be (the real one set aside)
    aside = f"{ARTIFACT_CACHE}.aside-{sha[:8]}"
    hosts_lab.outside(failing, ["sh", "-c", f'[ ! -e "{ARTIFACT_CACHE}" ] || mv "{ARTIFACT_CACHE}" "{aside}"; '
                                            f': > "{ARTIFACT_CACHE}"'], check=True)
    box = SecretBox(Fernet.generate_key())
    w = SSHUnderCloud(load_ssh_sites_file(hosts_lab.sites_file), state_dir=tmp_path / "ssh",
                      tower_id=secrets.token_hex(8), seal=box.seal, unseal=box.open,
                      overlay_cidr="10.250.0.0/16", bundle_cache=tmp_path / "bundle")
    try:
        with pytest.raises(UnderCloudError) as err:
            w.prepare([(art, sha)])
        text = str(err.value)
        assert failing in text and "artifact cache" in text, text
        assert not any(n in text for n in ("och-a1", "och-a2", "och-b1")), text
        for name in ("och-a1", "och-a2", "och-b1"):
            assert _cached(hosts_lab, name, sha) == sha, name
        assert w.hosts[failing].prepared and w.hosts[failing].problem is None  # staging is not preparation
        assert _cached(hosts_lab, failing, sha) == ""

        # the cache can be made again: the next need stages it, and needs at once share one transfer
        hosts_lab.outside(failing, ["sh", "-c", f'rm -f "{ARTIFACT_CACHE}"; [ ! -e "{aside}" ] || '
                                                f'mv "{aside}" "{ARTIFACT_CACHE}"'], check=True)
        before = w.transport.round_trips()[failing]
        answers, errors = [], []

        def need() -> None:
            try:
                answers.append(w.hosts[failing].stage_artifact(art, sha))
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=need) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and answers == [ARTIFACT_CACHE] * 4, errors
        assert _cached(hosts_lab, failing, sha) == sha
        assert w.transport.round_trips()[failing] - before == 2  # one look, one transfer

        # prepared hosts that hold it already (another Tower staged it): one look each, nothing sent
        for h in w.hosts.values():
            h._staged.clear()
        before = w.transport.round_trips()
        w.prepare([(art, sha)])
        after = w.transport.round_trips()
        assert {n: after[n] - before[n] for n in w.hosts} == {n: 1 for n in w.hosts}
    finally:
        hosts_lab.outside(failing, ["sh", "-c", f'[ -d "{ARTIFACT_CACHE}" ] || rm -f "{ARTIFACT_CACHE}"; '
                                                f'[ ! -e "{aside}" ] || mv "{aside}" "{ARTIFACT_CACHE}"'])
        for name in w.hosts:
            hosts_lab.outside(name, ["rm", "-f", f"{ARTIFACT_CACHE}/{sha}"])
        try:
            w.teardown()
        finally:
            w.close()


def _leftovers(lab, host: str, sha: str) -> str:
    """Temporary files of a transfer of ``sha`` left in the host's cache ("" when none)."""
    r = lab.outside(host, ["sh", "-c", f'ls -A "{ARTIFACT_CACHE}" 2>/dev/null | grep -F ".{sha}" || true'])
    return r.stdout.strip()


def test_artifacts_go_compressed_and_a_corrupted_compressed_stream_is_refused(hosts_lab, tmp_path, caplog):  # noqa: F811
    import logging

    from overcloud.underclouds.ssh import compressed
    from overcloud.underclouds.ssh.driver import STAGE_SCRIPT

    words = [secrets.token_hex(4).encode() for _ in range(64)]
    data = bytearray(secrets.token_bytes(32))
    while len(data) < (8 << 20):  # shrinks as a program does
        data += words[len(data) % 64] + b" "
    data = bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    art = tmp_path / "tool"
    art.write_bytes(data)
    box = SecretBox(Fernet.generate_key())
    w = SSHUnderCloud(load_ssh_sites_file(hosts_lab.sites_file), state_dir=tmp_path / "ssh",
                      tower_id=secrets.token_hex(8), seal=box.seal, unseal=box.open,
                      overlay_cidr="10.250.0.0/16", bundle_cache=tmp_path / "bundle")
    caplog.set_level(logging.INFO, logger="overcloud.underclouds.ssh.driver")
    try:
        w.prepare([(art, sha)])
        form = tmp_path / ".compressed" / f"{sha}.gz"  # made once, beside the artifact
        assert form.is_file() and form.stat().st_size < len(data) // 2
        for name in w.hosts:
            assert _cached(hosts_lab, name, sha) == sha, name
            assert _leftovers(hosts_lab, name, sha) == "", name
        sent = [r.getMessage() for r in caplog.records if "put into the artifact cache" in r.getMessage()]
        from overcloud.underclouds.ssh.transport import _CIPHERS

        conn = w.transport.host("och-a1")._conn  # the cipher negotiated: our first choice the host has
        assert conn.get_extra_info("send_cipher") == _CIPHERS[0], conn.get_extra_info("send_cipher")
        assert len(sent) == len(w.hosts) and all(" gzip)" in m for m in sent), sent

        # a corrupted compressed stream, sent straight to the host's side: refused, nothing left
        h = w.hosts["och-a1"]
        hosts_lab.outside(h.name, ["rm", "-f", f"{ARTIFACT_CACHE}/{sha}"], check=True)
        bad = bytearray(form.read_bytes())
        bad[len(bad) // 2] ^= 0xFF
        r = h.run(["sh", "-c", STAGE_SCRIPT, "sh", ARTIFACT_CACHE, sha, "gz"], input=bytes(bad))
        assert r.returncode in (3, 5) and r.stderr.strip(), (r.returncode, r.stderr)
        assert _cached(hosts_lab, h.name, sha) == "" and _leftovers(hosts_lab, h.name, sha) == ""

        # the Tower's compressed form corrupted on its disk: the host refuses it, the Tower drops
        # it and sends the raw bytes (one look, the refused transfer, the raw one)
        form.write_bytes(bytes(bad))
        h._staged.clear()
        before = w.transport.round_trips()[h.name]
        assert h.stage_artifact(art, sha) == ARTIFACT_CACHE
        assert w.transport.round_trips()[h.name] - before == 3
        assert _cached(hosts_lab, h.name, sha) == sha and _leftovers(hosts_lab, h.name, sha) == ""
        assert not form.exists() and compressed.under_way(sha) is None
    finally:
        for name in w.hosts:
            hosts_lab.outside(name, ["rm", "-f", f"{ARTIFACT_CACHE}/{sha}"])
        try:
            w.teardown()
        finally:
            w.close()
