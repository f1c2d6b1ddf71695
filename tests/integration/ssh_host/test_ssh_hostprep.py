"""hostprep against a real host (this machine, through a local runner in place of SSH): a host
lacking anything is refused with ALL of it listed; the bundle is installed once, checked by
SHA-256, and a second call transfers nothing; bundles no Tower uses are removed, used ones kept.
Touches no network or kernel state: the host root is a temporary dir."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from overcloud.underclouds.ssh import bundle, hostprep

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


def tower() -> str:
    return secrets.token_hex(8)


def kernel_wireguard() -> bool:
    """Whether this kernel makes WireGuard links (asked here independently of hostprep)."""
    name = f"ocwgt{os.getpid() % 100000}"
    if subprocess.run(["ip", "link", "add", name, "type", "wireguard"], capture_output=True).returncode != 0:
        return False
    subprocess.run(["ip", "link", "del", name], capture_output=True)
    return True


def test_this_machine_passes_the_check(runner):
    facts = hostprep.check_host(runner, "this-machine")
    assert facts.os_id == "debian" and int(facts.debian_version) >= 12 and facts.python >= "3.11"
    # this kernel has no WireGuard (FACTS.md): wireguard-go is then required too, and is installed here
    assert facts.wireguard_kernel is kernel_wireguard()
    assert not [ln for ln in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
                if ": ocwgp" in ln]  # the probe link is gone


def test_without_kernel_wireguard_wireguard_go_is_required(tmp_path, make_runner):
    """This kernel makes no WireGuard link (FACTS.md); with wireguard-go hidden from dpkg (a private mount
    namespace showing an empty status database), the refusal names it with the rest."""
    status = tmp_path / "status"
    status.write_text("")
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              f'mount --bind {status} /var/lib/dpkg/status && exec "$@"', "sh"]
    with pytest.raises(hostprep.HostRefused) as info:
        hostprep.check_host(make_runner(tmp_path, prefix), "bare-host", packages={"iproute2": "x"})
    if kernel_wireguard():
        assert info.value.problems == ["missing Debian packages: iproute2 (apt-get install iproute2; iproute2: x)"]
        return
    assert info.value.problems == [
        "missing Debian packages: iproute2, wireguard-go (apt-get install iproute2 wireguard-go; "
        "iproute2: x; wireguard-go: WireGuard in userspace where the kernel has none)"]


def test_a_host_missing_packages_is_refused_with_all_of_them(runner):
    wanted = {
        "iproute2": "present on this machine",
        "overcloud-no-such-package-a": "test: does not exist",
        "overcloud-no-such-package-b": "test: does not exist either",
    }
    with pytest.raises(hostprep.HostRefused) as info:
        hostprep.check_host(runner, "test-host", packages=wanted)
    msg = str(info.value)
    print(f"\n{msg}")
    assert msg.startswith("host test-host refused: missing Debian packages: overcloud-no-such-package-a, overcloud-no-such-package-b")
    assert "apt-get install overcloud-no-such-package-a overcloud-no-such-package-b" in msg
    assert "iproute2" not in msg
    assert len(info.value.problems) == 1


def test_every_problem_is_listed_at_once(tmp_path, make_runner):
    """A host that is not Debian, with an old python3 and missing packages: one refusal names
    all three (os-release and python3 replaced in a private mount namespace)."""
    fake_release = tmp_path / "os-release"
    fake_release.write_text('ID=ubuntu\nVERSION_ID="22.04"\n')
    fake_python = tmp_path / "python3"
    fake_python.write_text("#!/bin/sh\necho python=3.9.2\n")
    fake_python.chmod(0o755)
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              f'mount --bind {fake_release} /etc/os-release && mount --bind {fake_python} {hostprep.HOST_PYTHON} && exec "$@"',
              "sh"]
    with pytest.raises(hostprep.HostRefused) as info:
        hostprep.check_host(make_runner(tmp_path, prefix), "odd-host",
                            packages={"iproute2": "x", "overcloud-no-such-package": "y"})
    problems = info.value.problems
    assert problems[0] == "not Debian 12 or later (os-release says ubuntu 22.04)"
    assert problems[1] == "/usr/bin/python3 is 3.9.2, at least 3.11 is needed"
    assert problems[2].startswith("missing Debian packages: overcloud-no-such-package (apt-get install")
    assert open("/etc/os-release").read().find("ubuntu") < 0  # the real one untouched


def test_install_is_idempotent_and_checked(artifact, runner, tmp_path):
    root = tmp_path / "host"
    t = tower()
    first = hostprep.install_bundle(runner, artifact.path, artifact.sha256, tower_id=t, root=str(root))
    print(f"\ninstall (transfer, check, unpack, compile): {first.seconds:.3f}s in {first.round_trips} round trips")
    assert first.transferred and first.round_trips == 3
    target = Path(first.path)
    assert target == root / f"bundle-{artifact.sha256}" and (target / ".installed").read_text().strip() == artifact.sha256
    assert {p.name for p in root.iterdir()} == {".lock", t, target.name}  # no zip, no upload left
    assert (root / t / "bundle").read_text().strip() == artifact.sha256
    before = {p: p.stat().st_mtime_ns for p in target.rglob("*")}
    runner.calls.clear()
    second = hostprep.install_bundle(runner, artifact.path, artifact.sha256, tower_id=t, root=str(root))
    print(f"install again: {second.seconds:.3f}s in {second.round_trips} round trip")
    assert not second.transferred and second.round_trips == 1 and second.path == first.path
    assert all("cat >" not in " ".join(c) for c in runner.calls)  # nothing sent
    assert {p: p.stat().st_mtime_ns for p in target.rglob("*")} == before


def test_a_corrupted_transfer_is_refused_and_leaves_nothing(artifact, runner, tmp_path):
    root = tmp_path / "host"

    def corrupting(argv, input=None, **kw):
        if input:
            input = input[:100] + bytes([input[100] ^ 1]) + input[101:]
        return runner(argv, input=input, **kw)

    with pytest.raises(hostprep.HostPrepError, match=f"transferring the bundle failed .*expected {artifact.sha256}"):
        hostprep.install_bundle(corrupting, artifact.path, artifact.sha256, tower_id=tower(), root=str(root))
    assert not [p for p in root.iterdir() if p.name != ".lock"]


def test_what_a_killed_install_left_is_cleaned_up(artifact, runner, tmp_path):
    """An upload or an unpack killed midway (the Tower or the connection gone) leaves a
    temporary file or dir named by its pid; the next install removes it once that pid is gone."""
    root = tmp_path / "host"
    root.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    upload = root / f".upload-{artifact.sha256}.{dead.pid}"
    upload.write_bytes(artifact.path.read_bytes()[:1000])
    unpacking = root / f".bundle-{artifact.sha256}.{dead.pid}"
    (unpacking / "overcloud").mkdir(parents=True)
    half = root / f"bundle-{artifact.sha256}.pyz"
    half.write_bytes(artifact.path.read_bytes()[:1000])  # transferred in part, never checked
    # another Tower's zip, uploaded a moment ago and waiting for its unpack: left alone; an old one is not
    in_flight = root / f"bundle-{'e' * 64}.pyz"
    in_flight.write_bytes(b"zip")
    forgotten = root / f"bundle-{'f' * 64}.pyz"
    forgotten.write_bytes(b"zip")
    os.utime(forgotten, (time.time() - 7200, time.time() - 7200))
    done = hostprep.install_bundle(runner, artifact.path, artifact.sha256, tower_id=tower(), root=str(root))
    assert done.transferred and set(done.removed) == {upload.name, unpacking.name, forgotten.name}
    assert {p.name for p in root.iterdir() if p.name.startswith((".upload", ".bundle", "bundle"))} == {
        f"bundle-{artifact.sha256}", in_flight.name}


def _other_bundle(tmp_path: Path) -> bundle.Artifact:
    marker = tmp_path / "marker.txt"
    marker.write_text("another build\n")
    files = sorted([*bundle.sources(), ("overcloud/_marker.txt", marker)])
    path = tmp_path / "other.pyz"
    return bundle.Artifact(bundle.NAME, path, bundle.write_bundle(files, path))


def test_bundles_no_tower_uses_are_removed(artifact, runner, tmp_path):
    root = tmp_path / "host"
    other = _other_bundle(tmp_path)
    t1, t2, t3 = tower(), tower(), tower()
    a = hostprep.install_bundle(runner, artifact.path, artifact.sha256, tower_id=t1, root=str(root))
    b = hostprep.install_bundle(runner, other.path, other.sha256, tower_id=t2, root=str(root))
    assert b.removed == [] and Path(a.path).is_dir()  # t1 still uses a
    b1 = hostprep.install_bundle(runner, other.path, other.sha256, tower_id=t1, root=str(root))
    assert not b1.transferred and b1.removed == [Path(a.path).name] and not Path(a.path).exists()

    # a bundle some process still runs from (a box's supervisord, say) stays until it is done
    a3 = hostprep.install_bundle(runner, artifact.path, artifact.sha256, tower_id=t3, root=str(root))
    user = subprocess.Popen(["sh", "-c", "sleep 60", a3.path])
    try:
        time.sleep(0.1)
        switched = hostprep.install_bundle(runner, other.path, other.sha256, tower_id=t3, root=str(root))
        assert switched.removed == [] and Path(a3.path).is_dir()
    finally:
        user.kill()
        user.wait()
    again = hostprep.install_bundle(runner, other.path, other.sha256, tower_id=t3, root=str(root))
    assert again.removed == [Path(a3.path).name]
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("bundle-")) == [f"bundle-{other.sha256}"]


def test_prepare_host_checks_before_it_sends_anything(artifact, runner, tmp_path):
    root = tmp_path / "host"
    runner.calls.clear()
    with pytest.raises(hostprep.HostRefused):
        hostprep.prepare_host(runner, artifact.path, artifact.sha256, tower_id=tower(), root=str(root),
                              packages={"overcloud-no-such-package": "test"})
    assert len(runner.calls) == 1 and not root.exists()
    facts, installed = hostprep.prepare_host(runner, artifact.path, artifact.sha256, tower_id=tower(), root=str(root))
    assert installed.transferred and facts.os_id == "debian"
    shutil.rmtree(root)
    assert os.path.exists(hostprep.HOST_PYTHON)
