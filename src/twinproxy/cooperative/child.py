"""The forked child: let go of the parent's connections, transform the state, check it, listen,
report, and become the new version.

Everything here runs in the child only, after ``fork()`` at the parent's safe point, in the
thread that forked (the parent's other threads do not exist here). The parent learns what
happened from one JSON line on the report pipe: ``{"address": ...}`` once the new version
listens, ``{"error": ..., "status": ...}`` when it will not. A crash (an exception escaping
this module, a signal, ``os._exit`` in a transform) leaves the pipe empty, which the parent
reads as a failure too. The child never returns into the parent's code: it ends with
``os._exit``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import traceback
from typing import TYPE_CHECKING

from twinproxy.cooperative.check import CheckFailed, time_travel

if TYPE_CHECKING:
    from twinproxy.cooperative.running import Running

__all__ = ["run_child"]


def let_go_of_inherited(keep: set[int]) -> None:
    """Point every inherited descriptor but ``keep`` (and stdio) at /dev/null.

    The parent's client connections and listening sockets must not stay open here, or a
    connection the parent closes would stay open for its client. They are replaced rather than
    closed: the parent's objects that wrap them still exist in this process, and one closed by
    the garbage collector later must not close a descriptor the new version has opened since
    under the same number.
    """
    null = os.open(os.devnull, os.O_RDWR)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep and fd != null:
            # (the directory listing's own descriptor is gone by now: OSError)
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
    os.close(null)


def _report(fd: int, message: dict) -> None:
    os.write(fd, json.dumps(message).encode() + b"\n")
    os.close(fd)


def run_child(service: Running, to: str, report_fd: int) -> None:
    """The child's whole life; never returns."""
    code = 1
    reported = False
    try:
        let_go_of_inherited({report_fd})
        transform = service.transform_for(to)
        try:
            state = time_travel(service.state, transform.forward, transform.backward)
        except CheckFailed as exc:
            _report(report_fd, {"error": str(exc), "status": 422})
            reported = True
            return
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            _report(report_fd, {
                "error": f"the state transform {service.current} -> {to} raised "
                         f"{type(exc).__name__}: {exc} ({os.path.basename(where.filename)}, "
                         f"line {where.lineno})",
                "status": 422})
            reported = True
            return
        host = service.data_host
        listener = socket.create_server((host, 0))
        port = listener.getsockname()[1]
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        _report(report_fd, {"address": shown, "pid": os.getpid()})
        reported = True
        service.become(to, state, listener, takes_over_endpoint=True)
        code = 0
    except BaseException:
        if not reported:
            with contextlib.suppress(OSError):
                _report(report_fd, {"error": "the new version's process failed before it "
                                             f"listened: {traceback.format_exc(limit=3)}",
                                    "status": 500})
        else:
            traceback.print_exc()
    finally:
        os._exit(code)
