"""Launch scripts: a workload is not root on the host (the process runtime's sandbox, run for
real here; Podman's flags from securityContext), values stay off command lines, files are
private, the cgroup mounts are read off the host's own mount table, and artifacts and image
tars run or import only when their digests match."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from overcloud.boxes import fetch as fetch_mod
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
OC = "ab" * 16


def container(security: dict | None = None, pod_security: dict | None = None, **fields):
    docs = [d for d in yaml.safe_load_all(DEPLOY) if d]
    spec = docs[0]["spec"]["template"]["spec"]
    spec["containers"][0].update(fields)
    if security is not None:
        spec["containers"][0]["securityContext"] = security
    if pod_security is not None:
        spec["securityContext"] = pod_security
    return pat.parse(docs).deployments[0].containers[0]


def refused(security: dict | None = None, pod_security: dict | None = None) -> pat.PatternError:
    with pytest.raises(pat.PatternError) as info:
        container(security, pod_security)
    return info.value


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


def _box_etc(tmp_path: Path) -> Path:
    etc = tmp_path / "etc-netns"
    etc.mkdir()
    (etc / "hosts").write_text("10.250.0.9 web\n")
    (etc / "resolv.conf").write_text("options timeout:1 attempts:1\n")
    return etc


def _launch(tmp_path: Path, c, env: dict[str, str], replica: str = "web-0") -> rt.Launch:
    image = tmp_path / "image"
    (image / "src").mkdir(parents=True, exist_ok=True)
    etc = tmp_path / "etc-netns" if (tmp_path / "etc-netns").exists() else _box_etc(tmp_path)
    return rt.process_launch(overcloud_id=OC, replica=replica, c=c, env=env, workdir=tmp_path / "state" / replica,
                             image_dir=image, etc_dir=etc)


def _args(tmp_path: Path, replica: str = "web-0", name: str = "web") -> list[str]:
    return (tmp_path / "state" / replica / f"{name}.bwrap").read_text().split("\0")[:-1]


def test_secrets_go_through_private_files(tmp_path):
    c = container()
    env = {"AWS_SECRET_ACCESS_KEY": "s3cr3t value", "X": "1", "dotted.name": "ok"}
    launch = _launch(tmp_path, c, env)
    w = tmp_path / "state" / "web-0"
    script = (w / "web.sh").read_text()
    assert "s3cr3t" not in " ".join(launch.command) and "s3cr3t" not in script
    assert stat.S_IMODE(os.stat(w / "web.bwrap").st_mode) == 0o600
    args = _args(tmp_path)
    i = args.index("AWS_SECRET_ACCESS_KEY")
    assert args[i - 1:i + 2] == ["--setenv", "AWS_SECRET_ACCESS_KEY", "s3cr3t value"] and "--clearenv" in args
    assert "dotted.name" in args  # any variable name: no shell assignment involved
    assert "set -- python3 -m http.server 8070" in script
    launch = rt.podman_launch(overcloud_id=OC, replica="web-0", c=c, env=env, workdir=tmp_path / "p",
                              network="ns:/run/netns/oc-abababab-c1", image_ref=c.image, hosts_file=tmp_path / "hosts",
                              cgroup_parent="/overcloud/oc-abababab-c1", containers_conf=tmp_path / "c.conf")
    script = (tmp_path / "p" / "web.sh").read_text()
    assert "s3cr3t" not in script and "s3cr3t" not in " ".join(launch.command)
    for part in ("--network ns:/run/netns/oc-abababab-c1", "--memory 134217728", "--cgroup-parent /overcloud/oc-abababab-c1",
                 f"{tmp_path / 'hosts'}:/etc/hosts:ro", "--pull never"):
        assert part in script
    assert stat.S_IMODE(os.stat(tmp_path / "p" / "web.podman-env").st_mode) == 0o600


def test_process_launch_drops_to_the_replicas_own_uid_in_a_sandbox(tmp_path):
    launch = _launch(tmp_path, container(), {})
    w = tmp_path / "state" / "web-0"
    uid = rt.sandbox_uid(OC, "web-0")
    assert uid in rt.SANDBOX_UIDS and uid != rt.sandbox_uid(OC, "web-1")
    assert launch.command[:6] == ["env", "-i", "unshare", "--mount", "--propagation", "private"]
    script = (w / "web.sh").read_text()
    assert f"setpriv --reuid={uid} --regid={uid} --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all" in script
    assert "bwrap --args 3" in script and "trap '' TERM" in script
    args = " ".join(_args(tmp_path))
    for flag in ("--unshare-user --uid 65534 --gid 65534 --disable-userns", "--unshare-pid", "--unshare-ipc",
                 "--die-with-parent", "--cap-drop ALL", "--ro-bind /usr /usr", "--proc /proc", "--dev /dev",
                 f"--ro-bind {rt.STAGE}/hosts /etc/hosts", f"--bind {rt.STAGE}/work /work", "--chdir /work"):
        assert flag in args, flag
    assert str(tmp_path) not in args and "--bind / " not in args  # nothing of the state dir but its staged dirs
    for d in ("work", "tmp-web"):
        st = os.stat(w / d)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, uid, 0o700)
    assert os.stat(w).st_uid == 0 and stat.S_IMODE(os.stat(w).st_mode) == 0o700  # its scripts stay root's


def test_security_context_maps_to_the_process_sandbox(tmp_path):
    _launch(tmp_path, container({"runAsUser": 1000, "readOnlyRootFilesystem": True}, {"runAsGroup": 2000}), {})
    args = " ".join(_args(tmp_path))
    assert "--uid 1000 --gid 2000" in args and f"--ro-bind {rt.STAGE}/work /work" in args
    _launch(tmp_path, container(workingDir="/srv/app"), {}, replica="web-1")
    args = _args(tmp_path, "web-1")
    assert args[args.index("--chdir") + 1] == "/srv/app" and args[args.index("--dir") + 1] == "/srv/app"


def test_security_context_maps_to_podman_flags():
    flags = rt.podman_security(container(), userns=True)
    assert flags[:4] == ["--cap-drop=ALL", "--security-opt=no-new-privileges", "--user", "65534:65534"]
    assert "--userns=auto:size=65536" in flags and "type=tmpfs,destination=/sys" in flags
    assert not any(f.startswith("--cap-add") for f in flags) and "--read-only" not in flags
    flags = rt.podman_security(container({"runAsUser": 1000, "runAsGroup": 1001, "readOnlyRootFilesystem": True,
                                          "capabilities": {"drop": ["ALL"]}}), userns=True)
    assert "1000:1001" in flags and "--read-only" in flags
    flags = rt.podman_security(container({"runAsUser": 0}, {"runAsNonRoot": False}), userns=True)
    assert "0:65534" in flags and "--userns=auto:size=65536" in flags  # root only in its own user namespace
    flags = rt.podman_security(container({"capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}}), userns=True)
    # the box's network belongs to the host's user namespace: only there does the capability act
    assert "--cap-add=NET_BIND_SERVICE" in flags and not any(f.startswith("--userns") for f in flags)
    assert "65534:65534" in flags
    assert not any(f.startswith("--userns") for f in rt.podman_security(container(), userns=False))


@pytest.mark.parametrize("security,pod,field,words", [
    ({"privileged": True}, None, "spec.template.spec.containers[0].securityContext.privileged", "privileged"),
    ({"allowPrivilegeEscalation": True}, None, "spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation",
     "no_new_privs"),
    ({"capabilities": {"add": ["SYS_ADMIN"]}}, None, "spec.template.spec.containers[0].securityContext.capabilities.add[0]",
     "NET_BIND_SERVICE"),
    ({"capabilities": {"add": ["NET_BIND_SERVICE", "CAP_NET_RAW"]}}, None,
     "spec.template.spec.containers[0].securityContext.capabilities.add[1]", "not granted"),
    ({"capabilities": {"drop": ["EVERYTHING"]}}, None, "spec.template.spec.containers[0].securityContext.capabilities.drop[0]",
     "not a Linux capability"),
    ({"runAsUser": 0, "runAsNonRoot": True}, None, "spec.template.spec.containers[0].securityContext.runAsUser", "runAsNonRoot"),
    (None, {"runAsUser": 0, "runAsNonRoot": True}, "spec.template.spec.securityContext.runAsUser", "runAsNonRoot"),
    ({"runAsNonRoot": True}, {"runAsUser": 0}, "spec.template.spec.securityContext.runAsUser", "cannot be 0"),
    ({"runAsUser": 0, "capabilities": {"add": ["NET_BIND_SERVICE"]}}, None,
     "spec.template.spec.containers[0].securityContext.capabilities.add", "non-root"),
    ({"runAsUser": 70000}, None, "spec.template.spec.containers[0].securityContext.runAsUser", "0 to 65535"),
    ({"runAsNonRoot": "yes"}, None, "spec.template.spec.containers[0].securityContext.runAsNonRoot", "true or false"),
    (None, {"readOnlyRootFilesystem": True}, "spec.template.spec.securityContext.readOnlyRootFilesystem", "not supported"),
    (None, {"privileged": True}, "spec.template.spec.securityContext.privileged", "not supported"),
    ({"seccompProfile": {"type": "RuntimeDefault"}}, None, "spec.template.spec.containers[0].securityContext.seccompProfile",
     "not supported"),
])
def test_security_context_refusals_name_the_field(security, pod, field, words):
    err = refused(security, pod)
    assert (err.manifest, err.field) == ("Deployment/web", field)
    assert words in err.reason


def test_security_context_is_merged_and_round_trips():
    c = container({"runAsGroup": 3000, "capabilities": {"add": ["net_bind_service"], "drop": ["ALL", "CAP_CHOWN"]},
                   "privileged": False, "allowPrivilegeEscalation": False}, {"runAsUser": 1000, "runAsGroup": 2000,
                                                                            "runAsNonRoot": True})
    s = c.security
    assert (s.run_as_user, s.run_as_group, s.run_as_non_root) == (1000, 3000, True)
    assert s.capabilities_add == ["NET_BIND_SERVICE"] and s.capabilities_drop == ["ALL", "CHOWN"]
    assert container().security == pat.Security()
    docs = [d for d in yaml.safe_load_all(DEPLOY) if d]
    docs[0]["spec"]["template"]["spec"]["securityContext"] = {"runAsUser": 1000}
    p = pat.parse(docs)
    again = pat.Pattern.from_dict(p.to_dict())
    assert again.deployments[0] == p.deployments[0]
    # a Deployment stored before securityContext existed reads back with the defaults
    old = p.to_dict()
    del old["deployments"][0]["containers"][0]["security"]
    assert pat.Pattern.from_dict(old).deployments[0].containers[0].security == pat.Security()


def test_accepted_security_contexts_are_valid_kubernetes():
    from test_pattern import k8s_errors

    docs = [d for d in yaml.safe_load_all(DEPLOY) if d]
    spec = docs[0]["spec"]["template"]["spec"]
    spec["securityContext"] = {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True}
    spec["containers"][0]["securityContext"] = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                                "privileged": False, "capabilities": {"add": ["NET_BIND_SERVICE"],
                                                                                      "drop": ["ALL"]}}
    pat.parse(docs)
    assert k8s_errors(docs) == []


# -- the sandbox, for real (a process on this host, no network namespace needed) -------------
needs_sandbox = pytest.mark.skipif(rt.sandbox_problem() is not None, reason=f"no sandbox here: {rt.sandbox_problem()}")

PROBE = r"""
import os, sys
def can(f):
    try:
        f(); return "yes"
    except OSError as e:
        return type(e).__name__
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
print("uid", os.getuid(), "euid", os.geteuid())
print("CapEff", status["CapEff"].strip(), "NoNewPrivs", status["NoNewPrivs"].strip())
print("pids", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
print("secret", can(lambda: open(sys.argv[1]).read()))
print("state", can(lambda: os.listdir(sys.argv[2])))
print("host-pid", can(lambda: open(f"/proc/{sys.argv[3]}/environ").read()))
print("usr", can(lambda: open("/usr/overcloud-test", "w")))
print("work", can(lambda: open("/work/out", "w").write("x")))
print("hosts", open("/etc/hosts").read().split()[1])
print("env", os.environ.get("SECRET"), os.environ.get("HOME"))
"""


@needs_sandbox
def test_the_sandbox_holds(tmp_path):
    """What the issue's attacker did from inside a workload: read a root-only file of the
    state dir, list it, read another process's environment, write the system; all fail, while
    its own directory and the box's /etc/hosts work."""
    secret = tmp_path / "state" / "admin.token"
    secret.parent.mkdir()
    secret.write_text("token")
    os.chmod(secret, 0o600)
    victim = subprocess.Popen(["sleep", "30"], env={"OTHER": "s3cr3t"})
    try:
        (tmp_path / "image" / "src").mkdir(parents=True)
        (tmp_path / "image" / "src" / "probe.py").write_text(PROBE)
        c = container(command=["python3", "/opt/app/probe.py", str(secret), str(secret.parent), str(victim.pid)])
        launch = _launch(tmp_path, c, {"SECRET": "mine", "PATH": rt.PATH})
        r = subprocess.run(launch.command, capture_output=True, text=True, timeout=30, cwd=launch.directory)
    finally:
        victim.kill()
    assert r.returncode == 0, r.stderr
    out = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert out["uid"] == "65534 euid 65534"
    assert out["CapEff"] == "0000000000000000 NoNewPrivs 1"
    assert max(eval(out["pids"])) < 10  # its own PID namespace: the host's processes are not there
    assert out["secret"] == "FileNotFoundError" and out["state"] == "FileNotFoundError"
    assert out["host-pid"] == "FileNotFoundError" and out["usr"] in ("OSError", "PermissionError")
    assert out["work"] == "yes" and out["hosts"] == "web" and out["env"] == "mine /work"
    w = tmp_path / "state" / "web-0" / "work" / "out"
    assert os.stat(w).st_uid == rt.sandbox_uid(OC, "web-0")  # on the host: the replica's uid, not root
    assert not os.path.exists("/usr/overcloud-test")
    # an exec probe runs in the same kind of sandbox, with the same /work
    r = subprocess.run(rt.process_command(Path(launch.command[-1]), ["cat", "/work/out"]), capture_output=True,
                       text=True, timeout=30)
    assert (r.returncode, r.stdout) == (0, "x")


@needs_sandbox
def test_a_stop_reaches_the_workload_and_a_kill_takes_the_sandbox_along(tmp_path):
    """supervisord stops a program with SIGTERM to its process group: the workload gets it
    (bwrap ignores it); SIGKILL of the program kills everything in the sandbox."""
    (tmp_path / "image" / "src").mkdir(parents=True)
    code = ("import signal, sys, time\n"
            "def term(*_):\n    open('/work/term', 'w').write('1'); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, term)\nopen('/work/up', 'w').write('1')\ntime.sleep(60)\n")
    launch = _launch(tmp_path, container(command=["python3", "-c", code]), {"PATH": rt.PATH})
    work = tmp_path / "state" / "web-0" / "work"

    def start():
        (work / "up").unlink(missing_ok=True)
        p = subprocess.Popen(launch.command, cwd=launch.directory, start_new_session=True)
        deadline = time.monotonic() + 20
        while not (work / "up").exists():
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.05)
        return p

    p = start()
    os.killpg(p.pid, signal.SIGTERM)
    assert p.wait(10) == 0 and (work / "term").read_text() == "1"
    p = start()
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    deadline = time.monotonic() + 5
    while subprocess.run(["pgrep", "-u", str(rt.sandbox_uid(OC, "web-0"))], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the sandbox outlived its program"
        time.sleep(0.05)


def test_without_a_sandbox_the_process_runtime_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap, setpriv or unshare to be found
    problem = rt.sandbox_problem()
    assert problem is not None and "bwrap" in problem
    with pytest.raises(RuntimeError, match="only in a sandbox"):
        rt.choose("process")


def test_subids_for_podman_are_added_once(tmp_path):
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    subuid.write_text("alice:100000:65536")
    assert rt.ensure_subids((str(subuid), str(subgid)))
    assert rt.ensure_subids((str(subuid), str(subgid)))
    assert subuid.read_text() == f"alice:100000:65536\n{rt.SUBIDS}\n" and subgid.read_text() == f"{rt.SUBIDS}\n"
    subgid.write_text("containers:300000:65536\n")  # an entry of the host's own is kept
    assert rt.ensure_subids((str(subgid),)) and subgid.read_text() == "containers:300000:65536\n"
    lo, n = (int(x) for x in rt.SUBIDS.split(":")[1:])
    assert rt.SANDBOX_UIDS.stop <= lo and lo + n - 1 <= 2**32 - 2  # the process runtime's uids are apart


# -- digests ------------------------------------------------------------------------------
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
    assert "passwd" not in img.package_etc(["base-files", "passwd"]) and "init.d" not in img.package_etc(["procps"])


@pytest.mark.skipif(not rt.podman_available(), reason="podman not installed")
def test_a_replaced_image_tar_is_refused(tmp_path):
    images = img.Images(tmp_path / "state")
    images.cache = tmp_path / "cache"
    images.cache.mkdir()
    ref, digest = "localhost/overcloud/oc-unit-never-built:latest", "0123456789abcdef"
    tar = images.cache / img.tar_name("oc-unit-never-built", digest)
    tar.write_bytes(b"the rootfs as built")
    images._save({ref: {"hash": digest, "runtimes": {"podman": {"tar": str(tar),
                                                                  "sha256": hashlib.sha256(b"the rootfs as built").hexdigest()}}}})
    tar.write_bytes(b"a rootfs put in its place")
    with pytest.raises(img.ImageError, match="replaced, and is refused"):
        images.restore(ref, None, "bucket")
    assert not tar.exists()  # gone from the cache: the next restore fetches a checked copy


def _run_fetch(tmp_path: Path, sha: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-S", fetch_mod.__file__, f"file://{tmp_path / 'origin'}", sha,
                           str(tmp_path / "cache"), "--", "hello"], capture_output=True, text=True, timeout=30)


def test_an_artifact_runs_only_while_its_digest_matches(tmp_path):
    good = b"#!/bin/sh\necho ran \"$@\"\n"
    (tmp_path / "origin").write_bytes(good)
    sha = hashlib.sha256(good).hexdigest()
    r = _run_fetch(tmp_path, sha)
    assert (r.returncode, r.stdout) == (0, "ran hello\n"), r.stderr
    cached = tmp_path / "cache" / sha
    cached.write_bytes(b"#!/bin/sh\ntouch " + str(tmp_path / "pwned").encode() + b"\n")  # replaced in the cache
    r = _run_fetch(tmp_path, sha)
    assert r.returncode != 0 and "replaced after it was fetched" in r.stderr
    assert not (tmp_path / "pwned").exists()
    r = _run_fetch(tmp_path, "0" * 64)  # a download that is not what was asked for
    assert r.returncode != 0 and "expected 0000" in r.stderr and not (tmp_path / "cache" / ("0" * 64)).exists()
