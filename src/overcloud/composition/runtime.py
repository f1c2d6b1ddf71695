"""How one container of one replica runs in its box: a supervisord program of the box.

Both runtimes give the same behaviour — the box's network namespace (overlay and site
addresses), its ``/etc/hosts`` (Service names), the environment, restart on exit with
supervisord's back-off — and the same promise: **a workload is not root on the host.** It
runs under an unprivileged uid, without capabilities (but what its ``securityContext`` asks
for and the pattern checker grants), with ``no_new_privs``, in its own PID, mount, IPC and UTS
namespaces, seeing only its image, selected system files and its own directories. They differ
in how:

* ``podman``: ``podman run --network ns:/run/netns/<box>`` from a locally built image,
  ``--cap-drop=ALL``, ``no-new-privileges``, ``--user 65534:65534`` unless ``runAsUser`` says
  otherwise, ``--userns=auto`` (a range of ``/etc/subuid``'s ``containers`` ids of its own;
  :func:`ensure_subids` writes that entry once), with ``resources.limits`` as cgroup limits
  nested under the box's own cgroup. The box's supervisord runs under ``ip netns exec``, which
  remounts ``/sys`` without the cgroup hierarchies that runc needs, so the program first mounts
  them again in that (private) mount namespace, as the host has them.
* ``process``: the command runs from the host's ``/usr`` (the image's ``packages`` must be
  installed on the host) in a bubblewrap sandbox. Its launch script, run by supervisord as
  root, makes a private mount namespace (``unshare --mount``) where it mounts the replica's
  directories on a tmpfs that an unprivileged uid can reach (the state dir is 0700), then drops
  to that uid (``setpriv``: one uid per replica, from :data:`SANDBOX_UIDS`, no groups, no
  capabilities, ``no_new_privs``) and runs ``bwrap``, which builds a new root: ``/usr``
  read-only, selected ``/etc`` files, the box's hosts and resolv.conf, the image's code at
  ``/opt/app``, the replica's own ``/work`` (read-write; read-only with
  ``readOnlyRootFilesystem``) and ``/tmp``, a fresh ``/proc`` and ``/dev``. Nothing of the
  state dir, ``/run/overcloud`` or other replicas is in it. Where no such sandbox can be had,
  the process runtime is refused (:func:`sandbox_problem`); it never runs a workload as root.

Environment values (DataLake keys among them) go through 0600 files in the replica's
directory, never through a command line.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from overcloud.files import write_private
from overcloud.composition.pattern import Container

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONTAINERS_CONF = """\
# written by OverCloud: Podman needs these limits set explicitly here (FACTS.md)
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
events_logger = "file"
"""

# the uid (and gid) a workload runs as, inside its user namespace, unless runAsUser says otherwise
DEFAULT_ID = 65534
# host uids of process-runtime sandboxes: one per replica, hashed from its OverCloud and name;
# below Podman's range (SUBIDS) and far above the ids Debian hands to users (< 60000, subuids
# from 100000 in 65536 steps)
SANDBOX_UIDS = range(1_000_000_000, 1_100_000_000)
# Podman's --userns=auto takes ranges from /etc/sub{u,g}id's "containers" entry: the upper half
SUBIDS = "containers:2147483647:2147483648"
USERNS_SIZE = 65536
# an empty directory on the host: in each sandbox launch's own mount namespace a tmpfs is
# mounted on it, holding the replica's directories where the sandbox's uid can reach them
STAGE = Path("/run/overcloud-sandbox")
# what a sandbox sees of /etc besides the box's hosts and resolv.conf (and its image's
# packages' own /etc entries): names, the loader, certificates, time zones, Python's config
ETC = ("passwd", "group", "nsswitch.conf", "host.conf", "gai.conf", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
       "alternatives", "ssl", "ca-certificates", "ca-certificates.conf", "localtime", "timezone", "mime.types",
       "protocols", "services", "os-release", "debian_version", "python3", "environment")

# where a sandbox's root has something already (a workingDir there must exist)
BOUND = ("/usr", "/etc", "/proc", "/dev", "/run", "/opt/app", "/work", "/tmp", "/var/tmp", "/bin", "/sbin", "/lib",
         "/lib64")


class SandboxError(RuntimeError):
    """The process runtime cannot sandbox a workload here (so it does not run it)."""


def podman_available() -> bool:
    return shutil.which("podman") is not None and shutil.which("runc") is not None


def choose(requested: str | None) -> str:
    """``auto`` (or nothing) is podman where it is installed, else process. The process runtime
    needs its sandbox (:func:`sandbox_problem`)."""
    if requested in (None, "", "auto"):
        if podman_available():
            return "podman"
        requested = "process"
    if requested == "podman" and not podman_available():
        raise RuntimeError("the podman runtime needs podman and runc installed (`make install` does that as root)")
    if requested == "process":
        problem = sandbox_problem()
        if problem:
            raise RuntimeError(f"the process runtime runs workloads only in a sandbox, and none can be had here: "
                               f"{problem}")
    return requested


def cgroup_mount_script(mountinfo: str = "/proc/self/mountinfo", text: str | None = None) -> str:
    """Shell that mounts the host's cgroup hierarchies again under /sys/fs/cgroup, when they
    are missing (as under ``ip netns exec``). Read off the host's own mount table (``text``:
    the mount table of the box's host, read there)."""
    lines = []
    if text is None:
        with open(mountinfo) as f:
            text = f.read()
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split()
        sep = parts.index("-")
        mountpoint, fstype, superopts = parts[4], parts[sep + 1], parts[sep + 3]
        if not mountpoint.startswith("/sys/fs/cgroup"):
            continue
        if fstype == "tmpfs" and mountpoint == "/sys/fs/cgroup":
            lines.append("mount -t tmpfs -o mode=755 cgroup_root /sys/fs/cgroup")
        elif fstype in ("cgroup", "cgroup2"):
            opts = ",".join(o for o in superopts.split(",") if o not in ("rw", "ro"))
            if fstype == "cgroup" and opts.startswith("name="):
                opts = "none," + opts
            o = f"-o {opts} " if opts else ""
            lines.append(f"mkdir -p {mountpoint} && mount -t {fstype} {o}{fstype} {mountpoint}")
    if not lines:
        return ":"
    # two programs of one box may start together: one mounts, the other waits for it
    return ('mkdir -p /run/overcloud && exec 9>/run/overcloud/cgroup-mount.lock && flock 9 && '
            '{ [ -n "$(ls -A /sys/fs/cgroup 2>/dev/null)" ] || { ' + " && ".join(lines) + "; }; } ; exec 9>&-")


class Files:
    """Where a launch's files go: this host's filesystem (the default). The service controller
    passes one that writes on the box's host through its session (a remote host's); see
    ``composition.controller.SessionFiles``."""

    def mkdir(self, path: Path, owner: int | None = None) -> None:
        """A directory (parents too), 0700, owned by ``owner`` (uid = gid) or root."""
        path.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            os.chown(path, owner, owner, follow_symlinks=False)
        os.chmod(path, 0o700)

    def write(self, path: Path, text: str, mode: int = 0o600) -> None:
        write_private(path, text, mode=mode)


LOCAL_FILES = Files()


@dataclasses.dataclass
class Launch:
    """What the box's supervisord runs for one container of one replica."""

    program: str
    command: list[str]
    directory: str
    # how supervisord stops it: a process gets SIGTERM; `podman run` gets SIGKILL, since the
    # signal it forwards would go to a PID 1 that ignores it (the container is removed after)
    stopsignal: str = "TERM"


def write_env(path: Path, env: dict[str, str], shell: bool, files: Files = LOCAL_FILES) -> None:
    """The environment file (0600): shell assignments, or podman's KEY=VALUE lines."""
    if shell:
        text = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    else:
        text = "".join(f"{k}={v}\n" for k, v in env.items())
    files.write(path, text)


def program_name(replica: str, container: str) -> str:
    return f"w-{replica}-{container}"


def container_name(overcloud_id: str, replica: str, container: str) -> str:
    return f"oc-{overcloud_id[:12]}-{replica}-{container}"


def _script(workdir: Path, name: str, text: str, files: Files = LOCAL_FILES) -> Path:
    """The launch script of one container (supervisord's own command parsing cannot carry
    nested shell quoting, and a file keeps values off the command line)."""
    path = workdir / f"{name}.sh"
    files.write(path, "# written by OverCloud\n" + text, mode=0o700)
    return path


# -- the process runtime's sandbox ---------------------------------------------------
def sandbox_uid(overcloud_id: str, replica: str) -> int:
    """The host uid a replica's sandbox runs as: its own, the same at every start (its files
    stay its own), never root nor a user's."""
    h = int.from_bytes(hashlib.sha256(f"{overcloud_id}/{replica}".encode()).digest()[:8], "big")
    return SANDBOX_UIDS.start + h % len(SANDBOX_UIDS)


def _ids(c: Container) -> tuple[int, int]:
    """The uid and gid a container runs as, inside its user namespace."""
    s = c.security
    return (DEFAULT_ID if s.run_as_user is None else s.run_as_user,
            DEFAULT_ID if s.run_as_group is None else s.run_as_group)


def _system_binds(etc: list[str] | tuple[str, ...] = ()) -> list[str]:
    """bwrap arguments for the read-only system part of a sandbox's root, as this host lays
    it out (merged /usr or not; Debian 12 and later, which hosts must be, always merge). The
    ``/etc`` entries are bound when the sandbox's host has them (``--ro-bind-try``: a remote
    host's /etc is not this one's)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        p = Path("/") / top
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), f"/{top}"]
        elif p.is_dir():
            args += ["--ro-bind", str(p), f"/{top}"]
    pythons = sorted(p.name for p in Path("/etc").glob("python3.*"))  # Debian's sitecustomize
    pythons += ["python3.11", "python3.12", "python3.13"]  # Debian 12, 13 on a remote host
    for name in dict.fromkeys([*ETC, *pythons, *etc]):
        if "/" in name or name in ("", ".", "..", "hosts", "resolv.conf", "netns"):
            continue
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args


def bwrap_args(*, replica: str, uid: int, gid: int, env: dict[str, str], read_only: bool, cwd: str,
               etc: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Everything bwrap is told for one container, sources under :data:`STAGE` (where the launch
    script mounts them). They go to bwrap through a 0600 file (``--args``): values stay off every
    command line, and any variable name works."""
    args = ["--unshare-user", "--uid", str(uid), "--gid", str(gid), "--disable-userns",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", replica,
            "--die-with-parent", "--cap-drop", "ALL", *_system_binds(etc),
            "--ro-bind", str(STAGE / "hosts"), "/etc/hosts", "--ro-bind", str(STAGE / "resolv.conf"), "/etc/resolv.conf",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/run", "--symlink", "/tmp", "/var/tmp",
            "--ro-bind", str(STAGE / "app"), "/opt/app",
            "--ro-bind" if read_only else "--bind", str(STAGE / "work"), "/work",
            "--bind", str(STAGE / "tmp"), "/tmp"]
    if not any(cwd == top or cwd.startswith(top + "/") for top in BOUND):
        args += ["--dir", cwd]  # a workingDir elsewhere is made in the sandbox's own root
    args += ["--chdir", cwd, "--clearenv"]
    for k, v in env.items():
        args += ["--setenv", k, v]
    return args


def sandbox_script(*, uid: int, workdir: Path, tmpdir: Path, app: Path, hosts: Path, resolv: Path,
                   args_file: Path, command: list[str]) -> str:
    """The launch script (run as root by the box's supervisord, in a mount namespace of its own).
    With ``--exec CMD...`` it runs CMD in the same kind of sandbox instead (exec probes)."""
    q = shlex.quote
    stage = q(str(STAGE))
    return f"""\
set -eu
PATH={PATH}
if [ "${{1-}}" = --exec ]; then shift; else set -- {shlex.join(command)}; fi
mkdir -p {stage}
mount -t tmpfs -o mode=0755,size=64k,nosuid,nodev overcloud-sandbox {stage}
mkdir {stage}/work {stage}/tmp {stage}/app
touch {stage}/hosts {stage}/resolv.conf
mount --bind {q(str(workdir))} {stage}/work
mount --bind {q(str(tmpdir))} {stage}/tmp
mount --bind {q(str(app))} {stage}/app
mount --bind {q(str(hosts))} {stage}/hosts
mount --bind {q(str(resolv))} {stage}/resolv.conf
exec 3< {q(str(args_file))}
# SIGTERM (a stop) is for the workload alone: bwrap would die of it and take the sandbox along
trap '' TERM
exec setpriv --reuid={uid} --regid={uid} --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all -- \\
  bwrap --args 3 -- env --default-signal=TERM "$@"
"""


def process_launch(*, overcloud_id: str, replica: str, c: Container, env: dict[str, str], workdir: Path,
                   image_dir: Path | None = None, etc_dir: Path, etc: list[str] | tuple[str, ...] = (),
                   app_dir: Path | None = None, files: Files = LOCAL_FILES) -> Launch:
    """``workdir`` (root's, 0700) holds the launch script and the bwrap arguments; its ``work``
    (the sandbox's ``/work``) and ``tmp-<container>`` (its ``/tmp``, kept for exec probes,
    which run in a sandbox of their own) belong to the replica's sandbox uid. ``etc_dir`` is
    the box's ``/etc/netns/<handle>``; ``app_dir`` the image's code on the box's host (default
    ``image_dir/src``). Paths are the box's host's; ``files`` writes there."""
    uid = sandbox_uid(overcloud_id, replica)
    inner_uid, inner_gid = _ids(c)
    files.mkdir(workdir)
    work, tmp = workdir / "work", workdir / f"tmp-{c.name}"
    for d in (work, tmp):
        files.mkdir(d, owner=uid)
    cwd = c.working_dir or "/work"
    env = {"PATH": PATH, "HOME": "/work", "PYTHONPATH": "/opt/app", "PYTHONUNBUFFERED": "1", **env}
    args = bwrap_args(replica=replica, uid=inner_uid, gid=inner_gid, env=env,
                      read_only=c.security.read_only_root_filesystem, cwd=cwd, etc=etc)
    args_file = workdir / f"{c.name}.bwrap"
    files.write(args_file, "".join(a + "\0" for a in args))
    app = app_dir if app_dir is not None else Path(image_dir) / "src"
    script = sandbox_script(uid=uid, workdir=work, tmpdir=tmp, app=app, hosts=etc_dir / "hosts",
                            resolv=etc_dir / "resolv.conf", args_file=args_file, command=[*c.command, *c.args])
    path = _script(workdir, c.name, script, files)
    return Launch(program_name(replica, c.name), process_command(path), str(workdir))


def process_command(script: Path, exec_argv: list[str] | None = None) -> list[str]:
    """What runs a launch script: in a mount namespace of its own, with nothing of the caller's
    environment. With ``exec_argv``, that command in the container's sandbox (an exec probe)."""
    tail = ["--exec", *exec_argv] if exec_argv is not None else []
    return ["env", "-i", "unshare", "--mount", "--propagation", "private", "sh", str(script), *tail]


@functools.lru_cache(maxsize=1)
def _sandbox_works() -> None:
    """Run one sandbox as the launches do (raises SandboxError). Only success is cached."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="overcloud-sandbox-check-") as tmp:
        t = Path(tmp)
        for name in ("work", "tmp", "app", "etc"):
            (t / name).mkdir()
        (t / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
        (t / "etc" / "resolv.conf").write_text("")
        uid = SANDBOX_UIDS.start
        for d in ("work", "tmp"):
            os.chown(t / d, uid, uid)
        args = bwrap_args(replica="check", uid=DEFAULT_ID, gid=DEFAULT_ID, env={"PATH": PATH}, read_only=False,
                          cwd="/work")
        write_private(t / "args", "".join(a + "\0" for a in args))
        script = sandbox_script(uid=uid, workdir=t / "work", tmpdir=t / "tmp", app=t / "app", hosts=t / "etc" / "hosts",
                                resolv=t / "etc" / "resolv.conf", args_file=t / "args",
                                command=["sh", "-c", 'test "$(id -u)" = 65534 && touch /work/ok'])
        write_private(t / "check.sh", script, mode=0o700)
        try:
            r = subprocess.run(process_command(t / "check.sh"), capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxError(f"running the sandbox failed: {exc}") from None
        if r.returncode != 0 or not (t / "work" / "ok").exists():
            raise SandboxError(f"a test sandbox failed ({(r.stderr or r.stdout).strip()[-300:] or r.returncode})")


def sandbox_problem() -> str | None:
    """Why the process runtime cannot sandbox workloads here, or None when it can."""
    if os.geteuid() != 0:
        return "the Tower must run as root to drop a workload to its own uid"
    missing = [p for p in ("bwrap", "setpriv", "unshare") if shutil.which(p) is None]
    if missing:
        return f"{', '.join(missing)} not installed (`make install` installs bubblewrap as root)"
    try:
        _sandbox_works()
    except SandboxError as exc:
        return str(exc)
    return None


# -- podman ----------------------------------------------------------------------
def ensure_subids(paths: tuple[str, ...] = ("/etc/subuid", "/etc/subgid")) -> bool:
    """Podman's ``--userns=auto`` takes id ranges from the ``containers`` entries of /etc/subuid
    and /etc/subgid: add :data:`SUBIDS` where there is none (an entry already there is kept).
    Returns whether both files have one (False: containers run without a user namespace)."""
    ok = True
    for path in paths:
        p = Path(path)
        try:
            text = p.read_text() if p.exists() else ""
            if not any(line.split(":", 1)[0] == "containers" for line in text.splitlines()):
                with open(p, "a") as f:
                    f.write(("" if not text or text.endswith("\n") else "\n") + SUBIDS + "\n")
                os.chmod(p, 0o644)
        except OSError:
            ok = False
    return ok


@functools.lru_cache(maxsize=1)
def podman_userns() -> bool:
    """Whether Podman containers get user namespaces here (set up once per Tower process)."""
    return os.geteuid() == 0 and ensure_subids()


def podman_security(c: Container, userns: bool) -> list[str]:
    """``podman run`` options from a container's securityContext (checked by the pattern):
    no capabilities but those it asks for, no_new_privs, a non-root user unless ``runAsUser``
    says 0, a user namespace of its own where it can have one."""
    uid, gid = _ids(c)
    s = c.security
    opts = ["--cap-drop=ALL", "--security-opt=no-new-privileges", "--user", f"{uid}:{gid}"]
    opts += [f"--cap-add={cap}" for cap in s.capabilities_add]
    # NET_BIND_SERVICE acts on the box's network namespace, which belongs to the host's user
    # namespace: only there does it mean anything (the pattern refuses it with runAsUser 0)
    if userns and not s.capabilities_add:
        # in a user namespace that does not own the network namespace, sysfs cannot be mounted:
        # an empty /sys (Podman still mounts /sys/fs/cgroup in it)
        opts += [f"--userns=auto:size={USERNS_SIZE}", "--mount", "type=tmpfs,destination=/sys"]
    if s.read_only_root_filesystem:
        opts += ["--read-only"]  # Podman mounts tmpfs on /tmp, /var/tmp and /run then
    return opts


def podman_launch(*, overcloud_id: str, replica: str, c: Container, env: dict[str, str], workdir: Path,
                  network: str, image_ref: str, hosts_file: Path, cgroup_parent: str | None,
                  containers_conf: Path, tower_id: str | None = None, userns: bool = False,
                  files: Files = LOCAL_FILES, cgroup_script: str | None = None) -> Launch:
    files.mkdir(workdir)
    env = {"PYTHONUNBUFFERED": "1", **env}
    env_file = workdir / f"{c.name}.podman-env"
    write_env(env_file, env, shell=False, files=files)
    name = container_name(overcloud_id, replica, c.name)
    run = ["podman", "run", "--rm", "--replace", "--name", name, "--network", network,
           "--env-file", str(env_file), "-v", f"{hosts_file}:/etc/hosts:ro", "--hostname", replica,
           "--pull", "never", "--log-driver", "none", "--label", f"overcloud.io/overcloud={overcloud_id}",
           "--workdir", c.working_dir or "/tmp", *podman_security(c, userns)]
    if tower_id:  # which Tower's: a sweep of another Tower on this host leaves it alone
        run += ["--label", f"overcloud.io/tower={tower_id}"]
    if cgroup_parent:
        run += ["--cgroup-parent", cgroup_parent]
    if c.memory_limit:
        run += ["--memory", str(c.memory_limit)]
    if c.cpu_limit:
        run += ["--cpus", f"{c.cpu_limit:g}"]
    run += [image_ref, *c.command, *c.args]
    mounts = cgroup_script if cgroup_script is not None else cgroup_mount_script()
    script = f"{mounts}\nexport CONTAINERS_CONF={shlex.quote(str(containers_conf))}\nexec {shlex.join(run)}\n"
    return Launch(program_name(replica, c.name), ["sh", str(_script(workdir, c.name, script, files))], str(workdir),
                  stopsignal="KILL")
