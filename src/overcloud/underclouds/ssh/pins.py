"""Host key pinning: the site config's key line or ``SHA256:`` fingerprint is the only key a
host may offer (nothing is trusted up front; ``known_hosts`` is never read). See transport.py."""

from __future__ import annotations

import asyncssh


class _Pin:
    """A pinned host key: a key line (exact key, and its algorithms are the only ones asked for) or a fingerprint."""

    def __init__(self, spec: str):
        spec = spec.strip()
        if spec.startswith("SHA256:"):
            self.fingerprint = spec.rstrip("=")
            self.algs: list[str] = []
            self.key_type = "any"
        else:
            key = asyncssh.import_public_key(spec)
            self.fingerprint = key.get_fingerprint("sha256")
            self.algs = [a.decode() for a in key.sig_algorithms]
            self.key_type = key.get_algorithm()

    def matches(self, key: asyncssh.SSHKey) -> bool:
        return key.get_fingerprint("sha256") == self.fingerprint


class _PinningClient(asyncssh.SSHClient):
    """Accepts the server only when its key is the pinned one; remembers what it was offered."""

    def __init__(self, pin: _Pin):
        self._pin = pin
        self.offered: str | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.offered = key.get_fingerprint("sha256")
        return self._pin.matches(key)
