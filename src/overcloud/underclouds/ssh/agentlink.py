"""The Tower's side of a host's kept agent: one ``python3 -IS <bundle> serve`` per host.

Before it, every agent op and every ``boxctl`` call (a box's supervisor, its hosts file, a TCP
check) was one SSH command that started Python on the host and imported our package: 0.1-0.2 s
each, where the local session talks to a unix socket. The kept agent is started once, on the
first call, as a stream (:meth:`SSHHost.open_stream`) over the host's kept connection; requests
are JSON lines on its stdin, ``{"id", "op", "req"}``, answered by id in any order (the host runs
each in a thread of its own), so the threads of the Tower share it without waiting on one
another. Requests travel on stdin only: nothing of them reaches an argv.

- **Restarted transparently.** When its stream ends (the agent died, the connection was lost,
  the host's sshd restarted), the calls under way fail with :class:`SSHConnectionLost` ("may or
  may not have run", as a command's would), except those the caller marked ``idempotent``
  (reads), which are sent once more to a new agent. The next call starts a new agent. A new
  bundle (the host prepared again) starts a new agent too.
- **Timeouts name the host and the op**; an op that times out keeps running on the host (a
  thread cannot be stopped); its answer is dropped when it comes.
- **Counted.** ``starts`` agents started, ``calls`` requests sent.

See docs/remote-hosts.md, "Speed: the kept agent".
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from overcloud.underclouds.base import UnderCloudError

logger = logging.getLogger(__name__)

HOST_PYTHON = "/usr/bin/python3"
MAX_REQUEST = 1 << 20  # the host refuses a longer line (agent.MAX_INPUT)


class AgentOpError(UnderCloudError):
    """The host's agent answered that the op failed (or refused its input); ``kind`` says which."""

    def __init__(self, message: str, kind: str, type_: str):
        super().__init__(message)
        self.kind = kind
        self.type = type_


class _Lost(Exception):
    """The agent's stream ended before the answer came."""


class _Agent:
    """One running agent: its stream, the calls waiting for their answers, the reader thread."""

    def __init__(self, stream: Any, reader: Any, bundle_dir: str, info: dict[str, Any]):
        self.stream = stream
        self.reader = reader
        self.bundle_dir = bundle_dir
        self.info = info
        self.pending: dict[int, concurrent.futures.Future] = {}
        self.lock = threading.Lock()  # pending, alive
        self.wlock = threading.Lock()
        self.alive = True

    def end(self) -> None:
        with self.lock:
            self.alive = False
            pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(_Lost())
        with contextlib.suppress(OSError):
            self.stream.close()


class AgentLink:
    """A host's kept agent. Thread-safe; ``call`` blocks the calling thread (never call it
    from the SSH loop's thread)."""

    def __init__(self, ssh: Any, bundle_dir: Callable[[], str]):
        self.ssh = ssh
        self._bundle_dir = bundle_dir
        self._lock = threading.Lock()  # starting and replacing the agent
        self._agent: _Agent | None = None
        self._ids = itertools.count(1)
        self.starts = 0
        self.calls = 0

    @property
    def endpoint(self) -> str:
        return self.ssh.endpoint

    @property
    def pid(self) -> int | None:
        """The running agent's process id on the host (None before the first call)."""
        a = self._agent
        return a.info.get("pid") if a is not None and a.alive else None

    def _running(self, timeout: float) -> _Agent:
        bundle_dir = self._bundle_dir()
        if not bundle_dir:
            raise UnderCloudError(f"{self.endpoint}: the host is not prepared (no bundle installed yet)")
        with self._lock:
            a = self._agent
            if a is not None and a.alive and a.bundle_dir == bundle_dir:
                return a
            if a is not None:
                a.end()
            self._agent = self._start(bundle_dir, timeout)
            return self._agent

    def _start(self, bundle_dir: str, timeout: float) -> _Agent:
        from overcloud.underclouds.ssh.transport import SSHConnectionLost

        stream = self.ssh.open_stream([HOST_PYTHON, "-IS", bundle_dir, "serve"], timeout=timeout)
        try:
            stream.settimeout(timeout)
            reader = stream.makefile("rb")
            line = reader.readline()
            hello = json.loads(line) if line else None
            if not (isinstance(hello, dict) and hello.get("id") == 0 and hello.get("ok") is True):
                stream.wait(2)
                err = stream.stderr.decode("utf-8", "replace").strip()[-400:]
                raise SSHConnectionLost(self.endpoint, "the host's agent did not start"
                                        + (f" (exit {stream.returncode}): {err}" if stream.returncode is not None else ""))
            stream.settimeout(None)
        except BaseException as exc:
            stream.close()
            if isinstance(exc, (OSError, ValueError)) and not isinstance(exc, UnderCloudError):
                raise SSHConnectionLost(self.endpoint, f"the host's agent did not start: {exc}") from None
            raise
        agent = _Agent(stream, reader, bundle_dir, hello["result"])
        self.starts += 1
        threading.Thread(target=self._read, args=(agent,), name=f"ssh-agent-{self.ssh.name}", daemon=True).start()
        logger.debug("ssh: agent %s started on %s", agent.info.get("pid"), self.endpoint)
        return agent

    @staticmethod
    def _read(agent: _Agent) -> None:
        try:
            for line in agent.reader:
                try:
                    answer = json.loads(line)
                    rid = answer.pop("id")
                except (ValueError, KeyError, TypeError, AttributeError):
                    logger.warning("ssh: the host's agent wrote a line that is not an answer")
                    continue
                with agent.lock:
                    fut = agent.pending.pop(rid, None) if isinstance(rid, int) else None
                if fut is None:
                    if rid is None:
                        logger.warning("ssh: the host's agent refused a request: %s", answer.get("error"))
                    continue  # an answer nobody waits for any more (its call timed out)
                if not fut.done():
                    fut.set_result(answer)
        except (OSError, ValueError):
            pass
        finally:
            agent.end()

    def call(self, op: str, req: dict[str, Any], *, timeout: float = 60.0, idempotent: bool = False) -> Any:
        """``op`` with ``req`` on the host's agent: its result, or AgentOpError with its message.

        Raises SSHTimeout, SSHConnectionLost (the agent ended while the op ran; an
        ``idempotent`` op is sent once more first) and the transport's connect errors."""
        from overcloud.underclouds.ssh.transport import SSHConnectionLost, SSHTimeout

        for attempt in (1, 2):
            agent = self._running(timeout)
            rid = next(self._ids)
            line = (json.dumps({"id": rid, "op": op, "req": req}) + "\n").encode()
            if len(line) > MAX_REQUEST:
                raise ValueError(f"{op}: the request is larger than {MAX_REQUEST} bytes")
            fut: concurrent.futures.Future = concurrent.futures.Future()
            with agent.lock:
                if not agent.alive:
                    continue
                agent.pending[rid] = fut
            self.calls += 1
            try:
                with agent.wlock:
                    agent.stream.sendall(line)
            except OSError:
                agent.end()  # nothing was sent in full: safe to send again
                if attempt == 1:
                    continue
                raise SSHConnectionLost(self.endpoint, f"the host's agent ended before {op} was sent") from None
            try:
                answer = fut.result(timeout)
            except concurrent.futures.TimeoutError:
                with agent.lock:
                    agent.pending.pop(rid, None)
                raise SSHTimeout(self.endpoint, f"agent {op} did not finish within {timeout:g} s") from None
            except _Lost:
                if idempotent and attempt == 1:
                    logger.info("ssh: the agent on %s ended during %s; asking a new one", self.endpoint, op)
                    continue
                raise SSHConnectionLost(
                    self.endpoint, f"the host's agent ended while {op} ran (it may or may not have run)") from None
            if answer.get("ok") is True:
                return answer.get("result")
            err = answer.get("error") if isinstance(answer.get("error"), dict) else {}
            raise AgentOpError(str(err.get("message") or f"{op} failed"), str(err.get("kind", "failed")),
                               str(err.get("type", "")))
        raise SSHConnectionLost(self.endpoint, f"the host's agent ended before {op} was sent")

    def close(self) -> None:
        """End the agent (its stdin closes; it finishes what is under way and exits)."""
        with self._lock:
            a, self._agent = self._agent, None
        if a is not None:
            a.end()
