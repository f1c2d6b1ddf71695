"""How one container of one replica runs in its box: a supervisord program of the box.

Both runtimes give the same behaviour — the box's network namespace (overlay and site
addresses), its ``/etc/hosts`` (Service names), the environment, restart on exit with
supervisord's back-off — and differ in what the process sees of the filesystem:

* ``podman``: ``podman run --network ns:/run/netns/<box>`` from a locally built image, with
  ``resources.limits`` as cgroup limits nested under the box's own cgroup. The box's
  supervisord runs under ``ip netns exec``, which remounts ``/sys`` without the cgroup
  hierarchies that runc needs, so the program first mounts them again in that (private)
  mount namespace, as the host has them.
* ``process``: the command runs on the host's filesystem in the box's namespace, with
  ``PYTHONPATH`` at the image's ``src/`` copy and the host's Debian packages (the image's
  ``packages`` must be installed on the host). The fallback where Podman is absent.

Environment values (DataLake keys among them) go through a 0600 file in the replica's
directory, never through a command line.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
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


def podman_available() -> bool:
    return shutil.which("podman") is not None and shutil.which("runc") is not None


def choose(requested: str | None) -> str:
    """``auto`` (or nothing) is podman where it is installed, else process."""
    if requested in (None, "", "auto"):
        return "podman" if podman_available() else "process"
    if requested == "podman" and not podman_available():
        raise RuntimeError("the podman runtime needs podman and runc installed (`make install` does that as root)")
    return requested


def cgroup_mount_script(mountinfo: str = "/proc/self/mountinfo") -> str:
    """Shell that mounts the host's cgroup hierarchies again under /sys/fs/cgroup, when they
    are missing (as under ``ip netns exec``). Read off the host's own mount table."""
    lines = []
    with open(mountinfo) as f:
        for line in f:
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
    return ('exec 9>/run/overcloud/cgroup-mount.lock && flock 9 && '
            '{ [ -n "$(ls -A /sys/fs/cgroup 2>/dev/null)" ] || { ' + " && ".join(lines) + "; }; } ; exec 9>&-")


@dataclasses.dataclass
class Launch:
    """What the box's supervisord runs for one container of one replica."""

    program: str
    command: list[str]
    directory: str
    # how supervisord stops it: a process gets SIGTERM; `podman run` gets SIGKILL, since the
    # signal it forwards would go to a PID 1 that ignores it (the container is removed after)
    stopsignal: str = "TERM"


def write_env(path: Path, env: dict[str, str], shell: bool) -> None:
    """The environment file (0600): shell assignments, or podman's KEY=VALUE lines."""
    if shell:
        text = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    else:
        text = "".join(f"{k}={v}\n" for k, v in env.items())
    write_private(path, text)


def program_name(replica: str, container: str) -> str:
    return f"w-{replica}-{container}"


def container_name(overcloud_id: str, replica: str, container: str) -> str:
    return f"oc-{overcloud_id[:12]}-{replica}-{container}"


def process_launch(*, overcloud_id: str, replica: str, c: Container, env: dict[str, str], workdir: Path,
                   image_dir: Path) -> Launch:
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)
    env = {"PATH": PATH, "HOME": str(workdir), "PYTHONPATH": str(image_dir / "src"), "PYTHONUNBUFFERED": "1", **env}
    env_file = workdir / f"{c.name}.env"
    write_env(env_file, env, shell=True)
    cwd = c.working_dir if c.working_dir and Path(c.working_dir).is_dir() else str(workdir)
    script = f". {shlex.quote(str(env_file))}\nexec {shlex.join([*c.command, *c.args])}\n"
    return Launch(program_name(replica, c.name), ["env", "-i", "sh", str(_script(workdir, c.name, script))], cwd)


def _script(workdir: Path, name: str, text: str) -> Path:
    """The launch script of one container (supervisord's own command parsing cannot carry
    nested shell quoting, and a file keeps values off the command line)."""
    path = workdir / f"{name}.sh"
    write_private(path, "# written by OverCloud\n" + text, mode=0o700)
    return path


def podman_launch(*, overcloud_id: str, replica: str, c: Container, env: dict[str, str], workdir: Path,
                  handle: str, image_ref: str, hosts_file: Path, cgroup_parent: str | None,
                  containers_conf: Path, tower_id: str | None = None) -> Launch:
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)
    env = {"PYTHONUNBUFFERED": "1", **env}
    env_file = workdir / f"{c.name}.podman-env"
    write_env(env_file, env, shell=False)
    name = container_name(overcloud_id, replica, c.name)
    run = ["podman", "run", "--rm", "--replace", "--name", name, "--network", f"ns:/run/netns/{handle}",
           "--env-file", str(env_file), "-v", f"{hosts_file}:/etc/hosts:ro", "--hostname", replica,
           "--pull", "never", "--log-driver", "none", "--label", f"overcloud.io/overcloud={overcloud_id}",
           "--workdir", c.working_dir or "/tmp"]
    if tower_id:  # which Tower's: a sweep of another Tower on this host leaves it alone
        run += ["--label", f"overcloud.io/tower={tower_id}"]
    if cgroup_parent:
        run += ["--cgroup-parent", cgroup_parent]
    if c.memory_limit:
        run += ["--memory", str(c.memory_limit)]
    if c.cpu_limit:
        run += ["--cpus", f"{c.cpu_limit:g}"]
    run += [image_ref, *c.command, *c.args]
    script = (f"{cgroup_mount_script()}\nexport CONTAINERS_CONF={shlex.quote(str(containers_conf))}\n"
              f"exec {shlex.join(run)}\n")
    return Launch(program_name(replica, c.name), ["sh", str(_script(workdir, c.name, script))], str(workdir),
                  stopsignal="KILL")
