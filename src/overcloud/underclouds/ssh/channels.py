"""What runs on one SSH channel: a command's bounded output (``_Collector``), and a stream
(``SSHStream``: a real socket, one end of a socketpair whose other end the loop relays to a
command's stdin/stdout, with flow control both ways). See transport.py."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from collections import deque
from collections.abc import Sequence

import asyncssh

_STDERR_KEEP = 64 * 1024  # bytes of a stream's stderr kept for its error messages


class _Collector(asyncssh.SSHClientSession[bytes]):
    """A command's stdout and stderr, each up to ``limit`` bytes; beyond, the channel is closed."""

    def __init__(self, limit: int):
        self.limit = limit
        self.out = bytearray()
        self.err = bytearray()
        self.overflow: str | None = None
        self.exc: Exception | None = None
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:  # type: ignore[override]
        self._chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        buf, which = (self.err, "stderr") if datatype == asyncssh.EXTENDED_DATA_STDERR else (self.out, "stdout")
        if self.overflow:
            return
        if len(buf) + len(data) > self.limit:
            self.overflow = which
            if self._chan is not None:
                self._chan.close()
            return
        buf += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.exc = exc


def _program(command: Sequence[str] | str) -> str:
    """The program's name, for messages (never its arguments: they may hold secrets)."""
    if isinstance(command, str):
        words = command.split(None, 1)
        return words[0] if words else "(empty command)"
    return command[0] if command else "(empty command)"


def _returncode(chan: asyncssh.SSHClientChannel[bytes]) -> int | None:
    status = chan.get_exit_status()
    if status is not None and status >= 0:
        return status
    sig = chan.get_exit_signal()
    if sig is not None:
        try:
            return -int(signal.Signals["SIG" + sig[0]])
        except KeyError:
            return -255
    return None


class _Pump(asyncssh.SSHClientSession[bytes]):
    """The channel's side of a stream: its stdout goes to the socket, the socket's bytes to its stdin."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.sock_transport: asyncio.Transport | None = None
        self.err: deque[bytes] = deque()
        self.err_len = 0
        self.ended = threading.Event()
        self.exc: Exception | None = None

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:  # type: ignore[override]
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR:
            self.err.append(data)
            self.err_len += len(data)
            while self.err_len > _STDERR_KEEP and len(self.err) > 1:
                self.err_len -= len(self.err.popleft())
        elif self.sock_transport is not None and not self.sock_transport.is_closing():
            self.sock_transport.write(data)

    def eof_received(self) -> bool:
        if self.sock_transport is not None and not self.sock_transport.is_closing() and self.sock_transport.can_write_eof():
            self.sock_transport.write_eof()
        return True  # half-close: the caller may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        self.exc = exc
        if self.sock_transport is not None:
            self.sock_transport.close()  # after what is buffered has been written
        self.ended.set()

    # the channel's send window is full / has room again: stop / resume reading the socket
    def pause_writing(self) -> None:
        if self.sock_transport is not None:
            self.sock_transport.pause_reading()

    def resume_writing(self) -> None:
        if self.sock_transport is not None and not self.sock_transport.is_closing():
            self.sock_transport.resume_reading()

    def close_channel(self) -> None:
        if self.chan is not None:
            self.chan.close()


class _SocketSide(asyncio.Protocol):
    """The loop's end of the socketpair."""

    def __init__(self, pump: _Pump):
        self.pump = pump

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.pump.sock_transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.pump.chan is not None:
            self.pump.chan.write(data)

    def eof_received(self) -> bool:
        if self.pump.chan is not None:
            self.pump.chan.write_eof()
        return True  # keep writing the command's output to the caller

    def connection_lost(self, exc: Exception | None) -> None:
        self.pump.close_channel()

    # the caller is not reading: stop reading the channel (its window closes, the host waits)
    def pause_writing(self) -> None:
        if self.pump.chan is not None:
            self.pump.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.pump.chan is not None:
            self.pump.chan.resume_reading()


class SSHStream(socket.socket):
    """A socket relayed to a command on a host (see :meth:`SSHHost.open_stream`); adds the command's end."""

    def __init__(self, fileno: int, pump: _Pump, endpoint: str, program: str):
        super().__init__(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno)
        self._pump = pump
        self.endpoint = endpoint
        self.program = program

    def close(self) -> None:
        """Close this end and the channel (the command sees EOF, then the channel ends)."""
        super().close()
        try:
            self._pump.loop.call_soon_threadsafe(self._pump.close_channel)
        except RuntimeError:  # the loop is gone (shutdown): so is the channel
            pass

    def wait(self, timeout: float | None = 5.0) -> int | None:
        """Wait until the channel has ended; the command's exit status (None if unknown)."""
        self._pump.ended.wait(timeout)
        return self.returncode

    @property
    def returncode(self) -> int | None:
        """The command's exit status once the channel has ended (else None)."""
        chan = self._pump.chan
        return _returncode(chan) if chan is not None and self._pump.ended.is_set() else None

    @property
    def stderr(self) -> bytes:
        """The last 64 KiB the command wrote to stderr."""
        return b"".join(self._pump.err)
