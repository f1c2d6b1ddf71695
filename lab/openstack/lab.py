#!/usr/bin/python3
"""The OpenStack lab: a real control plane from Debian 12's packages, run from a cached chroot.

    python3 lab/openstack/lab.py build          # make (once per machine) the chroot; print its path
    python3 lab/openstack/lab.py up DIR         # start every service, bootstrap, write DIR/clouds.yaml, DIR/sites.yaml
    python3 lab/openstack/lab.py down DIR       # stop everything, remove the servers' instances and bridges
    python3 lab/openstack/lab.py status DIR     # what runs (JSON)
    python3 lab/openstack/lab.py restart DIR ROLE  # one service again (after a config or driver change)
    python3 lab/openstack/lab.py stop DIR ROLE     # stop one service (faults: stop-keystone DIR = stop DIR keystone)
    python3 lab/openstack/lab.py start DIR ROLE    # start it again, wait until it answers (start-keystone DIR)

(scripts/openstack-lab.sh is the front door; docs/underclouds.md, "OpenStack lab".)
Stdlib only: runs as root under the machine's /usr/bin/python3.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("OVERCLOUD_CACHE", "/var/cache/overcloud"))
SUITE = "bookworm"
MIRRORS = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
]
# Bump when the way the chroot is made changes (it is part of the cache key).
RECIPE = "3"


TENANT_RANGE = "10.90.0.0/16"  # the site's network.cidr_pool (sites.yaml): every tenant subnet is in it
RANGE_PROTO = "89"  # the labs' guard routes (scripts/aws-lab.sh uses it for 10.91.0.0/16)


def log(msg: str) -> None:
    print(f"openstack-lab: {msg}", file=sys.stderr, flush=True)


def die(msg: str) -> "NoReturn":  # noqa: F821
    log(msg)
    sys.exit(1)


# ---------------------------------------------------------------- the chroot


def packages() -> list[str]:
    lines = (HERE / "packages.txt").read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")]


def chroot_key() -> str:
    h = hashlib.sha256()
    for part in [RECIPE, SUITE, *MIRRORS, *packages()]:
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def chroot_path() -> Path:
    return CACHE / f"openstack-{chroot_key()}"


def build() -> Path:
    """Make the chroot once per machine (atomic: built aside, then renamed)."""
    root = chroot_path()
    if (root / ".complete").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(CACHE / ".openstack-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; who waited finds it made
        if (root / ".complete").exists():
            return root
        return _build(root)


def _build(root: Path) -> Path:
    for stale in CACHE.glob(".openstack-*.building-*"):  # builds that were killed (we hold the lock)
        pid = stale.name.rsplit("-", 1)[1]
        if not (pid.isdigit() and Path(f"/proc/{pid}").exists()) and not chroot_processes(stale):
            safe_rmtree(stale)
    tmp = CACHE / f".{root.name}.building-{os.getpid()}"
    t0 = time.monotonic()
    log(f"building the chroot {root} (Debian {SUITE}, {len(packages())} packages; ~4 min, once per machine)")
    cmd = [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        "--format=directory",
        "--aptopt=APT::Install-Recommends \"false\"",
        "--aptopt=Acquire::Check-Valid-Until \"false\"",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--include=" + ",".join(packages()),
        # mmdebstrap installs a policy-rc.d that forbids starting services and diverts
        # start-stop-daemon while it installs: nothing starts in a postinst.
        "--customize-hook=rm -f \"$1\"/etc/machine-id; touch \"$1\"/etc/machine-id",
        # the package's own database (each lab makes its own in DIR/mysql); mount points of the lab
        "--customize-hook=rm -rf \"$1\"/var/lib/mysql/*; mkdir -p \"$1\"/lab \"$1\"/opt/overcloud-lab",
        # the projects' own test suites (not by dpkg's path-exclude: py3compile in the postinst
        # scripts fails on the files it would leave out); glance_store's stays: an entry point
        # of its (the "no_conf" store) lives there and glance-api loads every store
        "--customize-hook=for d in \"$1\"/usr/lib/python3/dist-packages/*/tests \"$1\"/usr/lib/python3/dist-packages/*/*/tests;"
        " do case \"$d\" in */glance_store/*) ;; *) rm -rf \"$d\" ;; esac; done",
        SUITE,
        str(tmp),
        *MIRRORS,
    ]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(cmd, env=env)
    if r.returncode != 0:
        safe_rmtree(tmp)
        die(f"mmdebstrap failed (exit {r.returncode})")
    (tmp / ".complete").write_text(json.dumps({
        "key": chroot_key(), "packages": packages(), "suite": SUITE,
        "build_s": round(time.monotonic() - t0, 1),
    }) + "\n")
    if root.exists():
        safe_rmtree(root)
    tmp.rename(root)
    log(f"chroot built in {time.monotonic() - t0:.0f} s: {root}")
    remove_unused_chroots(keep=root)
    return root


def remove_unused_chroots(keep: Path) -> None:
    """Earlier builds (another key) that no lab uses: nothing runs rooted in them and no lab is up there."""
    up_root = None
    if MARKER.exists():
        with contextlib.suppress(OSError, ValueError):
            up_root = json.loads((Path(MARKER.read_text().strip()) / "lab.json").read_text())["chroot"]
    for old in CACHE.glob("openstack-*"):
        if old == keep or not old.is_dir() or str(old) == up_root or chroot_processes(old):
            continue
        log(f"removing an earlier chroot no lab uses: {old}")
        safe_rmtree(old)


def safe_rmtree(path: Path) -> None:
    """Remove a directory tree, never through a mount point in it (a build killed half way may
    have left /proc, /sys or /dev mounted inside: removing through them would hit the machine's)."""
    def mounts_under() -> list[str]:
        out = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mp = line.split()[4].replace("\\040", " ")
            if mp == str(path) or mp.startswith(f"{path}/"):
                out.append(mp)
        return out

    for mp in sorted(mounts_under(), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)
    if mounts_under():
        log(f"not removing {path}: still mounted inside ({', '.join(mounts_under()[:3])})")
        return
    shutil.rmtree(path, ignore_errors=True)



def prepare_chroot(root: Path) -> None:
    """Mount points and files the lab needs in the chroot (idempotent; cheap)."""
    for d in ("lab", "opt/overcloud-lab"):
        (root / d).mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------- the lab's layout

MARKER = Path("/run/overcloud-openstack-lab.dir")  # the DIR of the lab that is up
ADDR = "127.0.0.1"
# Fixed ports (checked free before anything starts): one lab per machine.
PORTS = {
    "keystone": 24300, "placement": 24301, "glance": 24302, "nova": 24303, "neutron": 24304,
    "amqp": 24305, "erl_dist": 24306, "epmd": 24307, "mariadb": 24308,
}
REGION = "RegionOne"
# Neutron's migrations need MariaDB; Nova's three databases too (its api, conductor and scheduler
# write at once: on SQLite, parallel boots and deletes failed with "database is locked").
# Keystone, Placement and Glance (one serving process each) stay on SQLite in WAL mode.
MARIADB_DBS = ("neutron", "nova_api", "nova", "nova_cell0")
FLAVORS = [  # name, vcpus, ram_mb, disk_gb  (our small/medium/large: 0.5/1/2 cores, 512/1024/2048 MB)
    ("m1.small", 1, 512, 1),
    ("m1.medium", 1, 1024, 2),
    ("m1.large", 2, 2048, 4),
]
IMAGE = "debian-12-overcloud"
PROJECT = "overcloud"
USER = "overcloud"
SERVICE_USER = "oclab-service"
INSTANCE_PY = REPO / "lab" / "instance.py"
CODE = HERE / "python"  # our drivers; the chroot sees it at /opt/overcloud-lab (read-only)


class LabError(Exception):
    pass


def url(service: str, path: str = "") -> str:
    return f"http://{ADDR}:{PORTS[service]}{path}"


def starttime(pid: int) -> str | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def alive(pid: int, st: str | None) -> bool:
    return st is not None and starttime(pid) == st


def read_pids(d: Path) -> list[tuple[str, int, str]]:
    out = []
    try:
        for line in (d / "pids").read_text().splitlines():
            parts = line.split()
            if len(parts) == 3:
                out.append((parts[0], int(parts[1]), parts[2]))
    except FileNotFoundError:
        pass
    return out


def port_free(port: int) -> bool:
    import socket

    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((ADDR, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


# ---------------------------------------------------------------- running things in the chroot

# Each service gets its own private mount namespace: the chroot's root read-only (the cache stays
# as built), /proc /sys /dev of the machine, and the lab's own /run, /tmp, /etc/hosts, DIR at /lab
# and our drivers at /opt/overcloud-lab. Nothing is mounted in the machine's namespace. The shell
# execs chroot which execs the service: the PID we get is the service's.
_NS_SCRIPT = r"""
set -e
R=$1; D=$2; C=$3; shift 3
mount --bind "$R" "$R"
mount -o remount,bind,ro "$R"
mount --bind /proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount --bind "$D/run" "$R/run"
mount --bind "$D/tmp" "$R/tmp"
mount --bind "$D/tmp" "$R/var/tmp"
mount --bind "$D/etc/hosts" "$R/etc/hosts"
mount --bind "$D" "$R/lab"
mount --bind "$C" "$R/opt/overcloud-lab"
mount -o remount,bind,ro "$R/opt/overcloud-lab"
exec chroot "$R" "$@"
"""


class Lab:
    def __init__(self, d: Path):
        self.dir = d.resolve()
        self.root = chroot_path()
        with contextlib.suppress(OSError, ValueError, KeyError):  # a lab that is up keeps the chroot it was started from
            self.root = Path(json.loads((self.dir / "lab.json").read_text())["chroot"])
        self.secrets_file = self.dir / "secrets.json"
        self._secrets: dict[str, str] | None = None
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------ helpers

    @property
    def secrets(self) -> dict[str, str]:
        if self._secrets is None:
            if self.secrets_file.exists():
                self._secrets = json.loads(self.secrets_file.read_text())
            else:
                import secrets as _s

                self._secrets = {k: _s.token_urlsafe(18) for k in
                                 ("admin", "service", "user", "mariadb", "rabbit")}
                fd = os.open(self.secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump(self._secrets, f)
        return self._secrets

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        e = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/lab/home",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": "/opt/overcloud-lab",
        }
        e.update(extra or {})
        return e

    def ns_argv(self, argv: list[str]) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "--",
                "/bin/sh", "-c", _NS_SCRIPT, "sh", str(self.root), str(self.dir), str(CODE), *argv]

    def run(self, what: str, argv: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> str:
        """A command in the chroot, to its end; LabError with its output's tail when it fails."""
        t0 = time.monotonic()
        with open(self.dir / "log" / "setup.log", "ab") as logf:
            logf.write(f"\n=== {what}: {' '.join(argv)}\n".encode())
            logf.flush()
            r = subprocess.run(self.ns_argv(argv), env=self.env(env), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
            logf.write(r.stdout)
        out = r.stdout.decode(errors="replace")
        if r.returncode != 0:
            tail = " | ".join(out.strip().splitlines()[-6:])
            raise LabError(f"{what} failed (exit {r.returncode}): {tail}")
        self.timings[what] = round(time.monotonic() - t0, 1)
        return out

    def start(self, role: str, argv: list[str], env: dict[str, str] | None = None, chroot: bool = True) -> int:
        """Start a service in the chroot (or, chroot=False, on the machine), in its own session;
        record "role pid starttime"."""
        logf = open(self.dir / "log" / f"{role}.out", "ab")
        p = subprocess.Popen(self.ns_argv(argv) if chroot else argv, env=self.env(env), stdin=subprocess.DEVNULL,
                             stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        st = None
        for _ in range(50):
            st = starttime(p.pid)
            if st:
                break
            time.sleep(0.01)
        with open(self.dir / "pids", "a") as f:
            f.write(f"{role} {p.pid} {st}\n")
        services = self.dir / "services.json"  # how each service was started: `restart DIR ROLE`
        known = json.loads(services.read_text()) if services.exists() else {}
        known[role] = {"argv": argv, "env": env or {}, "chroot": chroot}
        services.write_text(json.dumps(known, indent=1) + "\n")
        self._children = getattr(self, "_children", {})
        self._children[role] = p
        return p.pid

    def check_running(self, role: str) -> None:
        p = getattr(self, "_children", {}).get(role)
        if p is not None and p.poll() is not None:
            tail = ""
            try:
                lines = (self.dir / "log" / f"{role}.out").read_text(errors="replace").strip().splitlines()
                tail = " | ".join(lines[-5:])
            except OSError:
                pass
            raise LabError(f"{role} exited ({p.returncode}) while starting: {tail} (log: {self.dir}/log/{role}.*)")

    def wait(self, role: str, probe, timeout: float = 120) -> None:
        t0 = time.monotonic()
        while True:
            self.check_running(role)
            try:
                if probe():
                    self.timings[f"{role} ready"] = round(time.monotonic() - t0, 1)
                    return
            except OSError:
                pass
            if time.monotonic() - t0 > timeout:
                raise LabError(f"{role} not ready after {timeout:.0f} s (log: {self.dir}/log/{role}.*)")
            time.sleep(0.3)

    # ------------------------------------------------------------ configuration

    def write_configs(self) -> None:
        s = self.secrets
        d = self.dir
        for sub in ("etc", "log", "run", "tmp", "home", "keystone", "placement", "glance/images",
                    "glance/staging", "glance/tasks", "nova/instances", "nova/lock", "neutron/lock",
                    "mysql", "rabbitmq", "instances"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d / "tmp", 0o1777)
        (d / "etc" / "hosts").write_text("127.0.0.1 localhost oclab-compute\n::1 localhost\n")
        ks = url("keystone", "/v3")
        service_user = f"""auth_url = {ks}
auth_type = password
project_domain_name = Default
user_domain_name = Default
project_name = service
username = {SERVICE_USER}
password = {s['service']}
region_name = {REGION}
"""
        authtoken = f"[keystone_authtoken]\nwww_authenticate_uri = {ks}\n{service_user}service_token_roles_required = true\n"
        svc_auth = f"{service_user}valid_interfaces = public\n"
        rabbit = f"rabbit://oclab:{s['rabbit']}@{ADDR}:{PORTS['amqp']}/"
        db = f"mysql+pymysql://oclab:{s['mariadb']}@{ADDR}:{PORTS['mariadb']}"
        files = {
            "keystone.conf": f"""[DEFAULT]
log_file = /lab/log/keystone.log
[database]
connection = sqlite:////lab/keystone/keystone.sqlite
[fernet_tokens]
key_repository = /lab/keystone/fernet-keys
[fernet_receipts]
key_repository = /lab/keystone/fernet-keys
[credential]
key_repository = /lab/keystone/credential-keys
[token]
provider = fernet
expiration = 43200
""",
            "placement/placement.conf": f"""[DEFAULT]
log_file = /lab/log/placement.log
[api]
auth_strategy = keystone
[placement_database]
connection = sqlite:////lab/placement/placement.sqlite
{authtoken}""",
            "glance-api.conf": f"""[DEFAULT]
bind_host = {ADDR}
bind_port = {PORTS['glance']}
workers = 1
log_file = /lab/log/glance-api.log
enabled_backends = fs:file
[database]
connection = sqlite:////lab/glance/glance.sqlite
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = /lab/glance/images
[os_glance_staging_store]
filesystem_store_datadir = /lab/glance/staging
[os_glance_tasks_store]
filesystem_store_datadir = /lab/glance/tasks
[paste_deploy]
flavor = keystone
config_file = /etc/glance/glance-api-paste.ini
[oslo_concurrency]
lock_path = /lab/glance
{authtoken}""",
            "nova.conf": f"""[DEFAULT]
host = oclab-compute
my_ip = {ADDR}
state_path = /lab/nova
instances_path = /lab/nova/instances
transport_url = {rabbit}
compute_driver = oclab.NamespaceDriver
enabled_apis = osapi_compute
osapi_compute_listen = {ADDR}
osapi_compute_listen_port = {PORTS['nova']}
osapi_compute_workers = 1
vif_plugging_is_fatal = false
vif_plugging_timeout = 0
sync_power_state_interval = 30
heal_instance_info_cache_interval = -1
[api]
auth_strategy = keystone
[wsgi]
api_paste_config = /etc/nova/api-paste.ini
[api_database]
connection = {db}/nova_api
[database]
connection = {db}/nova
[conductor]
workers = 1
[scheduler]
workers = 1
discover_hosts_in_cells_interval = 5
max_attempts = 1
[oslo_concurrency]
lock_path = /lab/nova/lock
[oslo_messaging_notifications]
driver = noop
[placement]
{svc_auth}[neutron]
{svc_auth}[glance]
valid_interfaces = public
region_name = {REGION}
[cinder]
os_region_name = {REGION}
[service_user]
send_service_user_token = false
{authtoken}""",
            "neutron.conf": f"""[DEFAULT]
bind_host = {ADDR}
bind_port = {PORTS['neutron']}
core_plugin = ml2
service_plugins = router
auth_strategy = keystone
transport_url = {rabbit}
api_workers = 0
rpc_workers = 1
rpc_state_report_workers = 0
state_path = /lab/neutron
api_paste_config = /etc/neutron/api-paste.ini
allow_overlapping_ips = true
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
dhcp_agent_notification = false
log_file = /lab/log/neutron-server.log
[database]
connection = {db}/neutron
[oslo_concurrency]
lock_path = /lab/neutron/lock
[oslo_messaging_notifications]
driver = noop
{authtoken}""",
            "ml2_conf.ini": """[ml2]
type_drivers = flat,vlan,vxlan
tenant_network_types = vxlan
mechanism_drivers = overcloud_lab
extension_drivers = port_security
[ml2_type_flat]
flat_networks = *
[ml2_type_vxlan]
vni_ranges = 1:10000
[securitygroup]
enable_security_group = true
""",
            "rabbitmq/rabbitmq.conf": f"""listeners.tcp.default = {ADDR}:{PORTS['amqp']}
default_user = oclab
default_pass = {s['rabbit']}
loopback_users = none
log.console = true
log.file = false
""",
            "rabbitmq/rabbitmq-env.conf": "",
            "rabbitmq/enabled_plugins": "[].\n",
        }
        # nova-compute reaches the databases through the conductor only: with a connection in its
        # config it would query the cells' databases itself (and log "No DB access allowed")
        nova_compute, skip = [], False
        for line in files["nova.conf"].splitlines(keepends=True):
            if line.startswith("["):
                skip = line.strip() in ("[api_database]", "[database]")
            if not skip:
                nova_compute.append(line)
        files["nova-compute.conf"] = "".join(nova_compute)
        for name, text in files.items():
            p = d / "etc" / name
            p.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)

    # ------------------------------------------------------------ the services, one by one

    def setup_mariadb_and_neutron(self) -> None:
        if not (self.dir / "mysql" / "mysql").exists():
            self.run("mariadb-install-db", ["mariadb-install-db", "--no-defaults", "--datadir=/lab/mysql",
                                            "--user=root", "--auth-root-authentication-method=socket",
                                            "--skip-test-db", "--basedir=/usr"])
        self.start("mariadb", ["mariadbd", "--no-defaults", "--user=root", "--datadir=/lab/mysql",
                               f"--bind-address={ADDR}", f"--port={PORTS['mariadb']}",
                               "--socket=/run/mysqld.sock", "--pid-file=/run/mysqld.pid",
                               "--skip-name-resolve", "--innodb-buffer-pool-size=64M",
                               "--performance-schema=off", "--max-connections=300",
                               # a lab's databases: no durability across a power cut, much faster migrations
                               "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
                               "--innodb-flush-method=nosync", "--skip-log-bin",
                               "--log-error=/lab/log/mariadb.log"])
        self.wait("mariadb", lambda: tcp_ok(PORTS["mariadb"]), 60)
        pw = self.secrets["mariadb"]
        sql = self.dir / "run" / "neutron-db.sql"  # not on a command line: the password stays out of ps and logs
        fd = os.open(sql, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"CREATE USER IF NOT EXISTS 'oclab'@'127.0.0.1' IDENTIFIED BY '{pw}';\n"
                    f"ALTER USER 'oclab'@'127.0.0.1' IDENTIFIED BY '{pw}';\n")
            for db in MARIADB_DBS:
                f.write(f"CREATE DATABASE IF NOT EXISTS {db} CHARACTER SET utf8mb4;\n"
                        f"GRANT ALL ON {db}.* TO 'oclab'@'127.0.0.1';\n")
        try:
            self.run("mariadb users", ["mariadb", "--no-defaults", "-S", "/run/mysqld.sock", "-e",
                                       "source /run/neutron-db.sql"])
        finally:
            sql.unlink(missing_ok=True)
        parallel([lambda: self.run("neutron-db-manage", ["neutron-db-manage", "--config-file", "/lab/etc/neutron.conf",
                                                         "--config-file", "/lab/etc/ml2_conf.ini", "upgrade", "heads"]),
                  self.setup_nova_db])

    def instance_rootfs(self) -> None:
        """The servers' root filesystem (lab/instance.py, cached once per machine): made now rather
        than in the first server's boot."""
        if not INSTANCE_PY.exists():
            return
        t0 = time.monotonic()
        with open(self.dir / "log" / "setup.log", "ab") as logf:
            r = subprocess.run(["/usr/bin/python3", str(INSTANCE_PY), "rootfs"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=logf, timeout=1800)
        if r.returncode != 0:
            raise LabError(f"lab/instance.py rootfs failed (exit {r.returncode}; log: {self.dir}/log/setup.log)")
        self.timings["instance rootfs"] = round(time.monotonic() - t0, 1)

    def setup_rabbitmq(self) -> None:
        env = self.rabbit_env()
        self.start("epmd", ["epmd", "-address", ADDR, "-port", str(PORTS["epmd"])], env)
        self.wait("epmd", lambda: tcp_ok(PORTS["epmd"]), 30)
        self.start("rabbitmq", ["/usr/lib/rabbitmq/bin/rabbitmq-server"], env)
        self.wait("rabbitmq", amqp_ok, 120)

    def rabbit_env(self) -> dict[str, str]:
        return {
            "HOME": "/lab/rabbitmq",
            "RABBITMQ_CONF_ENV_FILE": "/lab/etc/rabbitmq/rabbitmq-env.conf",
            "RABBITMQ_CONFIG_FILE": "/lab/etc/rabbitmq/rabbitmq.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": "/lab/etc/rabbitmq/advanced.config",
            "RABBITMQ_ENABLED_PLUGINS_FILE": "/lab/etc/rabbitmq/enabled_plugins",
            "RABBITMQ_MNESIA_BASE": "/lab/rabbitmq/mnesia",
            "RABBITMQ_LOG_BASE": "/lab/log",
            "RABBITMQ_PID_FILE": "/run/rabbitmq.pid",
            "RABBITMQ_NODENAME": "rabbit@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": ADDR,
            "RABBITMQ_NODE_PORT": str(PORTS["amqp"]),
            "RABBITMQ_DIST_PORT": str(PORTS["erl_dist"]),
            "ERL_EPMD_PORT": str(PORTS["epmd"]),
            "ERL_EPMD_ADDRESS": ADDR,
        }

    def setup_keystone(self) -> None:
        conf = ["--config-file", "/lab/etc/keystone.conf"]
        self.run("keystone db_sync", ["keystone-manage", *conf, "db_sync"])
        wal("keystone", self.dir / "keystone" / "keystone.sqlite")
        self.run("keystone fernet_setup", ["keystone-manage", *conf, "fernet_setup",
                                           "--keystone-user", "root", "--keystone-group", "root"])
        self.run("keystone credential_setup", ["keystone-manage", *conf, "credential_setup",
                                               "--keystone-user", "root", "--keystone-group", "root"])
        ks = url("keystone", "/v3/")
        self.run("keystone bootstrap", ["keystone-manage", *conf, "bootstrap",
                                        "--bootstrap-username", "admin",
                                        "--bootstrap-project-name", "admin",
                                        "--bootstrap-role-name", "admin",
                                        "--bootstrap-service-name", "keystone",
                                        "--bootstrap-region-id", REGION,
                                        "--bootstrap-admin-url", ks,
                                        "--bootstrap-internal-url", ks,
                                        "--bootstrap-public-url", ks],
                 {"OS_BOOTSTRAP_PASSWORD": self.secrets["admin"]})
        self.start("keystone", uwsgi("keystone", "/usr/bin/keystone-wsgi-public"),
                   {"OS_KEYSTONE_CONFIG_FILES": "/lab/etc/keystone.conf"})
        self.wait("keystone", lambda: http_ok(url("keystone", "/v3")), 120)

    def setup_placement_glance(self) -> None:
        self.run("placement db sync", ["placement-manage", "--config-file",
                                       "/lab/etc/placement/placement.conf", "db", "sync"])
        wal("placement", self.dir / "placement" / "placement.sqlite")
        self.run("glance db_sync", ["glance-manage", "--config-file", "/lab/etc/glance-api.conf", "db_sync"])
        wal("glance", self.dir / "glance" / "glance.sqlite")

    def setup_nova_db(self) -> None:
        conf = ["nova-manage", "--config-file", "/lab/etc/nova.conf"]
        self.run("nova api_db sync", [*conf, "api_db", "sync"])
        self.run("nova map_cell0", [*conf, "cell_v2", "map_cell0"])  # nova_cell0 beside [database]'s
        self.run("nova create_cell", [*conf, "cell_v2", "create_cell", "--name", "cell1"])
        self.run("nova db sync", [*conf, "db", "sync"])

    def start_apis(self) -> None:
        self.start("placement", uwsgi("placement", "/usr/bin/placement-api"),
                   {"OS_PLACEMENT_CONFIG_DIR": "/lab/etc/placement"})
        self.start("glance-api", ["glance-api", "--config-file", "/lab/etc/glance-api.conf"])
        self.start("neutron-server", ["neutron-server", "--config-file", "/lab/etc/neutron.conf",
                                      "--config-file", "/lab/etc/ml2_conf.ini"])
        nova = ["--config-file", "/lab/etc/nova.conf"]
        self.start("nova-api", ["nova-api", *nova, "--log-file", "/lab/log/nova-api.log"])
        self.start("nova-conductor", ["nova-conductor", *nova, "--log-file", "/lab/log/nova-conductor.log"])
        self.start("nova-scheduler", ["nova-scheduler", *nova, "--log-file", "/lab/log/nova-scheduler.log"])
        self.wait("placement", lambda: http_ok(url("placement", "/")), 120)
        # The compute driver makes instances in the machine's namespaces: it enters the mount
        # namespace of this anchor (a process of ours outside the chroot) to run lab/instance.py.
        anchor = self.start("anchor", ["sleep", "infinity"], chroot=False)
        self.start("nova-compute", ["python3", "-m", "overcloud_lab_compute", "--config-file", "/lab/etc/nova-compute.conf",
                                    "--log-file", "/lab/log/nova-compute.log"],
                   {"OVERCLOUD_LAB_HOST_DIR": str(self.dir), "OVERCLOUD_LAB_CHROOT_DIR": "/lab",
                    "OVERCLOUD_LAB_INSTANCE_PY": str(INSTANCE_PY), "OVERCLOUD_LAB_MNTNS_PID": str(anchor)})
        self.wait("glance-api", lambda: http_ok(url("glance", "/")), 120)
        self.wait("neutron-server", lambda: http_ok(url("neutron", "/")), 180)
        self.wait("nova-api", lambda: http_ok(url("nova", "/")), 180)

    # ------------------------------------------------------------ bootstrap through the APIs

    def bootstrap_identity(self) -> dict[str, str]:
        """Service project/user and catalog; project `overcloud`, its member user, an application credential."""
        s = self.secrets
        admin = Rest(token_for("admin", s["admin"], "admin"))
        roles = {r["name"]: r["id"] for r in admin.get(url("keystone", "/v3/roles"))["roles"]}
        service_pid = admin.ensure(url("keystone", "/v3/projects"), "project",
                                   {"name": "service", "domain_id": "default"})
        project_pid = admin.ensure(url("keystone", "/v3/projects"), "project",
                                   {"name": PROJECT, "domain_id": "default",
                                    "description": "the Tower's project in the OpenStack lab"})
        svc_uid = admin.ensure(url("keystone", "/v3/users"), "user",
                               {"name": SERVICE_USER, "domain_id": "default", "password": s["service"]})
        user_uid = admin.ensure(url("keystone", "/v3/users"), "user",
                                {"name": USER, "domain_id": "default", "password": s["user"]})
        if "service" not in roles:  # services send their own token beside the user's: it must have "service"
            roles["service"] = admin.post(url("keystone", "/v3/roles"), {"role": {"name": "service"}})["role"]["id"]
        for role in ("admin", "service"):
            admin.put(url("keystone", f"/v3/projects/{service_pid}/users/{svc_uid}/roles/{roles[role]}"))
        admin.put(url("keystone", f"/v3/projects/{project_pid}/users/{user_uid}/roles/{roles['member']}"))
        # the admin may look at (and lower the quotas of) project overcloud
        for name, typ, ep in (("nova", "compute", url("nova", "/v2.1")),
                              ("placement", "placement", url("placement")),
                              ("glance", "image", url("glance")),
                              ("neutron", "network", url("neutron"))):
            sid = admin.ensure(url("keystone", "/v3/services"), "service", {"name": name, "type": typ})
            have = admin.get(url("keystone", f"/v3/endpoints?service_id={sid}"))["endpoints"]
            for iface in ("public", "internal", "admin"):
                if not any(e["interface"] == iface for e in have):
                    admin.post(url("keystone", "/v3/endpoints"), {"endpoint": {
                        "service_id": sid, "interface": iface, "url": ep, "region_id": REGION}})
        user = Rest(token_for(USER, s["user"], PROJECT))
        acs = user.get(url("keystone", f"/v3/users/{user_uid}/application_credentials?name=overcloud-lab"))
        for ac in acs["application_credentials"]:  # a re-run of up: a fresh secret
            user.delete(url("keystone", f"/v3/users/{user_uid}/application_credentials/{ac['id']}"))
        ac = user.post(url("keystone", f"/v3/users/{user_uid}/application_credentials"), {
            "application_credential": {"name": "overcloud-lab",
                                       "description": "the Tower's credential (scripts/openstack-lab.sh)"}})
        return {"project_id": project_pid, "user_id": user_uid,
                "appcred_id": ac["application_credential"]["id"],
                "appcred_secret": ac["application_credential"]["secret"]}

    def bootstrap_compute_image(self) -> None:
        admin = Rest(token_for("admin", self.secrets["admin"], "admin"))
        have = {f["name"] for f in admin.get(url("nova", "/v2.1/flavors?is_public=None"))["flavors"]}
        for name, vcpus, ram, disk in FLAVORS:
            if name not in have:
                admin.post(url("nova", "/v2.1/flavors"), {"flavor": {
                    "name": name, "id": name, "vcpus": vcpus, "ram": ram, "disk": disk}})
        imgs = admin.get(url("glance", f"/v2/images?name={IMAGE}"))["images"]
        if not any(i["status"] == "active" for i in imgs):
            img = admin.post(url("glance", "/v2/images"), {
                "name": IMAGE, "disk_format": "raw", "container_format": "bare", "visibility": "public",
                "os_distro": "debian", "os_version": "12"})
            payload = (b"The OpenStack lab's image: never booted. Servers are namespace instances over "
                       b"lab/instance.py's cached Debian root filesystem (lab/openstack/python/overcloud_lab_nova.py).\n")
            admin.put(url("glance", f"/v2/images/{img['id']}/file"), raw=payload,
                      headers={"Content-Type": "application/octet-stream"})

    def wait_compute(self, timeout: float = 180) -> None:
        """Until the compute host is mapped into the cell and its resource provider has inventory."""
        admin = Rest(token_for("admin", self.secrets["admin"], "admin"))
        t0 = time.monotonic()
        discovered = False
        while True:
            self.check_running("nova-compute")
            svcs = admin.get(url("nova", "/v2.1/os-services?binary=nova-compute"))["services"]
            up = [x for x in svcs if x["state"] == "up"]
            if up and not discovered:
                self.run("nova discover_hosts", ["nova-manage", "--config-file", "/lab/etc/nova.conf",
                                                 "cell_v2", "discover_hosts"])
                discovered = True
            if discovered:
                hv = admin.get(url("nova", "/v2.1/os-hypervisors"))["hypervisors"]
                rps = admin.get(url("placement", "/resource_providers"),
                                headers={"OpenStack-API-Version": "placement 1.0"})["resource_providers"]
                if hv and rps:
                    inv = admin.get(url("placement", f"/resource_providers/{rps[0]['uuid']}/inventories"),
                                    headers={"OpenStack-API-Version": "placement 1.0"})["inventories"]
                    if "VCPU" in inv:
                        self.timings["compute ready"] = round(time.monotonic() - t0, 1)
                        return
            if time.monotonic() - t0 > timeout:
                raise LabError(f"nova-compute not registered after {timeout:.0f} s (log: {self.dir}/log/nova-compute.*)")
            time.sleep(1)

    # ------------------------------------------------------------ what up leaves for the user

    def write_outputs(self, ident: dict[str, str]) -> None:
        s = self.secrets
        ks = url("keystone", "/v3")

        def q(v) -> str:
            return json.dumps(v)

        clouds = f"""# Written by scripts/openstack-lab.sh up {self.dir}: the OpenStack lab (docs/underclouds.md).
# Secrets: keep this file private (mode 0600).
clouds:
  overcloud-lab:               # project user `{USER}` (member of project `{PROJECT}`)
    auth:
      auth_url: {q(ks)}
      username: {q(USER)}
      password: {q(s['user'])}
      project_name: {q(PROJECT)}
      user_domain_name: Default
      project_domain_name: Default
    region_name: {REGION}
    identity_api_version: 3
    interface: public
  overcloud-lab-appcred:       # the same user's application credential (project `{PROJECT}`)
    auth_type: v3applicationcredential
    auth:
      auth_url: {q(ks)}
      application_credential_id: {q(ident['appcred_id'])}
      application_credential_secret: {q(ident['appcred_secret'])}
    region_name: {REGION}
    identity_api_version: 3
    interface: public
"""
        admin = f"""# Written by scripts/openstack-lab.sh up {self.dir}: the OpenStack lab's admin, for tests only
# (lower project `{PROJECT}`'s quotas, make flavors). Secrets: keep this file private (mode 0600).
clouds:
  overcloud-lab-admin:
    auth:
      auth_url: {q(ks)}
      username: admin
      password: {q(s['admin'])}
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: {REGION}
    identity_api_version: 3
    interface: public
"""
        for name, text in (("clouds.yaml", clouds), ("clouds-admin.yaml", admin)):
            fd = os.open(self.dir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        sites = f"""# Written by scripts/openstack-lab.sh up {self.dir}: the OpenStack lab (docs/underclouds.md).
# Usable as OVERCLOUD_SITES_FILE (the credentials are in clouds.yaml beside it).
- name: openstack-1
  kind: openstack
  cloud: overcloud-lab
  clouds_file: clouds.yaml
  region: {REGION}
  image: {IMAGE}
  flavors: {{small: m1.small, medium: m1.medium, large: m1.large}}
  network: {{cidr_pool: {TENANT_RANGE}, external_network: null, floating_ip: false}}
  ssh_cidrs: [{TENANT_RANGE}]
  nodeport_cidrs: []
  user: overcloud
  box_pool: 10.96.0.0/16
  max_servers: 20
  labels: {{overcloud.io/tier: cloud}}
"""
        (self.dir / "sites.yaml").write_text(sites)
        (self.dir / "lab.json").write_text(json.dumps({
            "dir": str(self.dir), "chroot": str(self.root), "ports": PORTS,
            "keystone": ks, "project_id": ident["project_id"], "timings": self.timings,
        }, indent=1) + "\n")

    # ------------------------------------------------------------ up / down / status

    def up(self) -> None:
        t0 = time.monotonic()
        if MARKER.exists():
            other = MARKER.read_text().strip()
            if not any(alive(p, st) for _, p, st in read_pids(Path(other))):
                # its processes were ended without `down` (e.g. a machine's session ending): its
                # instances' namespaces and bridges may still be there (a bridge on a subnet a new
                # lab reuses would take its route): clean them as `down` would
                log(f"a stale lab at {other} (none of its processes runs): cleaning what it left")
                Lab(Path(other)).down(quiet=True)
                MARKER.unlink(missing_ok=True)
        if MARKER.exists():
            raise LabError(f"an OpenStack lab is already up at {other} (one per machine): "
                           f"scripts/openstack-lab.sh down {other}")
        busy = [f"{k} {p}" for k, p in PORTS.items() if not port_free(p)]
        if busy:
            raise LabError(f"ports in use on {ADDR}: {', '.join(busy)} (the lab's ports are fixed: free them)")
        if not INSTANCE_PY.exists():
            log(f"warning: {INSTANCE_PY} is missing: servers will go to ERROR until it exists")
        tb = time.monotonic()
        self.root = build()
        self.timings["chroot"] = round(time.monotonic() - tb, 1)
        prepare_chroot(self.root)
        remove_unused_chroots(keep=self.root)
        self.dir.mkdir(parents=True, exist_ok=True)
        try:  # taken atomically: of two ups at once, one goes on
            fd = os.open(MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise LabError(f"an OpenStack lab is already up at {MARKER.read_text().strip()} (one per machine)") from None
        with os.fdopen(fd, "w") as f:
            f.write(str(self.dir) + "\n")
        try:
            # the tenant networks' range unreachable here until a server's bridge gives its subnet a
            # route: a packet to a server not booted yet, or deleted, fails at once instead of
            # taking the machine's default route off the machine (removed by down)
            subprocess.run(["ip", "route", "replace", "unreachable", TENANT_RANGE, "proto", RANGE_PROTO], check=True,
                           capture_output=True)
            self.wipe()  # every up is a new cloud: no databases, servers or credentials of an earlier one
            (self.dir / "lab.json").write_text(json.dumps({"dir": str(self.dir), "chroot": str(self.root)}) + "\n")
            self.write_configs()
            parallel([self.setup_keystone, self.setup_mariadb_and_neutron, self.setup_rabbitmq,
                      self.setup_placement_glance, self.instance_rootfs])
            ident = self.bootstrap_identity()
            self.start_apis()
            self.bootstrap_compute_image()
            self.wait_compute()
            self.timings["up"] = round(time.monotonic() - t0, 1)
            self.write_outputs(ident)
        except BaseException as exc:
            log(f"up failed: {exc}; removing what it made")
            try:
                self.down(quiet=True)
            finally:
                raise
        log(f"up in {time.monotonic() - t0:.0f} s: {self.dir}/clouds.yaml, {self.dir}/sites.yaml")

    STATE = ("etc", "log", "run", "tmp", "home", "keystone", "placement", "glance", "nova", "neutron", "mysql",
             "rabbitmq", "instances", "pids", "services.json", "secrets.json", "lab.json", "clouds.yaml",
             "clouds-admin.yaml", "sites.yaml")

    def wipe(self) -> None:
        for name in self.STATE:
            p = self.dir / name
            if p.is_dir() and not p.is_symlink():
                safe_rmtree(p)
            else:
                p.unlink(missing_ok=True)
        self._secrets = None

    def instance_names(self) -> list[str]:
        names = set()
        d = self.dir / "instances"
        if d.is_dir():
            for f in d.iterdir():
                if f.name.endswith(".nova.json"):
                    names.add(f.name[: -len(".nova.json")])
        if INSTANCE_PY.exists() and d.is_dir():
            r = subprocess.run(["/usr/bin/python3", str(INSTANCE_PY), "list", "--state-dir", str(d)],
                               capture_output=True, text=True)
            if r.returncode == 0:
                try:
                    data = json.loads(r.stdout or "[]")
                    for x in data if isinstance(data, list) else data.get("instances", []):
                        names.add(x["name"] if isinstance(x, dict) else str(x))
                except ValueError:
                    names.update(r.stdout.split())
        return sorted(names)

    def down(self, quiet: bool = False) -> None:
        # the services first (no boot starts or goes on: an instance.py boot under way is in
        # nova-compute's process group), then the servers' instances, namespaces and bridges
        pids = read_pids(self.dir)
        for sig_round, sig in enumerate((15, 9)):
            for role, pid, st in reversed(pids):
                if alive(pid, st):
                    try:
                        os.killpg(pid, sig)  # the service and its workers (its own session/group)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + (20 if sig_round == 0 else 5)
            while time.monotonic() < deadline and any(alive(p, s) for _, p, s in pids):
                time.sleep(0.2)
        # whatever still runs rooted in the chroot (one lab per machine: ours)
        for pid in chroot_processes(self.root):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        left = [f"{r} {p}" for r, p, s in pids if alive(p, s)]
        if left:
            raise LabError(f"still running after SIGKILL: {', '.join(left)}")
        bridges = set()
        d = self.dir / "instances"
        for f in d.glob("*.nova.json") if d.is_dir() else []:
            try:
                bridges.add(json.loads(f.read_text())["bridge"])
            except (OSError, ValueError, KeyError):
                pass
        for name in self.instance_names():
            if INSTANCE_PY.exists():
                r = subprocess.run(["/usr/bin/python3", str(INSTANCE_PY), "kill", "--name", name,
                                    "--state-dir", str(d)], capture_output=True, text=True)
                if r.returncode != 0:
                    log(f"instance {name}: kill failed: {r.stderr.strip()[-300:]}")
            for suffix in (".nova.json", ".user-data", ".meta-data"):
                (d / (name + suffix)).unlink(missing_ok=True)
        for br in sorted(bridges):  # lab/instance.py removes a bridge with its last instance; in case it could not
            brif = Path(f"/sys/class/net/{br}/brif")
            if brif.is_dir() and not any(brif.iterdir()):
                subprocess.run(["ip", "link", "del", br], capture_output=True)
        subprocess.run(["ip", "route", "del", "unreachable", TENANT_RANGE, "proto", RANGE_PROTO], capture_output=True)
        (self.dir / "pids").unlink(missing_ok=True)
        for f in (self.dir / "run").glob("*") if (self.dir / "run").is_dir() else []:
            if f.is_file() or f.is_socket():
                f.unlink(missing_ok=True)
        if MARKER.exists() and MARKER.read_text().strip() == str(self.dir):
            MARKER.unlink()
        if not quiet:
            log(f"down: {self.dir}")

    def _known(self, role: str) -> dict:
        try:
            known = json.loads((self.dir / "services.json").read_text())
        except FileNotFoundError:
            raise LabError(f"no lab at {self.dir}") from None
        if role not in known:
            raise LabError(f"no service {role!r} (services: {', '.join(known)})")
        return known[role]

    def restart(self, role: str) -> None:
        """Stop one service (by its recorded PID) and start it again as `up` did (for developers)."""
        self.stop(role)
        self.start_again(role)
        log(f"restarted {role}")

    def start_again(self, role: str) -> None:
        """Start a stopped service as `up` did; wait until it answers when it is an API."""
        k = self._known(role)
        recs = read_pids(self.dir)
        if any(r == role and alive(p, st) for r, p, st in recs):
            raise LabError(f"{role} runs already")
        (self.dir / "pids").write_text("".join(f"{r} {p} {st}\n" for r, p, st in recs if r != role))
        self.start(role, k["argv"], k["env"], k.get("chroot", True))
        probes = {"keystone": lambda: http_ok(url("keystone", "/v3")),
                  "placement": lambda: http_ok(url("placement", "/")),
                  "glance-api": lambda: http_ok(url("glance", "/")),
                  "neutron-server": lambda: http_ok(url("neutron", "/")),
                  "nova-api": lambda: http_ok(url("nova", "/")),
                  "rabbitmq": amqp_ok, "mariadb": lambda: tcp_ok(PORTS["mariadb"])}
        if role in probes:
            self.wait(role, probes[role], 180)

    def stop(self, role: str) -> None:
        """Stop one service (SIGTERM to its process group, SIGKILL after 20 s); the others keep running."""
        self._known(role)
        keep = []
        for r, pid, st in read_pids(self.dir):
            if r != role:
                keep.append(f"{r} {pid} {st}")
                continue
            if alive(pid, st):
                os.killpg(pid, 15)
                deadline = time.monotonic() + 20
                while alive(pid, st) and time.monotonic() < deadline:
                    time.sleep(0.2)
                if alive(pid, st):
                    os.killpg(pid, 9)
        (self.dir / "pids").write_text("".join(x + "\n" for x in keep))

    def status(self) -> dict:
        procs = [{"role": r, "pid": p, "alive": alive(p, s)} for r, p, s in read_pids(self.dir)]
        up = MARKER.exists() and MARKER.read_text().strip() == str(self.dir)
        return {"dir": str(self.dir), "up": up, "processes": procs,
                "instances": self.instance_names(), "ports": PORTS,
                "rss_mb": round(sum(rss_kb(p) for p in lab_pids(procs, self.root)) / 1024) if up else 0}


# ---------------------------------------------------------------- small helpers


def parallel(fns) -> None:
    import threading

    errors: list[BaseException] = []

    def runner(fn):
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    ts = [threading.Thread(target=runner, args=(f,)) for f in fns]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def uwsgi(role: str, wsgi_file: str) -> list[str]:
    port = PORTS[role]
    return ["uwsgi", "--plugin", "python3,http", "--http", f"{ADDR}:{port}", "--http-keepalive",
            "--wsgi-file", wsgi_file, "--master", "--processes", "1", "--threads", "1",
            "--die-on-term", "--need-app", "--buffer-size", "65535", "--lazy-apps"]


def wal(what: str, path: Path) -> None:
    import sqlite3

    c = sqlite3.connect(path)
    try:
        c.execute("PRAGMA journal_mode=WAL")
    finally:
        c.close()


def tcp_ok(port: int) -> bool:
    import socket

    with socket.create_connection((ADDR, port), timeout=1):
        return True


def amqp_ok() -> bool:
    import socket

    with socket.create_connection((ADDR, PORTS["amqp"]), timeout=2) as s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        s.settimeout(3)
        return s.recv(1)[:1] == b"\x01"  # a Connection.Start method frame


def http_ok(u: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with _opener().open(u, timeout=3) as r:
            return r.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500


def _opener():
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def token_for(user: str, password: str, project: str) -> str:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}
    _, headers, _ = _request("POST", url("keystone", "/v3/auth/tokens"), None, body)
    return headers["X-Subject-Token"]


def _request(method: str, u: str, token: str | None, body=None, raw: bytes | None = None,
             headers: dict | None = None):
    import urllib.error
    import urllib.request

    h = {"Accept": "application/json"}
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    if token:
        h["X-Auth-Token"] = token
    h.update(headers or {})
    req = urllib.request.Request(u, data=data, method=method, headers=h)
    for attempt in range(10):
        try:
            with _opener().open(req, timeout=60) as r:
                text = r.read()
                return r.status, r.headers, (json.loads(text) if text.strip() else None)
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300]
            if e.code in (502, 503) and attempt < 9:
                time.sleep(1)
                continue
            raise LabError(f"{method} {u.split('?')[0]}: HTTP {e.code}: {detail}") from None
        except (ConnectionError, urllib.error.URLError) as e:
            if attempt < 9:
                time.sleep(1)
                continue
            raise LabError(f"{method} {u.split('?')[0]}: {e}") from None
    raise AssertionError("unreachable")


class Rest:
    def __init__(self, token: str):
        self.token = token

    def get(self, u: str, headers: dict | None = None):
        return _request("GET", u, self.token, headers=headers)[2]

    def post(self, u: str, body):
        return _request("POST", u, self.token, body)[2]

    def put(self, u: str, body=None, raw: bytes | None = None, headers: dict | None = None):
        return _request("PUT", u, self.token, body, raw=raw, headers=headers)[2]

    def delete(self, u: str):
        return _request("DELETE", u, self.token)[2]

    def ensure(self, collection: str, kind: str, attrs: dict) -> str:
        """The id of the Keystone entity of that name (made when missing)."""
        found = self.get(f"{collection}?name={attrs['name']}")[kind + "s"]
        if found:
            return found[0]["id"]
        return self.post(collection, {kind: attrs})[kind]["id"]


def chroot_processes(root: Path) -> list[int]:
    """PIDs of processes whose root directory is the lab's chroot (ours: one lab per machine)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.readlink(p / "root") == str(root):
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def lab_pids(procs: list[dict], root: Path) -> list[int]:
    return sorted(set(chroot_processes(root)))


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main(argv: list[str]) -> int:
    aliases = {"stop-keystone": ("stop", "keystone"), "start-keystone": ("start", "keystone")}
    if argv and argv[0] in aliases and len(argv) == 2:
        argv = [aliases[argv[0]][0], argv[1], aliases[argv[0]][1]]
    if not argv or argv[0] not in ("build", "up", "down", "status", "restart", "stop", "start"):
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[0]
    if cmd == "build":
        print(build())
        return 0
    with_role = cmd in ("restart", "stop", "start")
    if len(argv) != (3 if with_role else 2):
        print(f"usage: {sys.argv[0]} {cmd} DIR{' ROLE' if with_role else ''}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        die("needs root (network namespaces, chroot, mounts)")
    lab = Lab(Path(argv[1]))
    try:
        if cmd == "up":
            lab.up()
        elif cmd == "down":
            lab.down()
        elif cmd == "restart":
            lab.restart(argv[2])
        elif cmd == "stop":
            lab.stop(argv[2])
        elif cmd == "start":
            lab.start_again(argv[2])
        else:
            print(json.dumps(lab.status(), indent=1))
    except LabError as exc:
        die(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
