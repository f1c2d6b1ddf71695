"""Nova compute driver of the OpenStack lab: each server is a namespace instance (lab/instance.py).

Written after studying Nova's fake driver (nova/virt/fake.py), which keeps instances in a dict
and boots nothing. This one boots each server for real: a network namespace at the port's fixed
IP on a bridge per Neutron network (the subnet's gateway on the bridge, in the machine's root
namespace), its own mount/UTS/PID namespaces over an overlayfs Debian root, cloud-init running the
server's user data from a NoCloud seed, then sshd. `destroy` kills it. Power states are what the
process table says: RUNNING while the instance's init lives, SHUTDOWN once it is gone.

nova-compute runs in the lab's chroot (lab/openstack/lab.py); the instances are made in the
machine's root namespaces, so lab/instance.py runs under the machine's own /usr/bin/python3 entered
into the machine's mount namespace with nsenter (setns resets root and cwd: the chroot is left
behind). Which namespace: that of the lab's "anchor", a process lab.py starts outside the chroot
(PID 1's is not ours to open: on some machines it is not even readable).

Environment (set by lab.py on the nova-compute process):
    OVERCLOUD_LAB_HOST_DIR   the lab's DIR as the machine sees it (state under DIR/instances)
    OVERCLOUD_LAB_CHROOT_DIR the same DIR as this process sees it (/lab)
    OVERCLOUD_LAB_INSTANCE_PY  path of lab/instance.py on the machine
    OVERCLOUD_LAB_MNTNS_PID  a process in the machine's mount namespace (the lab's anchor)

Loaded as "nova.virt.oclab" by overcloud_lab_compute.py (compute_driver = oclab.NamespaceDriver).
"""

import base64
import json
import os

from oslo_concurrency import processutils
from oslo_log import log as logging
from oslo_serialization import jsonutils
from oslo_utils import versionutils

import nova.conf
from nova.compute import power_state
from nova import exception
from nova.objects import fields as obj_fields
from nova.virt import driver
from nova.virt import hardware

CONF = nova.conf.CONF
LOG = logging.getLogger(__name__)

BOOT_TIMEOUT_S = 300


def _host_dir():
    return os.environ["OVERCLOUD_LAB_HOST_DIR"]


def _chroot_dir():
    return os.environ.get("OVERCLOUD_LAB_CHROOT_DIR", "/lab")


def _starttime(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return None
        return fields[19]
    except (OSError, IndexError, ValueError):
        return None


class NamespaceDriver(driver.ComputeDriver):
    capabilities = dict(driver.ComputeDriver.capabilities,
                        supports_image_type_raw=True)

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi)
        self._host = None
        self._state_rel = "instances"

    # ------------------------------------------------------------ state files

    def _state_dir(self):
        """The instances' state directory, as this process sees it."""
        d = os.path.join(_chroot_dir(), self._state_rel)
        os.makedirs(d, exist_ok=True)
        return d

    def _host_state_dir(self):
        """The same directory as lab/instance.py (on the machine) sees it."""
        return os.path.join(_host_dir(), self._state_rel)

    @staticmethod
    def _name(instance):
        # netns names are at most 15 characters: osi- + 8 hex
        return "osi-" + instance.uuid.replace("-", "")[:8]

    def _record_path(self, name):
        return os.path.join(self._state_dir(), name + ".nova.json")

    def _records(self):
        out = {}
        d = self._state_dir()
        for f in os.listdir(d):
            if f.endswith(".nova.json"):
                try:
                    with open(os.path.join(d, f)) as fh:
                        r = json.load(fh)
                    out[r["uuid"]] = r
                except (OSError, ValueError, KeyError):
                    LOG.warning("unreadable instance record %s", f)
        return out

    def _record(self, instance):
        try:
            with open(self._record_path(self._name(instance))) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def _save(self, rec):
        path = self._record_path(rec["name"])
        with open(path + ".tmp", "w") as fh:
            json.dump(rec, fh)
        os.replace(path + ".tmp", path)

    @staticmethod
    def _alive(rec):
        pid = rec.get("pid")
        return bool(pid) and _starttime(pid) == rec.get("starttime")

    # ------------------------------------------------------------ instance.py

    def _instance_py(self, *args):
        mntns = "/proc/%s/ns/mnt" % os.environ["OVERCLOUD_LAB_MNTNS_PID"]
        cmd = ["nsenter", "--mount=" + mntns, "--",
               "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
               "timeout", str(BOOT_TIMEOUT_S),
               "/usr/bin/python3", os.environ["OVERCLOUD_LAB_INSTANCE_PY"]] + list(args)
        return processutils.execute(*cmd)

    def _boot(self, rec):
        args = ["boot", "--name", rec["name"], "--state-dir", self._host_state_dir(),
                "--bridge", rec["bridge"], "--gateway", rec["gateway"],
                "--address", rec["address"],
                "--user-data", os.path.join(self._host_state_dir(), rec["name"] + ".user-data"),
                "--meta-data", os.path.join(self._host_state_dir(), rec["name"] + ".meta-data"),
                "--hostname", rec["hostname"], "--timeout", str(BOOT_TIMEOUT_S - 60)]
        try:
            out, _err = self._instance_py(*args)
        except processutils.ProcessExecutionError as e:
            why = (e.stderr or e.stdout or "").strip().splitlines()
            raise exception.InstanceDeployFailure(
                reason="namespace instance %s did not boot (exit %s): %s"
                % (rec["name"], e.exit_code, " | ".join(why[-5:]) or "no output"))
        try:
            info = json.loads(out.strip().splitlines()[-1])
            pid = int(info["pid"])
        except (ValueError, KeyError, IndexError):
            raise exception.InstanceDeployFailure(
                reason="lab/instance.py boot printed no JSON: %r" % out[-300:])
        rec["pid"] = pid
        rec["starttime"] = _starttime(pid)
        rec["powered_off"] = False

    def _kill(self, name):
        try:
            self._instance_py("kill", "--name", name, "--state-dir", self._host_state_dir())
        except processutils.ProcessExecutionError as e:
            LOG.warning("killing namespace instance %s: exit %s: %s", name, e.exit_code,
                        (e.stderr or "").strip()[-500:])
            raise

    # ------------------------------------------------------------ the driver

    def init_host(self, host):
        self._host = host
        self._state_dir()

    def get_available_nodes(self, refresh=False):
        return [self._host or CONF.host]

    def list_instances(self):
        return [r["name"] for r in self._records().values()]

    def list_instance_uuids(self):
        return list(self._records())

    def instance_exists(self, instance):
        return self._record(instance) is not None

    def get_info(self, instance, use_cache=True):
        rec = self._record(instance)
        if rec is None:
            raise exception.InstanceNotFound(instance_id=instance.uuid)
        state = power_state.RUNNING if self._alive(rec) else power_state.SHUTDOWN
        return hardware.InstanceInfo(state=state)

    def spawn(self, context, instance, image_meta, injected_files,
              admin_password, allocations, network_info=None,
              block_device_info=None, power_on=True, accel_info=None):
        name = self._name(instance)
        port = None
        for vif in network_info or []:
            for subnet in vif["network"]["subnets"]:
                if subnet["version"] == 4 and subnet["ips"]:
                    port = (vif, subnet)
                    break
            if port:
                break
        if port is None:
            raise exception.InstanceDeployFailure(
                reason="the OpenStack lab boots servers on a Neutron network with an IPv4 "
                       "subnet: this server has none")
        vif, subnet = port
        prefix = subnet["cidr"].split("/")[1]
        gateway = subnet["gateway"]["address"] if subnet["gateway"] else None
        if not gateway:
            raise exception.InstanceDeployFailure(
                reason="subnet %s has no gateway: the lab puts it on the bridge" % subnet["cidr"])
        rec = {
            "uuid": instance.uuid,
            "name": name,
            "hostname": instance.hostname or name,
            "bridge": "osb-" + vif["network"]["id"].replace("-", "")[:8],
            "gateway": "%s/%s" % (gateway, prefix),
            "address": "%s/%s" % (subnet["ips"][0]["address"], prefix),
            "vcpus": instance.flavor.vcpus,
            "memory_mb": instance.flavor.memory_mb,
            "root_gb": instance.flavor.root_gb,
            "pid": None, "starttime": None, "powered_off": not power_on,
        }
        user_data = b""
        if instance.user_data:
            user_data = base64.b64decode(instance.user_data)
        sd = self._state_dir()
        with open(os.path.join(sd, name + ".user-data"), "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(user_data)
        with open(os.path.join(sd, name + ".meta-data"), "w") as fh:
            fh.write("instance-id: %s\nlocal-hostname: %s\n" % (instance.uuid, rec["hostname"]))
        self._save(rec)
        if power_on:
            LOG.info("booting namespace instance %s (%s on %s)", name, rec["address"],
                     rec["bridge"], instance=instance)
            self._boot(rec)
            self._save(rec)
            LOG.info("namespace instance %s runs (pid %s)", name, rec["pid"], instance=instance)

    def destroy(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, destroy_secrets=True):
        name = self._name(instance)
        if self._record(instance) is None:
            LOG.warning("destroy: no namespace instance %s", name, instance=instance)
        self._kill(name)
        sd = self._state_dir()
        for suffix in (".nova.json", ".user-data", ".meta-data"):
            try:
                os.unlink(os.path.join(sd, name + suffix))
            except FileNotFoundError:
                pass

    def cleanup(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, migrate_data=None, destroy_vifs=True,
                destroy_secrets=True):
        pass

    def power_off(self, instance, timeout=0, retry_interval=0):
        rec = self._record(instance)
        if rec is None:
            raise exception.InstanceNotFound(instance_id=instance.uuid)
        self._kill(rec["name"])
        rec.update(pid=None, starttime=None, powered_off=True)
        self._save(rec)

    def power_on(self, context, instance, network_info,
                 block_device_info=None, accel_info=None):
        rec = self._record(instance)
        if rec is None:
            raise exception.InstanceNotFound(instance_id=instance.uuid)
        if not self._alive(rec):
            self._boot(rec)
            self._save(rec)

    def reboot(self, context, instance, network_info, reboot_type,
               block_device_info=None, bad_volumes_callback=None,
               accel_info=None):
        rec = self._record(instance)
        if rec is None:
            raise exception.InstanceNotFound(instance_id=instance.uuid)
        self._kill(rec["name"])
        self._boot(rec)
        self._save(rec)

    def plug_vifs(self, instance, network_info):
        pass  # lab/instance.py makes the veth and the bridge at boot

    def unplug_vifs(self, instance, network_info):
        pass

    def get_host_ip_addr(self):
        return CONF.my_ip

    def instance_on_disk(self, instance):
        return False

    def get_instance_disk_info(self, instance, block_device_info=None):
        return None

    # ------------------------------------------------------------ resources

    @staticmethod
    def _host_totals():
        vcpus = os.cpu_count() or 1
        mem_mb = 1024
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_mb = int(line.split()[1]) // 1024
        st = os.statvfs(_chroot_dir())
        disk_gb = max(1, st.f_blocks * st.f_frsize // (1024 ** 3))
        return vcpus, mem_mb, disk_gb

    def get_available_resource(self, nodename):
        vcpus, mem_mb, disk_gb = self._host_totals()
        recs = [r for r in self._records().values() if not r.get("powered_off")]
        return {
            "vcpus": vcpus,
            "memory_mb": mem_mb,
            "local_gb": disk_gb,
            "vcpus_used": sum(r.get("vcpus", 0) for r in recs),
            "memory_mb_used": sum(r.get("memory_mb", 0) for r in recs),
            "local_gb_used": sum(r.get("root_gb", 0) for r in recs),
            "hypervisor_type": "overcloud-netns",
            "hypervisor_version": versionutils.convert_version_to_int("1.0"),
            "hypervisor_hostname": nodename,
            "cpu_info": jsonutils.dumps({"arch": "x86_64", "topology": {
                "cores": vcpus, "threads": 1, "sockets": 1}}),
            "disk_available_least": disk_gb,
            "supported_instances": [(obj_fields.Architecture.X86_64,
                                     obj_fields.HVType.LXC, obj_fields.VMMode.EXE)],
            "numa_topology": None,
        }

    def update_provider_tree(self, provider_tree, nodename, allocations=None):
        vcpus, mem_mb, disk_gb = self._host_totals()
        ratios = self._get_allocation_ratios(provider_tree.data(nodename).inventory)
        inventory = {}
        for rc, total, reserved in (("VCPU", vcpus, CONF.reserved_host_cpus),
                                    ("MEMORY_MB", mem_mb, CONF.reserved_host_memory_mb),
                                    ("DISK_GB", disk_gb,
                                     self._get_reserved_host_disk_gb_from_config())):
            inventory[rc] = {"total": total, "min_unit": 1, "max_unit": total,
                             "step_size": 1, "allocation_ratio": ratios[rc],
                             "reserved": min(reserved, total - 1)}
        provider_tree.update_inventory(nodename, inventory)
