"""Launch scripts: values stay off command lines, files are private, and the cgroup mounts
are read off the host's own mount table."""

from __future__ import annotations

import os
import stat

import yaml

from overcloud.composition import images as img
from overcloud.composition import pattern as pat
from overcloud.composition import runtime as rt
from test_pattern import DEPLOY

MOUNTINFO_V1 = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /proc rw - proc proc rw
"""
MOUNTINFO_V2 = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def container():
    return pat.parse([d for d in yaml.safe_load_all(DEPLOY) if d]).deployments[0].containers[0]


def test_cgroup_mounts_follow_the_host(tmp_path):
    f = tmp_path / "mountinfo"
    f.write_text(MOUNTINFO_V1)
    script = rt.cgroup_mount_script(str(f))
    assert "mount -t tmpfs -o mode=755 cgroup_root /sys/fs/cgroup" in script
    assert "mount -t cgroup -o cpu cgroup /sys/fs/cgroup/cpu" in script
    assert "mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd" in script
    assert "mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified" in script and "/proc" not in script
    assert "flock 9" in script
    f.write_text(MOUNTINFO_V2)
    assert "mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup" in rt.cgroup_mount_script(str(f))


def test_secrets_go_through_private_files(tmp_path):
    c = container()
    env = {"AWS_SECRET_ACCESS_KEY": "s3cr3t value", "X": "1"}
    image = tmp_path / "image"
    (image / "src").mkdir(parents=True)
    launch = rt.process_launch(overcloud_id="ab" * 16, replica="web-0", c=c, env=env, workdir=tmp_path / "w", image_dir=image)
    assert "s3cr3t" not in " ".join(launch.command)
    env_file = tmp_path / "w" / "web.env"
    assert stat.S_IMODE(os.stat(env_file).st_mode) == 0o600
    assert "export AWS_SECRET_ACCESS_KEY='s3cr3t value'" in env_file.read_text()
    assert "exec python3 -m http.server 8070" in (tmp_path / "w" / "web.sh").read_text()
    launch = rt.podman_launch(overcloud_id="ab" * 16, replica="web-0", c=c, env=env, workdir=tmp_path / "p",
                              handle="oc-abababab-c1", image_ref=c.image, hosts_file=tmp_path / "hosts",
                              cgroup_parent="/overcloud/oc-abababab-c1", containers_conf=tmp_path / "c.conf")
    script = (tmp_path / "p" / "web.sh").read_text()
    assert "s3cr3t" not in script and "s3cr3t" not in " ".join(launch.command)
    for part in ("--network ns:/run/netns/oc-abababab-c1", "--memory 134217728", "--cgroup-parent /overcloud/oc-abababab-c1",
                 f"{tmp_path / 'hosts'}:/etc/hosts:ro", "--pull never"):
        assert part in script
    assert stat.S_IMODE(os.stat(tmp_path / "p" / "web.podman-env").st_mode) == 0o600


def test_image_hash_and_packages(tmp_path):
    d = tmp_path / "images" / "x"
    (d / "src").mkdir(parents=True)
    (d / "packages").write_text("# comment\npython3-yaml  mosquitto\n\ncurl # trailing\n")
    (d / "src" / "a.py").write_text("print(1)\n")
    assert img.packages_of(d) == ["python3-yaml", "mosquitto", "curl"]
    h1 = img.content_hash(d)
    (d / "src" / "a.py").write_text("print(2)\n")
    assert img.content_hash(d) != h1
    images = img.Images(tmp_path / "state")
    assert images.missing({"localhost/overcloud/x:latest"}, "process") == ["localhost/overcloud/x:latest (not built for the process runtime)"]
    assert "no registry" in images.missing({"docker.io/library/python:3"}, "process")[0]
