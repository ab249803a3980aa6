"""Serving the admin API on ``proxy.control``: who may reach it, its listeners, and
:func:`serve_control`, which puts the listeners, the HTTP server and the endpoints together.

What an operator can rely on here:

* A unix socket is created with mode 0600 (the socket's mode is set before ``bind``, so the file
  is never open to others, not even for an instant) and removed on exit. A socket file left by a
  proxy that died is replaced; one that a live process answers on is an error, as is a path that
  is not a socket.
* On TCP every endpoint but ``/healthz`` needs ``Authorization: Bearer <token>`` (the token from
  ``proxy.control_token`` or ``TWINPROXY_TOKEN``). Without a token, a TCP control address must
  be a loopback one; ``twinproxy serve`` refuses to start otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Mapping
from typing import TYPE_CHECKING

import trio

from twinproxy.config import format_address
from twinproxy.control.endpoints import OPEN_PATHS, Endpoints
from twinproxy.control.http_server import DEFAULT_LIMITS, HttpServer
from twinproxy.descriptors import Reserve

if TYPE_CHECKING:
    from twinproxy.config import ProxyConfig
    from twinproxy.control.controlled import Controlled

__all__ = [
    "CONTROL_RESERVE",
    "LIMITS",
    "TOKEN_ENV",
    "ControlError",
    "control_token",
    "insecure_control",
    "is_loopback",
    "serve_control",
]

log = logging.getLogger("twinproxy.control")

TOKEN_ENV = "TWINPROXY_TOKEN"

# Where serve_control takes its limits from; tests shorten the timeouts by replacing it.
LIMITS = DEFAULT_LIMITS

CONTROL_RESERVE = 4
"""Descriptors the control API holds in reserve (:class:`~twinproxy.descriptors.Reserve`), to
accept the operator even when the process has run out of them."""


class ControlError(OSError):
    """The control address cannot be served (in use, not a socket, no token where one is
    needed). An :class:`OSError` so that ``serve`` reports it like a listen address it cannot
    bind: one line, exit status 1."""

    def __str__(self) -> str:
        return str(self.strerror)


# ---- security checks, shared with `twinproxy serve` -----------------------------------------


def control_token(proxy: ProxyConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token TCP control clients must send: the config's, else ``TWINPROXY_TOKEN``."""
    environ = os.environ if environ is None else environ
    return proxy.control_token or environ.get(TOKEN_ENV) or None


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (an IP literal or ``localhost``)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def insecure_control(proxy: ProxyConfig, environ: Mapping[str, str] | None = None
                     ) -> str | None:
    """Why serving ``proxy.control`` as configured would be unsafe, or ``None`` when it is not.

    A non-loopback TCP address without a token would let anyone who can reach it update or
    roll back the service.
    """
    control = proxy.control
    if isinstance(control, tuple) and not is_loopback(control[0]) \
            and control_token(proxy, environ) is None:
        return (f"proxy.control: {format_address(control)} is not a loopback address and there "
                f"is no token: set proxy.control_token or {TOKEN_ENV}, or use a unix socket")
    return None


# ---- the listener ---------------------------------------------------------------------------


async def _check_stale_socket(path: str) -> None:
    """Remove a socket file nothing listens on; refuse a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(errno.EEXIST, f"control socket {path}: the path exists and is not a "
                                         "socket (not removing it)")
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with trio.move_on_after(2.0):
            await probe.connect(path)
            raise ControlError(errno.EADDRINUSE, f"control socket {path}: another process is "
                                                 "listening on it (is a proxy already running?)")
    except OSError as exc:
        if isinstance(exc, ControlError):
            raise
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ControlError(exc.errno, f"control socket {path}: {exc.strerror}") from None
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    log.info("removed stale control socket %s", path)


def _bind_unix(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Linux gives the new file the socket inode's mode (less the umask) at bind time, so
        # the file is 0600 from its creation; a chmod after bind would leave a window.
        os.fchmod(sock.fileno(), 0o600)
        sock.bind(path)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ControlError(exc.errno, f"cannot listen on control socket {path}: "
                                      f"{exc.strerror}") from None
    return sock


@contextlib.asynccontextmanager
async def _listeners(control: str | tuple[str, int]):
    if isinstance(control, str):
        await _check_stale_socket(control)
        sock = _bind_unix(control)
        ours = os.stat(control)
        try:
            yield [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
        finally:
            sock.close()
            # Only our own file: a proxy started after us may have replaced it.
            with contextlib.suppress(OSError):
                st = os.lstat(control)
                if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino):
                    os.unlink(control)
    else:
        host, port = control
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise ControlError(exc.errno, f"cannot listen on control address "
                                          f"{format_address(control)}: {exc.strerror}") from None
        try:
            yield listeners
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)


async def serve_control(service: Controlled, *,
                        task_status: trio.TaskStatus[str | tuple[str, int]]
                        = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the admin API on ``service.config.proxy.control`` until cancelled.

    ``task_status.started`` is called with the control address once it accepts connections.
    Every connection's task runs in a nursery owned here, so none outlives this call; a unix
    socket file is removed when it returns.

    Raises:
        ControlError: the address cannot be served: in use, not a socket, cannot be bound, or
            a non-loopback TCP address without a token.
    """
    proxy = service.config.proxy
    problem = insecure_control(proxy)
    if problem:
        raise ControlError(errno.EACCES, problem)
    token = control_token(proxy) if isinstance(proxy.control, tuple) else None
    if isinstance(proxy.control, tuple) and token is None:
        log.warning("control API on %s has no token: any local user can drive it",
                    format_address(proxy.control))
    endpoints = Endpoints(service)
    reserve = Reserve(CONTROL_RESERVE)
    server = HttpServer(endpoints.dispatch, token=token, open_paths=OPEN_PATHS, limits=LIMITS,
                        reserve=reserve)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(reserve.close)
        listeners = await stack.enter_async_context(_listeners(proxy.control))
        nursery = await stack.enter_async_context(trio.open_nursery())
        for listener in listeners:
            nursery.start_soon(server.accept_loop, listener, nursery)
        nursery.start_soon(server.report)
        log.info("control API on %s", format_address(proxy.control))
        task_status.started(proxy.control)
