"""The ``ssh`` UnderCloud kind: boxes on other machines, reached over SSH.

- ``sites``: ssh site definitions (hosts, keys, pinned host keys, capacity), checked at load.
- ``transport``: the asyncssh transport (one event loop thread, one kept connection per host).

See docs/remote-hosts.md. Importing this package does not import asyncssh.
"""

from .sites import SSHHostConfig, SSHSiteConfig, SiteConfigError, load_ssh_sites, parse_ssh_sites, ssh_sites_from_env

__all__ = ["SSHHostConfig", "SSHSiteConfig", "SiteConfigError", "load_ssh_sites", "parse_ssh_sites", "ssh_sites_from_env"]
