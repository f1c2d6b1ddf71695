"""Workflow actions for the parts of an OverCloud. Importing this package registers them all."""

from overcloud.components import cluster, datalake, fabric, lifecycle, post, services, undercloud  # noqa: F401
