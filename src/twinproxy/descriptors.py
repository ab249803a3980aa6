"""File descriptors: how many clients the open-files limit allows, and a reserve for when they
run out anyway.

Every client costs the proxy two descriptors in SINGLE mode (its socket and its server
connection) and three during an update (a connection to each version). The default
``max_connections`` (10,000) needs 30,000 descriptors, far above the usual soft limit of 1,024.
Before this module, a proxy at the limit left new clients hanging in the accept queue while the
log got twenty EMFILE lines a second, the control API could not accept the operator, and an
update with 8,000 idle clients rolled back with "internal error" when it could not open their
connections to the new version. So, as HAProxy and redis-server do, ``serve``:

* raises its soft ``RLIMIT_NOFILE`` as far as the hard limit allows (:func:`raise_limit`);
* caps the clients it accepts at what the limit allows *during an update*
  (:func:`clients_allowed`), after keeping descriptors for itself, the control API and the
  servers, and says so in one log line at start, a warning when the config asks for more (as
  redis-server lowers ``maxclients``); past the cap a new client gets the protocol's "max number
  of clients reached" at once;
* keeps a few descriptors open in a :class:`Reserve`, opened at start so that they have low
  numbers. When descriptors run out despite the cap (a limit lowered with ``prlimit`` while the
  proxy runs, a leak), giving one back for a moment lets the relay accept a waiting client just
  to refuse it, instead of leaving it hanging in the accept queue (libuv's trick), and lets the
  control API accept the operator. When even that fails, the relay stops reading its listener
  until a client closes (as HAProxy pauses its listeners), rather than spin on a listener that
  epoll reports ready again and again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from dataclasses import dataclass

__all__ = [
    "MARGIN",
    "PER_CLIENT",
    "OpenFiles",
    "Reserve",
    "clients_allowed",
    "current",
    "describe",
    "open_now",
    "raise_limit",
]

PER_CLIENT = 3
"""Descriptors a client takes during an update: its own socket, one connection to the leader,
one to the follower (two in SINGLE mode)."""

MARGIN = 64
"""Descriptors kept for what is not a client or a control connection: the listener and the
event loop, the update's shared connections and the connections of clients that closed while
their requests still run, the backlog's spill file, the divergence log, the state sync's
connection and snapshot, readiness probes, each managed server's keeper pipe and pidfd."""


@dataclass(frozen=True)
class OpenFiles:
    """The open-files limit as ``serve`` found and left it."""

    soft: int  # the limit in force now
    hard: int
    before: int  # the soft limit before raise_limit; equal to soft when it did not change


def _kernel_ceiling() -> int:
    """The most descriptors a process may have at all (``fs.nr_open``); an unlimited hard
    limit still cannot be raised past it."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def raise_limit() -> OpenFiles:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (or the kernel's ceiling when the
    hard limit is unlimited). Never lowers it and never raises the hard limit (that needs
    privilege, and is the operator's choice: ``ulimit -Hn``, systemd's ``LimitNOFILE=``).
    A refusal by the kernel leaves the limit as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = _kernel_ceiling() if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    now, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return OpenFiles(soft=_finite(now), hard=_finite(hard), before=_finite(soft))


def current() -> OpenFiles:
    """The open-files limit as it is, unchanged."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return OpenFiles(soft=_finite(soft), hard=_finite(hard), before=_finite(soft))


def _finite(limit: int) -> int:
    return _kernel_ceiling() if limit == resource.RLIM_INFINITY else limit


def open_now() -> int:
    """How many descriptors this process has open."""
    return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself opened


def clients_allowed(limit: int, reserved: int) -> int:
    """How many clients fit in ``limit`` descriptors during an update, after ``reserved``."""
    return max(0, (limit - reserved) // PER_CLIENT)


def describe(exc: OSError) -> str:
    """A failure to make a socket in an operator's words: out of descriptors names the limit
    that was reached, the process's or the whole system's."""
    if exc.errno == errno.EMFILE:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return f"{exc.strerror} (open files limit {soft})"
    if exc.errno == errno.ENFILE:
        return f"{exc.strerror} (the system's limit, fs.file-max)"
    return str(exc.strerror or exc)


class Reserve:
    """A few descriptors held open (on ``/dev/null``) to be given up when descriptors run out.

    Open it early, so that its descriptors have low numbers: a descriptor number must be below
    the limit to be usable, so one opened late is no help after the limit has been lowered.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._fds: list[int] = []
        self.refill()

    def __len__(self) -> int:
        return len(self._fds)

    def release(self) -> bool:
        """Close one reserved descriptor, so that the next ``accept`` or ``socket`` can
        succeed; False when none is left."""
        if not self._fds:
            return False
        lowest = min(self._fds)  # the one most likely below a lowered limit
        self._fds.remove(lowest)
        os.close(lowest)
        return True

    def refill(self) -> None:
        """Open reserved descriptors again, up to ``size``, as far as the limit lets."""
        while len(self._fds) < self.size:
            try:
                self._fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return

    def close(self) -> None:
        """Close every reserved descriptor; the reserve stays empty until :meth:`refill`."""
        while self._fds:
            os.close(self._fds.pop())
