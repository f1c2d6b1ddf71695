#!/usr/bin/env bash
# The OpenStack lab: a real control plane from Debian 12's packages (docs/underclouds.md, "OpenStack lab").
#
#   scripts/openstack-lab.sh up DIR      start Keystone, Placement, Glance, Nova (api, conductor, scheduler,
#                                        compute with our namespace-instance driver), Neutron (ML2 with our
#                                        agentless mechanism driver), RabbitMQ and MariaDB on 127.0.0.1;
#                                        bootstrap; write DIR/clouds.yaml and DIR/sites.yaml (site openstack-1)
#   scripts/openstack-lab.sh down DIR    stop everything, remove the servers' instances and bridges
#   scripts/openstack-lab.sh status DIR  what runs (JSON)
#   scripts/openstack-lab.sh build       only make the cached chroot (once per machine, ~4 min)
#   scripts/openstack-lab.sh stop|start|restart DIR ROLE   one service (ROLE: keystone, nova-api, neutron-server, ...);
#                                        stop-keystone DIR / start-keystone DIR for the fault tests
#
# The packages live in a Debian 12 chroot made with mmdebstrap and cached in
# /var/cache/overcloud/openstack-<key of its inputs>; nothing is installed on the machine.
# The work is done by lab/openstack/lab.py (stdlib Python, run by the machine's python3).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
exec /usr/bin/python3 "$here/lab/openstack/lab.py" "$@"
