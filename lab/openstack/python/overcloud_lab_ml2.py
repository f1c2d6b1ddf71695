"""ML2 mechanism driver of the OpenStack lab: binds every port, no agent needed.

No Neutron agent runs in the lab (the instances are network namespaces our Nova driver,
overcloud_lab_nova.py, puts on a bridge per network in the machine's root namespace), so
no stock mechanism driver would bind a port: this one binds each port's first segment
with VIF type "other" and marks it ACTIVE. Registered as the mechanism driver
"overcloud_lab" by the entry point in overcloud_lab_os-1.0.dist-info (on neutron-server's
PYTHONPATH, see lab/openstack/lab.py).
"""

from neutron_lib.api.definitions import portbindings
from neutron_lib import constants
from neutron_lib.plugins.ml2 import api


class LabMechanismDriver(api.MechanismDriver):
    def initialize(self):
        pass

    @property
    def connectivity(self):
        return portbindings.CONNECTIVITY_L2

    def bind_port(self, context):
        for segment in context.segments_to_bind:
            context.set_binding(segment[api.ID], portbindings.VIF_TYPE_OTHER,
                                {portbindings.CAP_PORT_FILTER: False},
                                status=constants.PORT_STATUS_ACTIVE)
            return
