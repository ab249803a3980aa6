"""Managed server processes and external server addresses.

A :class:`Backend` is one version of the service as the proxy sees it: an address, and whether it
serves right now. A managed backend is a process twinproxy starts on a free loopback port, in a
private directory, and supervises: it is probed until it answers its protocol, restarted with
back-off when it dies while serving, and always stopped (SIGTERM, then SIGKILL after the grace
period) when its supervisor ends, whether by a clean stop, Ctrl-C or an exception. Each server
runs under a keeper (:mod:`twinproxy.keeper`) that ends it, and everything it started, when
twinproxy ends in a way no code of its own sees: SIGKILL, a crash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from twinproxy import keeper
from twinproxy.keeper import descendants

if TYPE_CHECKING:
    from twinproxy.config import VersionConfig
    from twinproxy.protocols.base import Codec

log = logging.getLogger("twinproxy.backends")

Address = tuple[str, int]


class BackendError(Exception):
    """A server could not be started or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def probe(codec: Codec, address: Address, timeout: float = 2.0) -> bool:
    """Whether the server at ``address`` answers the protocol's readiness probe.

    Does not raise: any failure (refused, reset, timeout, garbage) means "not ready".
    """
    from twinproxy.protocols.messages import ProtocolError

    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(*address)
        except OSError:
            return False
        async with stream:
            replies = codec.reply_reader()
            request = codec.probe()
            try:
                if request:
                    for req in codec.request_reader().receive(request):
                        replies.expect(req)
                    await stream.send_all(request)
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        return False
                    reply = replies.receive(data)
                    if reply:
                        return codec.probe_ok(reply[0])
            except (OSError, trio.BrokenResourceError, ProtocolError):
                return False
    return False


async def sentinel_works(codec: Codec, address: Address, timeout: float = 2.0) -> bool:
    """Whether a fresh connection to ``address`` answers the codec's sentinel exactly.

    SINGLE mode leaves replies unframed only on such a server: one that wants a password before
    anything, or denies the sentinel's command to the default user, answers it otherwise.
    """
    sentinel = codec.sentinel()
    if sentinel is None:
        return False
    request, reply = sentinel
    return await _ask(address, request, len(reply), timeout) == reply


async def sentinel_after_login(codec: Codec, address: Address, login: tuple[str, ...],
                               timeout: float = 2.0) -> tuple[object, bytes, bytes] | None:
    """On a server that wants a password: whether the codec's sentinel is answered exactly on a
    fresh connection logged in with the proxy's own ``login``. If so, ``(the user that login
    is, its request, its reply)``, the last two for counting it among the proxy's own
    requests; else None.

    Why: with a password set, no fresh connection answers the sentinel, so SINGLE mode would
    frame every reply (twice the proxy's CPU per request under redis-benchmark). A connection
    its client logged in as that user may run what the proxy's own may, the sentinel among
    them, so its replies can go unframed once it is logged in.
    """
    sentinel = codec.sentinel()
    logs_in = codec.login_request(login)
    if sentinel is None or logs_in is None:
        return None
    request, reply = sentinel
    auth, ok, user = logs_in
    answer = await _ask(address, auth + request, len(ok) + len(reply), timeout)
    return (user, auth, ok) if answer == ok + reply else None


async def refused_form(codec: Codec, address: Address, timeout: float = 2.0
                       ) -> tuple[bytes, bytes] | None:
    """The words around the token in the server's answer to the codec's refused sentinel
    (:meth:`~twinproxy.protocols.base.Codec.refused_sentinel`), as ``(before, after)``; None
    when there is no such sentinel or the answer is not one line naming the token once."""
    sentinel = codec.refused_sentinel()
    if sentinel is None:
        return None
    request, token = sentinel
    answer = await _ask(address, request, 0, timeout)
    if answer is None or answer.count(token) != 1:
        return None
    before, after = answer.split(token)
    return before, after


async def _ask(address: Address, request: bytes, size: int, timeout: float) -> bytes | None:
    """Send ``request`` on a fresh connection and return the answer: ``size`` bytes, or with
    ``size`` 0 one line (through its CRLF); None if the server closed, failed or took longer
    than ``timeout``."""
    with trio.move_on_after(timeout):
        try:
            async with await trio.open_tcp_stream(*address) as stream:
                await stream.send_all(request)
                data = b""
                while (len(data) < size) if size else not data.endswith(b"\r\n"):
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return None
                    data += chunk
                return data
        except (OSError, trio.BrokenResourceError):
            return None
    return None


KEEPER = (sys.executable, "-I", "-S", keeper.__file__)
"""How a keeper is started: this Python, isolated (no site-packages, no environment variables
of its own), on the keeper's file, which needs only the standard library."""


class Child:
    """A managed server under its keeper (:mod:`twinproxy.keeper`), waited for through a pidfd.

    ``pid`` is the server's own (what the log and ``/status`` show, what an operator signals);
    ``popen`` is the keeper, whose exit status is the server's and whose process group holds
    the server. ``life`` is twinproxy's end of the pipe the keeper watches: it stays open as long
    as twinproxy runs, and the kernel closes it when twinproxy dies, however it dies.
    """

    def __init__(self, popen: subprocess.Popen, pid: int, life: int):
        self.popen = popen
        self.pid = pid
        self._life: int | None = life
        self._watched = False

    @property
    def group(self) -> int:
        """The process group of the keeper and the server."""
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        code = self.popen.poll()
        if code is not None:
            self._release()
        return code

    def _release(self) -> None:
        if self._life is not None:
            os.close(self._life)
            self._life = None

    async def wait(self) -> int:
        """Wait until the server (its keeper) has exited, and reap it; returns its status."""
        if self._watched:  # someone already waits on the pidfd: poll beside them
            while self.popen.poll() is None:
                await trio.sleep(0.02)
            return self.popen.returncode
        self._watched = True
        try:
            fd = os.pidfd_open(self.popen.pid)
        except OSError:  # already reaped
            return self.popen.wait()
        try:
            while self.popen.poll() is None:
                await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
            self._watched = False
        self._release()
        return self.popen.returncode


async def spawn(argv: list[str], *, cwd: str, env: dict[str, str], output: int,
                grace: float) -> Child:
    """Start ``argv`` under a keeper, in a session of its own, its output to ``output``; the
    server and what it starts die with twinproxy (after ``grace`` seconds of SIGTERM).

    The fork happens in the calling (trio) thread and takes about a millisecond; the keeper's
    start (a few tens of milliseconds) is awaited, not blocked on.

    Raises:
        OSError: the command cannot be run (no such file, not executable ...).
    """
    life_read, life = os.pipe()
    status_read, status_write = os.pipe()
    try:
        popen = subprocess.Popen(
            [*KEEPER, str(life_read), str(status_write), repr(grace), "--", *argv],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, cwd=cwd,
            env=env, start_new_session=True, pass_fds=(life_read, status_write))
    except BaseException:
        for fd in (life_read, life, status_read, status_write):
            os.close(fd)
        raise
    os.close(life_read)
    os.close(status_write)
    child = Child(popen, popen.pid, life)
    try:
        report = b""
        with trio.CancelScope(shield=True):  # a keeper started is a keeper waited for
            while not report.endswith(b"\n"):
                await trio.lowlevel.wait_readable(status_read)
                chunk = os.read(status_read, 4096)
                if not chunk:
                    break
                report += chunk
    finally:
        os.close(status_read)
    text = report.decode("utf-8", "replace").strip()
    if text.isdigit():
        child.pid = int(text)
        return child
    with trio.CancelScope(shield=True):
        await child.wait()
    if text.startswith("!"):
        code, _, message = text[1:].partition(" ")
        raise OSError(int(code) if code.isdigit() else 0, message)
    raise OSError(0, f"the keeper exited with status {popen.returncode} before starting it")


class ServerProcess:
    """One run of a managed server's command."""

    def __init__(self, version: VersionConfig, port: int, workdir: str, process: Child):
        self.version = version
        self.port = port
        self.dir = workdir
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> Address:
        return ("127.0.0.1", self.port)

    def log_tail(self, limit: int = 2000) -> str:
        """The end of the server's output, to say why it failed."""
        try:
            with open(os.path.join(self.dir, "server.log"), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - limit))
                return f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server's process group (its keeper, the server, and children
        of the server that stayed in its group)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.group, sig)

    def _kill_descendants(self, pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    async def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns when the process is gone.

        Runs shielded from cancellation, so that a Ctrl-C never leaves the server behind.
        """
        with trio.CancelScope(shield=True):
            below = descendants(self.process.group) if self.process.returncode is None else []
            if self.process.returncode is None:
                self.signal(signal.SIGTERM)
                self.signal(signal.SIGCONT)  # a SIGSTOPped server would never see the SIGTERM
                with trio.move_on_after(grace):
                    await self.process.wait()
                if self.process.returncode is None:
                    log.warning("%s (pid %d) ignored SIGTERM for %.1fs: killing it",
                                self.version.name, self.pid, grace)
                    self.signal(signal.SIGKILL)
                    await self.process.wait()
            # Children the command started (in its group or not) go with it.
            self.signal(signal.SIGKILL)
            self._kill_descendants(below + descendants(self.process.group))


async def start_server(version: VersionConfig, codec: Codec, workdir: str | None = None,
                       port: int | None = None) -> ServerProcess:
    """Start a managed version on a free loopback port and wait until it answers its protocol.

    Args:
        version: a managed version of the config (it has a ``command``).
        codec: the protocol, for the readiness probe.
        workdir: the private directory (``{dir}``); a new one is made when None.
        port: the port to use; a free one when None.

    Returns:
        The running, ready server. Its output goes to ``server.log`` in its directory.

    Raises:
        BackendError: the command could not run, exited, or was not ready in ``ready_timeout``;
            the message carries the end of its output. Nothing is left running.
    """
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix=f"twinproxy-{version.name}-")
    port = port or free_port()
    argv = version.command_for(port, workdir)
    env = {**os.environ, **version.env}
    with open(os.path.join(workdir, "server.log"), "ab") as out:
        try:
            process = await spawn(argv, cwd=workdir, env=env, output=out.fileno(),
                                  grace=version.stop_timeout)
        except OSError as exc:
            raise BackendError(f"version {version.name}: cannot run {argv[0]!r}: {exc}") from exc
    server = ServerProcess(version, port, workdir, process)
    try:
        with trio.move_on_after(version.ready_timeout) as waiting:
            while not await probe(codec, server.address, timeout=1.0):
                if process.returncode is not None:
                    raise BackendError(
                        f"version {version.name}: {argv[0]} exited with status "
                        f"{process.returncode} before it was ready: {server.log_tail()}")
                await trio.sleep(0.02)
        if waiting.cancelled_caught:
            raise BackendError(f"version {version.name}: not ready after {version.ready_timeout}s "
                               f"on port {port}: {server.log_tail()}")
    except BaseException:
        await server.stop(version.stop_timeout)
        raise
    log.info("started %s: pid %d on 127.0.0.1:%d", version.name, server.pid, port)
    return server


class AdoptedProcess:
    """A server process twinproxy did not start but is told to end (a version a cooperative
    service forked, or the service that forked it): watched and signalled through a pidfd taken
    when it is adopted, so that a pid reused after its end is never signalled. Its parent, not
    twinproxy, reaps it."""

    def __init__(self, pid: int):
        self.pid = pid
        self._watched = False
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self._fd = None  # gone already

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)

    async def wait(self) -> None:
        """Return once the process has exited (or was gone when adopted)."""
        if self._fd is None:
            return
        if self._watched:  # someone already waits on the pidfd: poll beside them
            while not select.select([self._fd], [], [], 0)[0]:
                await trio.sleep(0.02)
            return
        self._watched = True
        try:
            await trio.lowlevel.wait_readable(self._fd)
        finally:
            self._watched = False

    def signal(self, sig: int) -> None:
        if self._fd is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                signal.pidfd_send_signal(self._fd, sig)

    async def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; shielded, as a managed one's."""
        with trio.CancelScope(shield=True):
            self.signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                await self.wait()
                return
            log.warning("pid %d ignored SIGTERM for %.1fs: killing it", self.pid, grace)
            self.signal(signal.SIGKILL)
            await self.wait()


class Backend:
    """One version as the proxy sees it: where it is, and whether it serves.

    The proxy core reads ``address`` and ``up`` on every new server connection and is told of
    changes through the ``on_change`` callback, called in the trio thread.
    """

    def __init__(self, version: VersionConfig, codec: Codec):
        self.version = version
        self.codec = codec
        self.name = version.name
        self.server: ServerProcess | None = None
        self.address: Address | None = version.address
        self.up = version.address is not None  # an external one is assumed up
        self.adopted: AdoptedProcess | None = None
        self.sentinel_ok = False  # see sentinel_works(); checked each time it comes up
        # Where a password is wanted: the user whose connections answer the sentinel (see
        # sentinel_after_login), or None; checked at the same times.
        self.sentinel_user: object = None
        self.refused: tuple[bytes, bytes] | None = None  # see refused_form(); the same
        # The proxy's sentinels and readiness probes this version answered since its counts
        # were last reset (CONFIG RESETSTAT): the counts a client's INFO shows are given
        # without them (Codec.without_probes).
        self.sentinels = 0
        self.probes = 0
        self.own: dict[Any, tuple[int, int, int]] = {}  # others (an update's that rolled back)
        self.restarts = 0
        self.on_change: Callable[[Backend], None] = lambda backend: None
        self._stopping = False
        self._workdir: str | None = None
        self._cancel: trio.CancelScope | None = None
        self._stopped = trio.Event()

    @property
    def pid(self) -> int | None:
        if self.server:
            return self.server.pid
        return self.adopted.pid if self.adopted else None

    def adopt(self, address: Address | None, pid: int) -> None:
        """This version serves at ``address`` as process ``pid``, which twinproxy did not start
        (a cooperative update's fork, or the service that forked it): from now on
        :meth:`stop` ends that process, and a forked version's :meth:`run` watches it."""
        self.adopted = AdoptedProcess(pid)
        if address is not None:
            self.address = address

    @property
    def workdir(self) -> str | None:
        """The managed server's private directory (``{dir}``) while it runs, else None."""
        return self._workdir

    @property
    def stopping(self) -> bool:
        """Whether twinproxy itself is stopping this version (a change to down is then expected,
        not a failure to report)."""
        return self._stopping

    async def _check_sentinel(self) -> None:
        if self.address is not None:
            self.sentinel_ok = await sentinel_works(self.codec, self.address)
            self.sentinels += self.sentinel_ok  # (it ran that one)
            self.sentinel_user = None
            login = None if self.sentinel_ok else self.login()
            if login is not None:
                logged = await sentinel_after_login(self.codec, self.address, login)
                if logged is not None:
                    self.sentinel_user, auth, ok = logged
                    self.sentinels += 1
                    self._count_own(auth, ok)
            self.refused = await refused_form(self.codec, self.address)

    def login(self) -> tuple[str, ...] | None:
        """The version's own login (``VersionConfig.login``); None: none, or its
        ``password_env`` unset since the config was loaded."""
        try:
            return self.version.login()
        except LookupError:  # (its variable unset since the config was loaded)
            return None

    def _count_own(self, raw: bytes, reply: bytes) -> None:
        """A request of the proxy's own that this version ran: out of the counts its INFO
        shows clients (Codec.without_probes), as the sentinels are."""
        request = self.codec.request_reader().receive(raw)[0]
        self.codec.count_own(self.own, request, reply)

    def _set(self, up: bool, address: Address | None) -> None:
        changed = (up, address) != (self.up, self.address)
        self.up, self.address = up, address
        if changed:
            self.on_change(self)

    def mark_down(self) -> None:
        """The proxy saw the server fail (refused, reset): treat it as down until it answers."""
        if self.up:
            self._set(False, self.address)

    async def run(self, workdir: str | None = None, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep this version serving until cancelled or :meth:`stop`; then stop it.

        ``task_status.started()`` is called once it serves the first time, so that
        ``await nursery.start(backend.run)`` returns a ready backend. ``workdir``: a private
        directory prepared beforehand (a state sync puts the snapshot there); it is removed when
        the backend stops, as one made here is.

        Raises:
            BackendError: a managed server could not be started the first time.
        """
        self._stopping = False
        self._workdir = workdir
        self._stopped = trio.Event()
        self._cancel = trio.CancelScope()
        try:
            with self._cancel:
                if self.version.managed:
                    await self._supervise(task_status)
                elif self.version.forked:
                    await self._watch_forked(task_status)
                else:
                    await self._watch_external(task_status)
        finally:
            self._stopping = True
            if self.server is not None:
                await self.server.stop(self.version.stop_timeout)
                self.server = None
            # An adopted process is ended only by stop() (a rollback, a cutover): twinproxy
            # stopping leaves the service serving, as it does an external one.
            self.adopted = None
            self._set(False, self.address)
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
            self._cancel = None
            self._stopped.set()

    async def stop(self) -> None:
        """Stop this version now and wait until its ``run`` has returned (a managed server is
        not restarted, an external one no longer watched)."""
        self._stopping = True
        scope, stopped = self._cancel, self._stopped
        if scope is None:
            return  # not running
        if self.server is not None:
            await self.server.stop(self.version.stop_timeout)
        if self.adopted is not None:
            await self.adopted.stop(self.version.stop_timeout)
        scope.cancel()
        await stopped.wait()

    async def _supervise(self, task_status: trio.TaskStatus[None]) -> None:
        v = self.version
        if self._workdir is None:
            self._workdir = tempfile.mkdtemp(prefix=f"twinproxy-{v.name}-")
        self.server = await start_server(v, self.codec, self._workdir)
        self.address = self.server.address
        self.sentinels, self.probes, self.own = 0, 1, {}  # (a new process: the probe that
        # found it ready)
        await self._check_sentinel()
        self._set(True, self.server.address)
        task_status.started()
        delay = v.restart_backoff
        while True:
            started = trio.current_time()
            await self.server.process.wait()
            if self._stopping:
                return
            code = self.server.process.returncode
            log.error("version %s (pid %d) exited with status %s: %s", v.name, self.server.pid,
                      code, self.server.log_tail(500) or "no output")
            self._set(False, self.address)
            if not v.restart:
                log.error("version %s is not restarted (restart = false)", v.name)
                await trio.sleep_forever()
            if trio.current_time() - started > 30:
                delay = v.restart_backoff  # it ran fine for a while: start the back-off over
            while True:
                log.warning("restarting %s in %.1fs", v.name, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, v.restart_backoff_max)
                try:
                    self.server = await start_server(v, self.codec, self._workdir)
                except BackendError as exc:
                    log.error("%s", exc)
                    continue
                self.restarts += 1
                self.address = self.server.address
                self.sentinels, self.probes, self.own = 0, 1, {}
                await self._check_sentinel()
                self._set(True, self.server.address)
                break

    async def _watch_forked(self, task_status: trio.TaskStatus[None]) -> None:
        """A version the service forked: up once adopted, down for good when its process ends
        (nobody here can start it again)."""
        if self.adopted is None or self.address is None:
            raise BackendError(f"version {self.name} is forked by the service at an update: "
                               "it cannot be started on its own")
        await self._check_sentinel()
        self._set(True, self.address)
        task_status.started()
        await self.adopted.wait()
        if not self._stopping:
            log.error("version %s (pid %d) exited", self.name, self.adopted.pid)
            self._set(False, self.address)
        await trio.sleep_forever()

    async def _watch_external(self, task_status: trio.TaskStatus[None]) -> None:
        """An external server is assumed up; when the proxy marks it down, probe it back up."""
        assert self.address is not None
        self.up = True
        await self._check_sentinel()
        task_status.started()
        while True:
            await trio.sleep(1.0)
            if not self.up and await probe(self.codec, self.address):
                log.info("version %s at %s:%d answers again", self.name, *self.address)
                await self._check_sentinel()
                self._set(True, self.address)
