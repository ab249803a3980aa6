"""The keeper: a small process between twinproxy and each server it manages, so that the server
and everything it starts die with twinproxy, however twinproxy dies.

Why it exists. twinproxy used to give each server ``PR_SET_PDEATHSIG`` (the kernel sends a
signal to a process when its parent dies). That holds only until the server changes user: the
kernel clears the setting on any change of effective user or group, which
``memcached -u nobody`` makes at start, and on ``fork``, so a server's own children (vsftpd's
sessions, anything that daemonizes) never had it. A SIGKILLed ``twinproxy serve`` left such
a memcached running for good, holding its port and its memory.

How it works. ``backends.spawn`` starts this file as ``python -I -S keeper.py LIFE STATUS GRACE
-- COMMAND...``, in a session of its own. The keeper:

* marks itself a *child subreaper* (``PR_SET_CHILD_SUBREAPER``), so that any process below it
  whose parent exits (a double fork, a daemon) is re-parented to the keeper instead of to init:
  everything the server starts stays below the keeper, whatever user it runs as;
* starts the server (its pid is written to the STATUS pipe, or the error if it cannot run);
* watches the LIFE pipe, whose write end only twinproxy holds: the kernel closes it when
  twinproxy ends, by SIGKILL or anything else, and the keeper reads end-of-file. It then sends
  SIGTERM to the server and everything below it, waits up to GRACE seconds (the version's
  ``stop_timeout``), SIGKILLs what is left, and exits;
* when the server exits, kills what the server left behind (SIGKILL, as twinproxy's own stop
  does) and exits with the server's status, a signal included, so that twinproxy sees the
  server's exit as its own.

Signals twinproxy sends to the server's process group (SIGTERM to stop it, SIGCONT) reach the
keeper too; it ignores them and follows the server. A SIGKILL to the group ends both; the server
then also gets SIGTERM from its parent-death signal, unless it changed user.

The keeper needs no privilege: a subreaper and a pipe are open to any user. It imports only the
standard library, so that it starts in a few milliseconds; nothing of twinproxy is loaded.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import selectors
import signal
import subprocess
import sys
import time

__all__ = ["descendants", "main"]

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
IGNORED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, found through /proc.

    Process groups are not enough: some servers (vsftpd) move each session into a session of
    its own, and those processes outlive a SIGTERM to the listener.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _in_server() -> None:
    """Runs in the server's process before exec: the signals the keeper ignores are the
    server's to handle, and it gets SIGTERM if the keeper dies (while it keeps its user)."""
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(OSError):
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _reap() -> list[tuple[int, int]]:
    """Every child that has exited (the server, or orphans re-parented here), without
    waiting."""
    done = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append((pid, status))


def _end_everything(grace: float) -> None:
    """twinproxy is gone: SIGTERM to everything below, SIGKILL after ``grace`` seconds."""
    me = os.getpid()
    below = descendants(me)
    _signal_all(below, signal.SIGTERM)
    _signal_all(below, signal.SIGCONT)  # a stopped process would never see the SIGTERM
    deadline = time.monotonic() + grace
    while below and time.monotonic() < deadline:
        time.sleep(0.02)
        _reap()
        below = descendants(me)
    while below:  # a process may fork while we look: look again until none is left
        _signal_all(below, signal.SIGKILL)
        time.sleep(0.01)
        _reap()
        below = descendants(me)


def _exit_as(status: int) -> None:
    """Exit the way the server did: the same exit code, or killed by the same signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the server's crash, not ours
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # (those two cannot be caught)
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        time.sleep(1)  # a signal that does not end a process by default: end anyway
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def main(argv: list[str]) -> None:
    """``keeper.py LIFE STATUS GRACE -- COMMAND...``: see the module docstring."""
    life, status_fd, grace = int(argv[1]), int(argv[2]), float(argv[3])
    command = argv[5:]
    for sig in IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    status = os.fdopen(status_fd, "w")
    try:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        server = subprocess.Popen(command, preexec_fn=_in_server, close_fds=True)
    except OSError as exc:
        status.write(f"!{exc.errno or 0} {exc.strerror or exc}\n")
        status.close()
        os._exit(127)
    status.write(f"{server.pid}\n")
    status.close()

    # SIGCHLD wakes the selector below (through the wake-up pipe), so that the server's exit
    # is seen at once; orphans re-parented here are reaped the same way.
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    selector = selectors.DefaultSelector()
    selector.register(life, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    while True:
        for pid, code in _reap():
            if pid == server.pid:
                _signal_all(descendants(os.getpid()), signal.SIGKILL)
                _reap()
                _exit_as(code)
        for key, _ in selector.select(timeout=1.0):
            if key.fd == wake_read:
                os.read(wake_read, 4096)
            elif not os.read(life, 4096):
                print(f"twinproxy keeper: twinproxy is gone: stopping pid {server.pid} and what "
                      "it started", file=sys.stderr, flush=True)
                _end_everything(grace)
                os._exit(0)  # nobody waits for this status any more


if __name__ == "__main__":
    main(sys.argv)
