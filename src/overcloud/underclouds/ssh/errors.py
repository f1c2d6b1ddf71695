"""The ssh transport's errors: ``SSHError`` subclasses (an ``UnderCloudError``) whose message
starts with the host, ``name (address:port)``; they name the program, never its arguments or
data (they may hold secrets). See transport.py."""

from __future__ import annotations

import dataclasses

from overcloud.underclouds.base import UnderCloudError


class SSHError(UnderCloudError):
    """Something failed on or on the way to a host; ``host`` names it ("name (address:port)")."""

    def __init__(self, host: str, message: str):
        super().__init__(f"{host}: {message}")
        self.host = host


class SSHConnectError(SSHError):
    """No connection could be made: refused, no route, authentication refused."""


class SSHHostKeyError(SSHConnectError):
    """The host offered a key other than the pinned one. Never accepted."""

    def __init__(self, host: str, message: str, *, offered: str | None, pinned: str):
        super().__init__(host, message)
        self.offered = offered
        self.pinned = pinned


class SSHTimeout(SSHError):
    """A connect or a call took longer than its timeout."""


class SSHConnectionLost(SSHError):
    """The connection broke while a call was under way; the call may or may not have had its effect."""


class SSHOutputTooLarge(SSHError):
    """A command's output or a file was larger than the caller's limit."""


class SSHFileNotFound(SSHError):
    """get_file: no such file on the host."""


class SSHCommandError(SSHError):
    """A command exited non-zero (run with check=True)."""

    def __init__(self, host: str, program: str, result: Completed):
        tail = result.stderr[-400:].decode(errors="replace").strip()
        super().__init__(host, f"{program} exited with {result.returncode}" + (f": {tail}" if tail else ""))
        self.returncode = result.returncode
        self.stdout = result.stdout
        self.stderr = result.stderr


@dataclasses.dataclass(frozen=True)
class Completed:
    """A finished command. returncode is negative (-signal) when the command was killed by a signal."""

    returncode: int
    stdout: bytes
    stderr: bytes
