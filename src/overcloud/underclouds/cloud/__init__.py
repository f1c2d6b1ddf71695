"""Sites of kind ``openstack`` and ``aws``: servers from a cloud API, one per box, handed to the
SSH world as hosts (see docs/underclouds.md).

``provider.py`` is the contract a cloud API implements (``openstack.py``, ``aws.py``);
``config.py`` reads the sites; ``userdata.py`` writes the servers' cloud-init user data and host
keys; ``site.py`` is the :class:`~overcloud.underclouds.base.UnderCloudDriver` of one site.
"""
