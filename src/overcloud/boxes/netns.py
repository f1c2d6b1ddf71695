"""The box transport for network-namespace boxes.

A local box is a network namespace named by its handle (``ip netns``
style: ``/run/netns/<handle>``). Commands run inside it via ``ip netns
exec`` (which also bind-mounts ``/etc/netns/<handle>/*``); TCP
connections are opened from inside it without a subprocess: network
namespaces are per-thread in Linux, so a short-lived thread ``setns``-es
into the box, creates and connects the socket, and ends. The socket keeps
the namespace it was created in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

T = TypeVar("T")


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def netns_inode(name: str) -> int | None:
    """The inode of a namespace's bind mount; ``None`` when it does not exist."""
    try:
        return os.stat(netns_path(name)).st_ino
    except FileNotFoundError:
        return None


def _nsfs_dev() -> int:
    return os.stat("/proc/self/ns/net").st_dev


def netns_exists(name: str) -> bool:
    """True only for a real namespace: a process killed inside ``create_netns`` leaves
    a plain empty file at the path, which setns() refuses (EINVAL)."""
    try:
        return os.stat(netns_path(name)).st_dev == _nsfs_dev()
    except FileNotFoundError:
        return False


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def pids_by_netns_inode() -> dict[int, list[int]]:
    """One scan of /proc: network-namespace inode -> PIDs living in it."""
    result: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ino = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:
            continue  # gone, or a kernel thread / zombie
        result.setdefault(ino, []).append(int(entry))
    return result


MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2
_run_dir_lock = threading.Lock()
_run_dir_ready = False


def _in_fresh_thread(fn: Callable[[], T], name: str) -> T:
    """Call fn in a new thread (whose namespace changes die with it)."""
    result: dict[str, Any] = {}

    def body() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def _libc_check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _ensure_run_dir() -> None:
    """/run/netns as a shared mount point, as ``ip netns add`` makes it."""
    global _run_dir_ready
    with _run_dir_lock:
        if _run_dir_ready:
            return
        os.makedirs(NETNS_RUN_DIR, exist_ok=True)
        d = NETNS_RUN_DIR.encode()
        if _libc.mount(b"none", d, b"none", MS_SHARED | MS_REC, None) != 0:
            _libc_check(_libc.mount(d, d, b"none", MS_BIND | MS_REC, None), "bind-mount /run/netns")
            _libc_check(_libc.mount(b"none", d, b"none", MS_SHARED | MS_REC, None), "share /run/netns")
        _run_dir_ready = True


def create_netns(name: str) -> None:
    """``ip netns add`` without a child process: a throw-away thread
    unshares its network namespace and bind-mounts it to /run/netns/<name>."""
    _ensure_run_dir()
    path = netns_path(name)
    if os.path.exists(path) and not netns_exists(name):
        remove_netns(name)  # half-made by a process killed here before
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))

    def body() -> None:
        _libc_check(_libc.unshare(CLONE_NEWNET), f"unshare for netns {name}")
        src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        _libc_check(_libc.mount(src, path.encode(), b"none", MS_BIND, None), f"bind-mount netns {name}")

    try:
        _in_fresh_thread(body, f"netns-create-{name}")
    except BaseException:
        os.unlink(path)
        raise


def remove_netns(name: str) -> None:
    """``ip netns delete``; no-op when it does not exist."""
    path = netns_path(name)
    if not os.path.exists(path):
        return
    _libc.umount2(path.encode(), MNT_DETACH)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def run_in_netns(name: str, fn: Callable[[], T]) -> T:
    """Call ``fn`` in a fresh thread that lives in namespace ``name``.

    The thread is discarded afterwards, so no other thread of the Tower
    ever sees the box's namespace.
    """

    def body() -> T:
        fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _libc_check(_libc.setns(fd, CLONE_NEWNET), f"setns({name})")
        finally:
            os.close(fd)
        return fn()

    return _in_fresh_thread(body, f"netns-{name}")


class NetnsTransport:
    """Runs commands and opens connections inside one box's namespace."""

    def __init__(self, netns: str):
        self.netns = netns

    def __repr__(self) -> str:
        return f"NetnsTransport({self.netns!r})"

    def exists(self) -> bool:
        return netns_exists(self.netns)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a thread inside the box's network namespace: every socket it opens
        (httpx, boto3, and threads it starts) talks from the box."""
        return run_in_netns(self.netns, fn)

    def run(
        self,
        argv: list[str],
        *,
        input: str | bytes | None = None,
        timeout: float = 10,
        check: bool = False,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` in the box (via ``ip netns exec``), capturing output."""
        text = not isinstance(input, bytes)
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            input=input,
            capture_output=True,
            text=text,
            timeout=timeout,
            check=check,
        )

    def connect_tcp(self, host: str, port: int, timeout: float = 2.0) -> socket.socket:
        """A TCP connection opened from inside the box; the caller closes it."""

        def connect() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect((host, port))
            except BaseException:
                sock.close()
                raise
            return sock

        return run_in_netns(self.netns, connect)

    def listen_tcp(self, host: str, port: int, backlog: int = 16) -> socket.socket:
        """A listening TCP socket bound inside the box (tests, health probes)."""

        def listen() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(backlog)
            except BaseException:
                sock.close()
                raise
            return sock

        return run_in_netns(self.netns, listen)

    def tcp_check(self, host: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from the box to ``host:port`` succeeds."""
        try:
            self.connect_tcp(host, port, timeout).close()
        except OSError:
            return False
        return True

    def pids(self) -> list[int]:
        """Processes whose network namespace is this box's."""
        ino = netns_inode(self.netns)
        if ino is None:
            return []
        return sorted(pids_by_netns_inode().get(ino, []))

    def kill_all(self, sig: int = signal.SIGKILL) -> list[int]:
        """Signal every process in the box; returns the PIDs signalled."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
        return pids
