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

Modules: ``loop`` (the event loop thread), ``pins`` (host keys), ``channels`` (commands'
output, streams), ``errors``; this one keeps the host connection (``SSHHost``) and the hosts
(``SSHTransport``), and re-exports the rest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import shlex
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import asyncssh

from .channels import _STDERR_KEEP, SSHStream, _Collector, _program, _Pump, _returncode, _SocketSide
from .errors import (
    Completed,
    SSHCommandError,
    SSHConnectError,
    SSHConnectionLost,
    SSHError,
    SSHFileNotFound,
    SSHHostKeyError,
    SSHOutputTooLarge,
    SSHTimeout,
)
from .loop import _HOSTS, _LOOP, _close_all, _forget_after_fork, _LoopThread, shutdown
from .pins import _Pin, _PinningClient
from .sites import SSHHostConfig

logger = logging.getLogger(__name__)
if logging.getLogger("asyncssh").level == logging.NOTSET:
    # asyncssh logs every channel at INFO; the Tower's log wants our own lines (set a level to see them)
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024  # bytes of stdout (and of stderr) one command may return
_KEEPALIVE = 15.0  # seconds between keepalives on an idle connection (3 missed: it is lost)
_GRACE = 5.0  # seconds a caller's thread waits beyond a call's own timeout (the loop enforces it)


def _cipher_preference() -> tuple[str, ...]:
    """The ciphers offered, best first: asyncssh's own list (chacha20-poly1305 first) unless this
    machine's CPU has AES instructions (``aes`` in /proc/cpuinfo): then AES-GCM first, every other
    cipher still allowed (the host picks the first of ours it has). All our SSH encryption runs on
    the one loop thread; measured on loopback: chacha20-poly1305 89 MB/s, aes128-gcm 111 MB/s, and
    weed to four hosts at once 6.2-8.9 s with chacha20 against 4.2-6.2 s with AES-GCM
    (docs/remote-hosts.md, "Benchmark and the WAN's encryption")."""
    default = tuple(a.decode() for a in asyncssh.encryption.get_default_encryption_algs())
    try:
        with open("/proc/cpuinfo") as f:
            aes = any(line.startswith("flags") and " aes " in f" {line.split(':', 1)[-1].strip()} " for line in f)
    except OSError:
        aes = False
    if not aes:
        return default
    gcm = tuple(a for a in ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com") if a in default)
    return gcm + tuple(a for a in default if a not in gcm)


_CIPHERS = _cipher_preference()

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
    "SSHSudoError",
    "SSHTimeout",
    "SSHTransport",
    "shutdown",
]

# the pieces' private names, for the tests that look at them (transport._Pin, _LOOP, ...)
_internals = (_STDERR_KEEP, _Collector, _Pump, _SocketSide, _LoopThread, _close_all, _forget_after_fork, _PinningClient)


class SSHSudoError(SSHConnectError):
    """The host's user is not root and may not run commands as root with ``sudo -n``."""


# -- one host -------------------------------------------------------------------------------------


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
        # a user other than root runs every command through password-less sudo (a cloud image's
        # user): checked once per connection (SSHSudoError says what is missing)
        self.sudo = config.user != "root"
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
                encryption_algs=_CIPHERS,
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
        if self.sudo:
            await self._check_sudo(conn)
        self.connects += 1
        self.last_connect_seconds = time.monotonic() - started
        logger.debug("ssh: connected to %s in %.3f s", self.endpoint, self.last_connect_seconds)
        return conn

    async def _check_sudo(self, conn: asyncssh.SSHClientConnection) -> None:
        """``sudo -n true`` on a new connection of a user other than root; refused: no connection."""
        user = self.config.user
        try:
            r = await asyncio.wait_for(conn.run("sudo -n true", check=False), self.config.connect_timeout)
        except (asyncio.TimeoutError, asyncssh.Error, OSError) as exc:
            conn.close()
            why = "no answer" if isinstance(exc, asyncio.TimeoutError) else (getattr(exc, "reason", "") or str(exc))
            raise SSHConnectError(self.endpoint, f"checking that user {user!r} may use sudo failed: {why}") from None
        self.round_trips += 1
        if r.exit_status == 0:
            return
        conn.close()
        said = str(r.stderr or "").strip()[-200:] or f"exit {r.exit_status}"
        raise SSHSudoError(
            self.endpoint,
            f"user {user!r} may not run commands as root with sudo without a password (`sudo -n true`: {said}); "
            "the Tower runs every command on a host as root: give the user password-less sudo "
            "(e.g. cloud-init's sudo: \"ALL=(ALL) NOPASSWD:ALL\") or log in as root",
        )

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

    def close_quietly(self) -> None:
        """:meth:`close` for a host that may be gone: the connection is dropped, nothing waits on it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                _LOOP.loop().call_soon_threadsafe(conn.close)
            except RuntimeError:  # the loop is stopped: so is the connection
                pass

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
        # A user other than root: `sudo -n` runs it (timeout included: it must be able to end it).
        limit = f"exec {'sudo -n -- ' if self.sudo else ''}timeout -k 2 {math.ceil(timeout) + 1}"
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
        if self.sudo:  # a user other than root (see run())
            text = "exec sudo -n -- " + (f"sh -c {shlex.quote(text)}" if isinstance(command, str) else text)
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


# -- many hosts -----------------------------------------------------------------------------------


class SSHTransport:
    """The hosts the Tower drives, by name, each with its kept connection. Hosts may be added
    and removed at run time (:meth:`add`, :meth:`remove`; thread-safe): the table is replaced,
    never changed in place, so a caller iterating over it is never disturbed."""

    def __init__(self, hosts: Iterable[SSHHostConfig] = ()):
        self._lock = threading.Lock()
        self._hosts: dict[str, SSHHost] = {}
        for cfg in hosts:
            if cfg.name in self._hosts:
                raise ValueError(f"host {cfg.name!r} listed twice")
            self._hosts[cfg.name] = SSHHost(cfg)

    def add(self, config: SSHHostConfig) -> SSHHost:
        """The host of this config: the one kept when its config is the same, else a new one
        (a host of that name with another config is replaced, and its connection closed)."""
        with self._lock:
            old = self._hosts.get(config.name)
            if old is not None and old.config == config:
                return old
            new = SSHHost(config)
            self._hosts = {**self._hosts, config.name: new}
        if old is not None:
            old.close_quietly()
        return new

    def remove(self, name: str) -> SSHHost | None:
        """Forget a host and close its connection (nothing is sent to it: it may be gone)."""
        with self._lock:
            old = self._hosts.get(name)
            if old is not None:
                self._hosts = {n: h for n, h in self._hosts.items() if n != name}
        if old is not None:
            old.close_quietly()
        return old

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
        for h in list(self._hosts.values()):
            h.close()
