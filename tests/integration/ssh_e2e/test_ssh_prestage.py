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
