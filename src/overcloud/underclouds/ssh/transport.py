"""The Tower's SSH transport: one kept connection per host, driven from ordinary threads.

The workflow engine is thread-based, asyncssh is asyncio: one event loop runs in its own daemon
thread for the whole process (started on first use, stopped by :func:`shutdown` or at exit), and
every blocking method here hands a coroutine to it (``run_coroutine_threadsafe``). Never call
these methods from that loop's thread.

Promises:

- **One connection per host, kept.** Commands, file transfers and streams are channels
  multiplexed over it, at most ``max_sessions`` at once (sshd's MaxSessions; others wait their
  turn). Hosts are independent: many hosts work in parallel. A connection found closed is made
  again on the next call; a channel that could not even be opened on a dead connection is retried
  once on a new one (the command had not started). A connection lost *while* a command ran is an
  :class:`SSHConnectionLost`: the command may or may not have run (callers' steps are idempotent).
- **Keys only.** The configured private key; no password, keyboard-interactive, agent or agent
  forwarding; neither ``~/.ssh/config`` nor ``~/.ssh/known_hosts`` is read.
- **Host keys pinned.** The site config gives the host's public key line or its ``SHA256:``
  fingerprint; any other key (changed, or a host never pinned) is refused with
  :class:`SSHHostKeyError` naming the host and both fingerprints, and no connection is kept.
- **Bounded.** Connect and every call have a timeout (errors name the host); a command's
  output is capped (:class:`SSHOutputTooLarge`), files too.
- **Counted.** ``round_trips`` counts the channel exchanges per host (commands, file transfers,
  streams opened), ``connects`` the connections made: the bench reports "SSH round trips per create".

Error messages carry the host and the program name, never a command's arguments or data (they may
hold secrets).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import dataclasses
import logging
import math
import os
import shlex
import signal
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar

import asyncssh

from overcloud.underclouds.base import UnderCloudError

from .sites import SSHHostConfig

logger = logging.getLogger(__name__)
if logging.getLogger("asyncssh").level == logging.NOTSET:
    # asyncssh logs every channel at INFO; the Tower's log wants our own lines (set a level to see them)
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

T = TypeVar("T")

DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024  # bytes of stdout (and of stderr) one command may return
_STDERR_KEEP = 64 * 1024  # bytes of a stream's stderr kept for its error messages
_KEEPALIVE = 15.0  # seconds between keepalives on an idle connection (3 missed: it is lost)
_GRACE = 5.0  # seconds a caller's thread waits beyond a call's own timeout (the loop enforces it)

__all__ = [
    "Completed",
    "SSHCommandError",
    "SSHConnectError",
    "SSHConnectionLost",
    "SSHError",
    "SSHFileNotFound",
    "SSHHost",
    "SSHHostKeyError",
    "SSHOutputTooLarge",
    "SSHStream",
    "SSHTimeout",
    "SSHTransport",
    "shutdown",
]


# -- errors ---------------------------------------------------------------------------------------


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


# -- the event loop thread ------------------------------------------------------------------------


class _LoopThread:
    """One asyncio loop in a daemon thread, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(target=self._main, args=(loop, ready), name="overcloud-ssh", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    @staticmethod
    def _main(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
            tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in tasks:
                t.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run ``coro`` on the loop and wait for it from this (ordinary) thread."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("a blocking SSH call from the SSH event loop's own thread would deadlock")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop())
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    def stop(self) -> None:
        """Close every host's connection, stop the loop, join its thread. A later call starts a new loop."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if threading.current_thread() is thread:
            raise RuntimeError("shutdown() from the SSH event loop's own thread")
        hosts = list(_HOSTS)
        try:
            asyncio.run_coroutine_threadsafe(_close_all(hosts), loop).result(10)
        except Exception:  # noqa: BLE001 - best effort at shutdown; the loop stops anyway
            logger.warning("closing SSH connections at shutdown failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


_LOOP = _LoopThread()
_HOSTS: weakref.WeakSet[SSHHost] = weakref.WeakSet()


async def _close_all(hosts: list[SSHHost]) -> None:
    await asyncio.gather(*(h._aclose() for h in hosts), return_exceptions=True)


def shutdown() -> None:
    """Close all connections and stop the SSH loop thread (also done at interpreter exit)."""
    _LOOP.stop()


atexit.register(shutdown)


def _forget_after_fork() -> None:
    """A forked child has no loop thread and must not touch the parent's connections: start afresh."""
    _LOOP._lock = threading.Lock()
    _LOOP._loop = _LOOP._thread = None
    for h in list(_HOSTS):
        h._conn = None
        h._prims_loop = None


os.register_at_fork(after_in_child=_forget_after_fork)


# -- host key pinning -----------------------------------------------------------------------------


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


# -- one host -------------------------------------------------------------------------------------


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


class SSHHost:
    """One host reached over one kept SSH connection. Thread-safe; methods block the calling thread."""

    def __init__(self, config: SSHHostConfig):
        self.config = config
        self.name = config.name
        self.endpoint = config.endpoint
        self._pin = _Pin(config.host_key)
        self._key = asyncssh.read_private_key(config.key_file)
        self._conn: asyncssh.SSHClientConnection | None = None
        self._prims_loop: asyncio.AbstractEventLoop | None = None
        self._lock_: asyncio.Lock | None = None
        self._sem_: asyncio.Semaphore | None = None
        self.round_trips = 0  # channel exchanges (commands, file transfers, streams opened)
        self.connects = 0  # connections made
        self.last_connect_seconds: float | None = None
        _HOSTS.add(self)

    def __repr__(self) -> str:
        return f"SSHHost({self.endpoint})"

    # connection ----------------------------------------------------------------------------------

    def _bind(self) -> None:
        """asyncio primitives belong to one loop: make them for the running one (a new loop after shutdown())."""
        loop = asyncio.get_running_loop()
        if self._prims_loop is not loop:
            self._prims_loop = loop
            self._lock_ = asyncio.Lock()
            self._sem_ = asyncio.Semaphore(self.config.max_sessions)
            self._conn = None

    @property
    def _connect_lock(self) -> asyncio.Lock:
        self._bind()
        assert self._lock_ is not None
        return self._lock_

    @property
    def _sessions(self) -> asyncio.Semaphore:
        self._bind()
        assert self._sem_ is not None
        return self._sem_

    @property
    def connected(self) -> bool:
        """A connection is kept and not known to be closed."""
        conn = self._conn
        return conn is not None and not conn.is_closed()

    async def _connection(self) -> asyncssh.SSHClientConnection:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        async with self._connect_lock:
            conn = self._conn
            if conn is None or conn.is_closed():
                self._conn = None
                conn = self._conn = await self._connect()
            return conn

    async def _attempt(self, client: _PinningClient, algs: Sequence[str] | str) -> asyncssh.SSHClientConnection:
        cfg = self.config
        return await asyncio.wait_for(
            asyncssh.connect(
                cfg.address,
                cfg.port,
                username=cfg.user,
                client_factory=lambda: client,
                known_hosts=([], [], []),  # nothing trusted up front: the pin decides (validate_host_public_key)
                server_host_key_algs=algs,
                client_keys=[self._key],
                agent_path=None,
                agent_forwarding=False,
                password=None,
                preferred_auth="publickey",
                config=[],  # not ~/.ssh/config
                x509_trusted_certs=None,
                keepalive_interval=_KEEPALIVE,
                keepalive_count_max=3,
                connect_timeout=cfg.connect_timeout,
            ),
            cfg.connect_timeout,
        )

    async def _connect(self) -> asyncssh.SSHClientConnection:
        cfg = self.config
        client = _PinningClient(self._pin)
        started = time.monotonic()
        try:
            conn = await self._attempt(client, self._pin.algs or ())
        except asyncio.TimeoutError:
            raise SSHTimeout(
                self.endpoint, f"no SSH connection within {cfg.connect_timeout:g} s (host unreachable or not answering)"
            ) from None
        except asyncssh.HostKeyNotVerifiable:
            raise self._key_error(client.offered) from None
        except (asyncssh.KeyExchangeFailed, asyncssh.ConnectionLost, ConnectionResetError) as exc:
            reason = exc.reason if isinstance(exc, asyncssh.Error) else exc.strerror
            if not self._pin.algs or client.offered is not None:
                raise SSHConnectError(self.endpoint, f"SSH connection failed during the handshake: {reason}") from None
            # We asked only for the pinned key's type and the host closed: it has none of that type.
            # Ask again for any type, only to name the key it does offer; that key is refused all the same.
            probe = _PinningClient(self._pin)
            try:
                conn = await self._attempt(probe, "default")
            except asyncssh.HostKeyNotVerifiable:
                raise SSHHostKeyError(
                    self.endpoint,
                    f"host key refused: the host offers no {self._pin.key_type} key but {probe.offered}; "
                    f"the site config pins {self._pin.fingerprint}. Unknown keys are never accepted",
                    offered=probe.offered,
                    pinned=self._pin.fingerprint,
                ) from None
            except (asyncio.TimeoutError, asyncssh.Error, OSError):
                raise SSHConnectError(self.endpoint, f"SSH connection failed during the handshake: {reason}") from None
            conn.close()  # the same key under another algorithm name: should not happen; never use it
            raise SSHConnectError(self.endpoint, f"SSH connection failed during the handshake: {reason}") from None
        except asyncssh.PermissionDenied:
            raise SSHConnectError(
                self.endpoint, f"authentication refused for user {cfg.user!r} with key file {cfg.key_file}"
            ) from None
        except asyncssh.Error as exc:
            raise SSHConnectError(self.endpoint, f"SSH connection failed: {exc.reason}") from None
        except OSError as exc:
            raise SSHConnectError(self.endpoint, f"cannot connect: {exc.strerror or exc}") from None
        self.connects += 1
        self.last_connect_seconds = time.monotonic() - started
        logger.debug("ssh: connected to %s in %.3f s", self.endpoint, self.last_connect_seconds)
        return conn

    def _key_error(self, offered: str | None) -> SSHHostKeyError:
        pinned = self._pin.fingerprint
        return SSHHostKeyError(
            self.endpoint,
            f"host key refused: the host offered {offered or 'an unreadable key'}, the site config pins {pinned}. "
            "If the host was re-installed on purpose, put its new key in the site's host_key; "
            "unknown keys are never accepted",
            offered=offered,
            pinned=pinned,
        )

    async def _aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            try:
                await asyncio.wait_for(conn.wait_closed(), 5)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - closing is best effort
                pass

    def connect(self, timeout: float | None = None) -> None:
        """Make the connection now (it is otherwise made on first use); raises SSHError."""
        _LOOP.call(self._connection(), (timeout or self.config.connect_timeout) + _GRACE)

    def close(self) -> None:
        """Close the kept connection (a later call makes a new one)."""
        if _LOOP.in_loop_thread():
            raise RuntimeError("close() from the SSH event loop's own thread")
        if self._conn is not None:
            _LOOP.call(self._aclose(), 10)

    # channels ------------------------------------------------------------------------------------

    async def _open(self, factory: Any, command: str, program: str) -> tuple[Any, Any]:
        """A session channel for ``command``; a dead connection found at open is replaced once."""
        for attempt in (1, 2):
            conn = await self._connection()
            try:
                self.round_trips += 1
                return await conn.create_session(factory, command, encoding=None)
            except (asyncssh.ChannelOpenError, asyncssh.DisconnectError, ConnectionError, BrokenPipeError) as exc:
                if conn.is_closed() or isinstance(exc, (asyncssh.DisconnectError, ConnectionError)):
                    self._conn = None
                    if attempt == 1:
                        logger.info("ssh: connection to %s was lost; connecting again", self.endpoint)
                        continue
                    raise SSHConnectionLost(self.endpoint, f"connection lost before {program} started") from None
                raise SSHError(
                    self.endpoint,
                    f"the host refused a channel for {program}: {exc} (is the site's max_sessions, "
                    f"{self.config.max_sessions}, above the host sshd's MaxSessions?)",
                ) from None
        raise AssertionError("unreachable")

    async def _arun(self, command: str, program: str, stdin: bytes | None, timeout: float, max_output: int) -> Completed:
        chan: asyncssh.SSHClientChannel[bytes] | None = None
        phase = "waiting for a free session"

        async def work() -> Completed:
            nonlocal chan, phase
            async with self._sessions:
                if not self.connected:
                    phase = "connecting"
                    await self._connection()
                phase = "opening a channel"
                chan, session = await self._open(lambda: _Collector(max_output), command, program)
                phase = "running"
                if stdin:
                    chan.write(stdin)
                chan.write_eof()
                await chan.wait_closed()
                if session.overflow:
                    raise SSHOutputTooLarge(self.endpoint, f"{program} wrote more than {max_output} bytes to {session.overflow}")
                code = _returncode(chan)
                if code is None:
                    if self._conn is not None and self._conn.is_closed():
                        self._conn = None
                    raise SSHConnectionLost(
                        self.endpoint, f"connection lost while {program} ran (it may or may not have run)"
                    )
                return Completed(code, bytes(session.out), bytes(session.err))

        try:
            return await asyncio.wait_for(work(), timeout)
        except asyncio.TimeoutError:
            if phase == "running":
                raise SSHTimeout(self.endpoint, f"{program} did not finish within {timeout:g} s") from None
            if phase == "opening a channel" and self._conn is not None:
                # an open connection that cannot even open a channel is as good as lost: make a new one next time
                conn, self._conn = self._conn, None
                conn.abort()
            raise SSHTimeout(self.endpoint, f"{program} did not start within {timeout:g} s ({phase})") from None
        finally:
            if chan is not None and _returncode(chan) is None:
                chan.close()  # the host's timeout(1) ends the command itself (see run())

    def run(
        self,
        command: Sequence[str] | str,
        *,
        input: bytes | str | None = None,  # noqa: A002 - the subprocess name
        timeout: float = 30.0,
        check: bool = True,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> Completed:
        """Run a command on the host. An argv list is quoted for the remote shell; a string is shell text.

        Raises SSHTimeout (after ``timeout`` s, connecting included), SSHConnectError, SSHConnectionLost,
        SSHOutputTooLarge, and SSHCommandError on a non-zero exit when ``check``.
        """
        program = _program(command)
        # sshd does not deliver signals to root sessions ("session signalling requires privilege
        # separation"), and closing a channel does not stop a command that writes nothing: the host's
        # own `timeout` ends the command's process group a second after we have given up on it.
        limit = f"exec timeout -k 2 {math.ceil(timeout) + 1}"
        if isinstance(command, str):
            text = f"{limit} sh -c {shlex.quote(command)}"
        else:
            if not command:
                raise ValueError("run() needs a command")
            text = f"{limit} {shlex.join(command)}"
        data = input.encode() if isinstance(input, str) else input
        result = _LOOP.call(self._arun(text, program, data, timeout, max_output), timeout + self.config.connect_timeout + _GRACE)
        if check and result.returncode != 0:
            raise SSHCommandError(self.endpoint, program, result)
        return result

    def put_file(self, path: str, data: bytes | str, mode: int = 0o644, *, timeout: float = 60.0) -> None:
        """Write ``data`` to the absolute ``path`` atomically (temp file + rename), parents made as needed."""
        if not path.startswith("/"):
            raise ValueError(f"put_file needs an absolute path, not {path!r}")
        script = (
            'set -e; umask 077; mkdir -p -- "$(dirname -- "$1")"; t="$1.tmp.$$"; '
            'trap \'rm -f -- "$t"\' EXIT; cat >"$t"; chmod "$2" "$t"; mv -f -- "$t" "$1"'
        )
        self.run(["sh", "-c", script, "put_file", path, format(mode, "o")], input=data, timeout=timeout, max_output=64 * 1024)

    def get_file(self, path: str, max_bytes: int, *, timeout: float = 60.0) -> bytes:
        """The contents of ``path``; SSHFileNotFound when absent, SSHOutputTooLarge when over ``max_bytes``."""
        script = 'test -f "$1" || { echo "no such file" >&2; exit 3; }; exec head -c "$2" -- "$1"'
        result = self.run(
            ["sh", "-c", script, "get_file", path, str(max_bytes + 1)], timeout=timeout, check=False, max_output=max_bytes + 1
        )
        if result.returncode == 3:
            raise SSHFileNotFound(self.endpoint, f"no file {path}")
        if result.returncode != 0:
            raise SSHCommandError(self.endpoint, "get_file", result)
        if len(result.stdout) > max_bytes:
            raise SSHOutputTooLarge(self.endpoint, f"{path} is larger than {max_bytes} bytes")
        return result.stdout

    def open_stream(self, command: Sequence[str] | str, *, timeout: float = 30.0) -> SSHStream:
        """A real socket whose other end is a command's stdin/stdout on the host (e.g. a TCP relay in a box's netns).

        Whatever works on a socket works on it (sendall, recv, makefile, settimeout, select, fileno):
        it is one end of a socketpair, and the loop relays the other end to the channel, with flow
        control both ways. ``shutdown(SHUT_WR)`` sends EOF to the command; ``close()`` sends EOF and
        closes the channel. The channel holds one of the host's ``max_sessions`` slots until the
        command has ended: sshd waits for it, so a stream's command must end at EOF on its stdin
        (a relay does) — one that neither reads nor writes keeps its slot until it exits.
        """
        program = _program(command)
        text = command if isinstance(command, str) else shlex.join(command)
        return _LOOP.call(self._aopen_stream(text, program, timeout), timeout + self.config.connect_timeout + _GRACE)

    async def _aopen_stream(self, command: str, program: str, timeout: float) -> SSHStream:
        try:
            await asyncio.wait_for(self._sessions.acquire(), timeout)
        except asyncio.TimeoutError:
            raise SSHTimeout(self.endpoint, f"{program} did not start within {timeout:g} s (waiting for a free session)") from None
        mine, theirs = socket.socketpair()
        loop = asyncio.get_running_loop()
        pump = _Pump(loop)
        try:
            await loop.connect_accepted_socket(lambda: _SocketSide(pump), sock=theirs)
            chan, _ = await asyncio.wait_for(
                self._open(lambda: pump, command, program), timeout + self.config.connect_timeout
            )
        except BaseException as exc:
            self._sessions.release()
            mine.close()
            if pump.sock_transport is not None:
                pump.sock_transport.abort()
            else:
                theirs.close()
            if isinstance(exc, asyncio.TimeoutError):
                raise SSHTimeout(self.endpoint, f"{program} did not start within {timeout:g} s (opening a channel)") from None
            raise
        loop.create_task(self._release_when_closed(chan))
        return SSHStream(mine.detach(), pump, self.endpoint, program)

    async def _release_when_closed(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        try:
            await chan.wait_closed()
        finally:
            self._sessions.release()


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


# -- many hosts -----------------------------------------------------------------------------------


class SSHTransport:
    """The hosts the Tower drives, by name, each with its kept connection."""

    def __init__(self, hosts: Iterable[SSHHostConfig]):
        self._hosts: dict[str, SSHHost] = {}
        for cfg in hosts:
            if cfg.name in self._hosts:
                raise ValueError(f"host {cfg.name!r} listed twice")
            self._hosts[cfg.name] = SSHHost(cfg)

    def host(self, name: str) -> SSHHost:
        try:
            return self._hosts[name]
        except KeyError:
            raise KeyError(f"no ssh host {name!r} (hosts: {', '.join(sorted(self._hosts))})") from None

    @property
    def hosts(self) -> list[SSHHost]:
        return list(self._hosts.values())

    def run_all(self, command: Sequence[str] | str, *, timeout: float = 30.0, check: bool = True) -> dict[str, Completed | SSHError]:
        """The same command on every host at once; each host's result or error, by host name."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(self._hosts))) as pool:
            futures = {name: pool.submit(h.run, command, timeout=timeout, check=check) for name, h in self._hosts.items()}
            out: dict[str, Completed | SSHError] = {}
            for name, fut in futures.items():
                try:
                    out[name] = fut.result()
                except SSHError as exc:
                    out[name] = exc
            return out

    def round_trips(self) -> dict[str, int]:
        return {name: h.round_trips for name, h in self._hosts.items()}

    def close(self) -> None:
        for h in self._hosts.values():
            h.close()
