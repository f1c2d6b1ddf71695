"""nova-compute of the OpenStack lab, with our driver (overcloud_lab_nova) as nova.virt.oclab.

Run as `python3 -m overcloud_lab_compute --config-file ...` in the lab's chroot (Debian's
nova-compute package would pull in libvirt and QEMU; python3-nova has the service itself).
"""

import sys

import nova.cmd.compute  # first: nova.cmd monkey-patches eventlet before anything else loads

import overcloud_lab_nova

sys.modules["nova.virt.oclab"] = overcloud_lab_nova

if __name__ == "__main__":
    sys.argv[0] = "nova-compute"
    sys.exit(nova.cmd.compute.main())
