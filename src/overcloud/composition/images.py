"""Images built locally (there is no registry): one per ``images/<name>/`` of a pattern.

An image directory holds ``packages`` (Debian packages, one per line, ``#`` comments) and
``src/`` (the code, at ``/opt/app`` and on ``PYTHONPATH``). Its reference is
``localhost/overcloud/<name>:latest``; a manifest names it with ``imagePullPolicy: Never``.
Containers run the state dir's own build by content hash (``<name>:<hash>``): another
Tower's build of the same name moves ``:latest`` on this host, never what runs here.

* podman: ``mmdebstrap --variant=minbase --include=<packages> <codename>`` into a tar, the
  code copied in by a hook, then ``podman import`` with ``PATH`` and ``PYTHONPATH`` set (without
  PATH nothing is found). The tar is kept in ``/var/cache/overcloud/images/`` (host-wide, as
  Podman's store is) and, at the first compose that uses it, in the Construction DataLake: a
  lost Podman store is refilled by an import (~5 s) rather than a build (~30 s).
* process: the packages must be on the host (installed with apt-get when missing and root);
  the code is copied to ``<state>/images/<name>/<hash>/src``.

An image is rebuilt only when its content hash (packages, code, Debian release) changes.
``index.json`` records what is built, for compose to check before anything starts, and the
SHA-256 of each rootfs tar: a tar is checked against it every time before Podman imports it
(from the host cache or the Construction DataLake) or it is published; a replaced tar is
refused (:class:`ImageError`) and dropped from the cache.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable

from overcloud.composition import runtime as rt
from overcloud.files import sha256_file, write_atomic


PREFIX = "localhost/overcloud/"
HOST_CACHE = Path("/var/cache/overcloud/images")
_lock = threading.Lock()
# /etc entries that many packages share (init scripts, cron, PAM...): a process-runtime sandbox
# gets only the entries its image's packages own outright, such as /etc/mosquitto
SHARED_ETC = {"init.d", "init", "default", "logrotate.d", "cron.d", "cron.daily", "cron.hourly", "cron.weekly",
              "cron.monthly", "systemd", "apparmor.d", "sudoers", "sudoers.d", "security", "pam.d", "profile.d", "X11",
              "xdg", "dbus-1", "sysctl.d", "modprobe.d", "modules-load.d", "tmpfiles.d", "sysusers.d", "udev", "ufw",
              "network", "netns", "ssh", "polkit-1", "kernel", "insserv.conf.d", "bash_completion.d", "shadow",
              "gshadow", "rc0.d", "rc1.d", "rc2.d", "rc3.d", "rc4.d", "rc5.d", "rc6.d", "rcS.d", "runit", "sv",
              "overcloud", "hosts", "resolv.conf"}


class ImageError(RuntimeError):
    pass


def image_ref(name: str) -> str:
    return f"{PREFIX}{name}:latest"


def image_name(ref: str) -> str:
    """``localhost/overcloud/<name>:latest`` -> ``<name>``."""
    return ref[len(PREFIX):].split(":")[0]


def content_ref(ref: str, digest: str) -> str:
    """``localhost/overcloud/<name>:<content hash>``: the tag containers run. ``:latest`` names
    whichever build was imported last on this host (Podman's store is host-wide, so another
    state dir's build of the same name moves it); a content tag never moves."""
    return f"{PREFIX}{image_name(ref)}:{digest}"


def tar_name(name: str, digest: str) -> str:
    """The rootfs tar of one build: the same name in the host cache and the Construction DataLake."""
    return f"{name}-{digest}.tar"


def codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise ImageError("cannot tell the Debian release from /etc/os-release")


def packages_of(image_dir: Path) -> list[str]:
    path = image_dir / "packages"
    if not path.exists():
        return []
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names += line.split()
    return names


def content_hash(image_dir: Path) -> str:
    h = hashlib.sha256()
    h.update(codename().encode())
    h.update(" ".join(sorted(packages_of(image_dir))).encode())
    src = image_dir / "src"
    if src.is_dir():
        for p in sorted(src.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(src)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


class Images:
    """The images a Tower's state dir holds."""

    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir) / "images"
        self.containers_conf = self.dir / "containers.conf"
        # rootfs tars are host-wide, like Podman's store: another state dir's build is reused
        self.cache = HOST_CACHE if os.geteuid() == 0 else self.dir / "cache"

    # -- index ---------------------------------------------------------------
    def _index(self) -> dict[str, Any]:
        try:
            return json.loads((self.dir / "index.json").read_text())
        except (OSError, ValueError):
            return {}

    def _save(self, index: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / "index.json", json.dumps(index, indent=1))

    def list(self) -> list[dict[str, Any]]:
        return [{"image": ref, **info} for ref, info in sorted(self._index().items())]

    def ensure_conf(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.containers_conf.exists() or self.containers_conf.read_text() != rt.CONTAINERS_CONF:
            self.containers_conf.write_text(rt.CONTAINERS_CONF)
        return self.containers_conf

    def missing(self, refs: set[str], runtime: str) -> list[str]:
        """Which of these image references are not built for this runtime (with a reason)."""
        index = self._index()
        out = []
        for ref in sorted(refs):
            info = index.get(ref)
            if not ref.startswith(PREFIX):
                out.append(f"{ref} (images are built locally as {PREFIX}<name>:latest; there is no registry)")
            elif info is None or runtime not in info.get("runtimes", {}):
                out.append(f"{ref} (not built for the {runtime} runtime)")
            elif runtime == "podman" and not self._podman_has(ref, info["hash"]):
                out.append(f"{ref} (Podman's store no longer has it)")
        return out

    def process_dir(self, ref: str) -> Path:
        info = self._index()[ref]
        return Path(info["runtimes"]["process"]["dir"])

    def process_packages(self, ref: str) -> list[str]:
        """The Debian packages a process-runtime image needs on its box's host."""
        return list(self._index()[ref]["runtimes"]["process"].get("packages") or [])

    def process_etc(self, ref: str) -> list[str]:
        """The /etc entries a process-runtime sandbox of this image sees besides the common ones
        (its packages' own; read off dpkg for images built before they were recorded)."""
        info = self._index()[ref]["runtimes"]["process"]
        if "etc" not in info:
            info["etc"] = package_etc(info.get("packages") or [])
        return list(info["etc"])

    # -- build -----------------------------------------------------------------
    def build_pattern(self, pattern_dir: Path, runtime: str, progress: Callable[[str], None] = lambda s: None,
                      force: bool = False) -> list[dict[str, Any]]:
        root = Path(pattern_dir) / "images"
        if not root.is_dir():
            raise ImageError(f"{pattern_dir} has no images/ directory (one folder per image: packages, src/)")
        dirs = sorted(p for p in root.iterdir() if p.is_dir())
        if not dirs:
            raise ImageError(f"{root} holds no image folders")
        return [self.build(d, runtime, progress, force) for d in dirs]

    def build(self, image_dir: Path, runtime: str, progress: Callable[[str], None] = lambda s: None,
              force: bool = False) -> dict[str, Any]:
        name = image_dir.name
        ref = image_ref(name)
        digest = content_hash(image_dir)
        with _lock:
            index = self._index()
            info = index.get(ref) or {}
            if info.get("hash") != digest:
                info = {"hash": digest, "runtimes": {}}
            done = runtime in info["runtimes"] and (runtime != "podman" or (
                self._podman_has(ref, digest) and Path(info["runtimes"]["podman"].get("tar") or "/nonexistent").exists()))
            if done and runtime == "podman" and "sha256" not in info["runtimes"]["podman"]:
                # built before tar digests were recorded: record this tar's (trusted as it is now)
                info["runtimes"]["podman"]["sha256"] = sha256_file(Path(info["runtimes"]["podman"]["tar"]))
                index[ref] = info
                self._save(index)
            if done and not force:
                progress(f"{ref}: up to date ({digest})")
                return {"image": ref, "hash": digest, "runtime": runtime, "built": False}
            if runtime == "podman":
                info["runtimes"]["podman"] = self._build_podman(image_dir, ref, digest, progress)
            elif runtime == "process":
                info["runtimes"]["process"] = self._build_process(image_dir, ref, digest, progress)
            else:
                raise ImageError(f"unknown runtime {runtime!r} (podman or process)")
            info["built_at"] = dt.datetime.now(dt.timezone.utc).isoformat()
            index = self._index()
            index[ref] = info
            self._save(index)
        return {"image": ref, "hash": digest, "runtime": runtime, "built": True}

    def _build_process(self, image_dir: Path, ref: str, digest: str, progress) -> dict[str, Any]:
        packages = packages_of(image_dir)
        missing = [p for p in packages if not _installed(p)]
        if missing:
            if os.geteuid() != 0:
                raise ImageError(f"{ref}: Debian packages {', '.join(missing)} are not installed on this host "
                                 "(run as root, or apt-get install them)")
            progress(f"{ref}: apt-get install {' '.join(missing)}")
            r = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                               capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            if r.returncode != 0:
                raise ImageError(f"{ref}: apt-get install failed: {r.stderr.strip()[-500:]}")
        target = self.dir / image_name(ref) / digest
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        if (image_dir / "src").is_dir():
            shutil.copytree(image_dir / "src", target / "src", ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (target / "src").mkdir()
        progress(f"{ref}: process image at {target}")
        return {"dir": str(target), "packages": packages, "etc": package_etc(packages)}

    def _build_podman(self, image_dir: Path, ref: str, digest: str, progress) -> dict[str, Any]:
        if not rt.podman_available():
            raise ImageError("podman and runc are not installed; build for the process runtime instead "
                             "(`--runtime process`) or run `make install` as root")
        cache = self.cache
        cache.mkdir(parents=True, exist_ok=True)
        tar = cache / tar_name(image_dir.name, digest)
        if not tar.exists():
            if shutil.which("mmdebstrap") is None:
                raise ImageError("mmdebstrap is not installed (`make install` installs it as root)")
            packages = ["python3", *packages_of(image_dir)]
            src = image_dir / "src"
            hook = 'mkdir -p "$1/opt/app"' + (f' && cp -a {_q(src)}/. "$1/opt/app/"' if src.is_dir() else "")
            progress(f"{ref}: mmdebstrap {codename()} with {', '.join(packages)} (~30 s)")
            partial = tar.with_name(tar.stem + ".partial.tar")
            r = subprocess.run(
                ["mmdebstrap", "--variant=minbase", "--quiet", f"--include={','.join(sorted(set(packages)))}",
                 f"--customize-hook={hook}", "--customize-hook=rm -rf \"$1/var/cache/apt\"/*.bin", codename(), str(partial)],
                capture_output=True, text=True,
            )
            if r.returncode != 0:
                shutil.rmtree(partial, ignore_errors=True) if partial.is_dir() else partial.unlink(missing_ok=True)
                raise ImageError(f"{ref}: mmdebstrap failed: {r.stderr.strip()[-800:]}")
            partial.replace(tar)
            for old in cache.glob(f"{image_dir.name}-*.tar"):
                if old != tar:
                    old.unlink()
        sha = sha256_file(tar)  # what every later import or restore of this build is checked against
        if self._podman_has(ref, digest):  # Podman's store is host-wide: another state dir imported it
            progress(f"{ref}: already in Podman's store ({digest})")
            return {"tar": str(tar), "sha256": sha}
        return self._import(tar, ref, digest, progress, sha)

    @staticmethod
    def _verify(tar: Path, ref: str, sha: str | None, where: str) -> None:
        """The tar is the one built (its SHA-256 as recorded then), else ImageError; a replaced
        tar is removed from the cache."""
        if not sha:
            raise ImageError(f"{ref}: no digest was recorded for its rootfs tar; rebuild it "
                             "(`overcloud images build PATTERN_DIR --runtime podman`)")
        actual = sha256_file(tar)
        if actual != sha:
            tar.unlink(missing_ok=True)
            raise ImageError(f"{ref}: the rootfs tar from {where} has SHA-256 {actual[:16]}…, not {sha[:16]}… "
                             "recorded when it was built: it was replaced, and is refused (removed from the cache; "
                             "rebuild with `overcloud images build PATTERN_DIR --runtime podman`)")

    def _import(self, tar: Path, ref: str, digest: str, progress, sha: str | None, where: str = "the host cache"
                ) -> dict[str, Any]:
        self._verify(tar, ref, sha, where)
        progress(f"{ref}: podman import")
        r = subprocess.run(
            ["podman", "import", "--change", f"ENV PATH={rt.PATH}", "--change", "ENV PYTHONPATH=/opt/app",
             "--change", "WORKDIR /tmp", "--change", f"LABEL overcloud.io/hash={digest}", str(tar),
             content_ref(ref, digest)],
            capture_output=True, text=True, env=self.podman_env(),
        )
        if r.returncode == 0:  # :latest too, for people; containers run the content tag (run_ref)
            r = subprocess.run(["podman", "tag", content_ref(ref, digest), ref], capture_output=True, text=True,
                               env=self.podman_env())
        if r.returncode != 0:
            raise ImageError(f"{ref}: podman import failed: {r.stderr.strip()[-500:]}")
        return {"tar": str(tar), "sha256": sha}

    # -- the Construction DataLake as the image cache ---------------------------------------
    def _cache_key(self, ref: str, digest: str) -> str:
        return f"images/{tar_name(image_name(ref), digest)}"

    def publish(self, ref: str, client, bucket: str) -> bool:
        """Put the image's rootfs tar into the Construction DataLake once (by content hash);
        returns whether it was uploaded now."""
        info = self._index().get(ref) or {}
        tar = (info.get("runtimes", {}).get("podman") or {}).get("tar")
        if not tar or not Path(tar).exists():
            return False
        key = self._cache_key(ref, info["hash"])
        try:
            client.head_object(Bucket=bucket, Key=key)
            uploaded = False
        except Exception:  # noqa: BLE001 - not there yet
            self._verify(Path(tar), ref, info["runtimes"]["podman"].get("sha256"), "the host cache")
            client.upload_file(tar, bucket, key)
            uploaded = True
        with _lock:
            index = self._index()
            if index.get(ref, {}).get("hash") == info["hash"]:
                index[ref]["runtimes"]["podman"]["published"] = key
                self._save(index)
        return uploaded

    def restore(self, ref: str, client, bucket: str, progress: Callable[[str], None] = lambda s: None) -> bool:
        """Podman lost an image this host built (a reset store, another state dir's cleanup):
        import it again from the local tar, or fetch the tar from the Construction DataLake.
        Either is checked against the SHA-256 recorded when it was built (ImageError when it
        differs). Returns whether Podman has it now."""
        info = self._index().get(ref)
        if not info or "podman" not in info.get("runtimes", {}) or not rt.podman_available():
            return False
        digest = info["hash"]
        if self._podman_has(ref, digest):
            return True
        self.cache.mkdir(parents=True, exist_ok=True)
        tar = self.cache / tar_name(image_name(ref), digest)
        where = "the host cache"
        if not tar.exists():
            where = "the Construction DataLake"
            if client is None:
                return False
            partial = tar.with_name(tar.stem + ".partial.tar")
            try:
                progress(f"{ref}: fetching {self._cache_key(ref, digest)} from the Construction DataLake")
                client.download_file(bucket, self._cache_key(ref, digest), str(partial))
            except Exception:  # noqa: BLE001 - not cached there: the caller says "not built"
                partial.unlink(missing_ok=True)
                return False
            partial.replace(tar)
        with _lock:
            index = self._index()
            podman = index[ref]["runtimes"]["podman"]
            podman.update(self._import(tar, ref, digest, progress, podman.get("sha256"), where))
            self._save(index)
        return self._podman_has(ref, digest)

    def podman_env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.ensure_conf())}

    def run_ref(self, ref: str) -> str:
        """The reference a container of ``ref`` runs: this state dir's build, by content hash
        (what another Tower builds under the same name never replaces it)."""
        return content_ref(ref, self._index()[ref]["hash"])

    def _podman_has(self, ref: str, digest: str) -> bool:
        """Podman has this build under its content tag (an image imported before content tags,
        still ``:latest`` with the same hash label, is given its tag here)."""
        if not rt.podman_available():
            return False

        def label(r: str) -> str | None:
            p = subprocess.run(["podman", "image", "inspect", "--format", '{{index .Labels "overcloud.io/hash"}}', r],
                               capture_output=True, text=True, env=self.podman_env())
            return p.stdout.strip() if p.returncode == 0 else None

        if label(content_ref(ref, digest)) == digest:
            return True
        if label(ref) == digest:
            return subprocess.run(["podman", "tag", ref, content_ref(ref, digest)], capture_output=True,
                                  env=self.podman_env()).returncode == 0
        return False


def package_etc(packages: list[str]) -> list[str]:
    """The top-level /etc entries these Debian packages install (but shared ones)."""
    if not packages:
        return []
    r = subprocess.run(["dpkg", "-L", *packages], capture_output=True, text=True)
    names = {line.split("/")[2] for line in r.stdout.splitlines() if line.startswith("/etc/") and line.count("/") >= 2}
    return sorted(n for n in names if n and n not in SHARED_ETC and not n.startswith("."))


def _installed(package: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return r.returncode == 0 and "install ok installed" in r.stdout


def _q(p: Path) -> str:
    import shlex

    return shlex.quote(str(p))
