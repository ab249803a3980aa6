"""The serving loop both versions share: one thread, non-blocking sockets, a selector.

A version is a table of commands (:mod:`.v1`, :mod:`.v2`); the loop reads what clients send,
runs each complete command against the state and writes the replies. Between two rounds no
command is half done, so the loop calls ``safe_point.reached()`` there: that is where an update
forks the service. The selector wakes at least every ``TICK`` seconds, so that an idle service
reaches its safe point too.
"""

from __future__ import annotations

import selectors
import socket
from collections.abc import Callable
from typing import Any

from examples.kvstore.resp import Error, ProtocolError, encode, parse_commands
from twinproxy.cooperative import Entry, SafePoint

__all__ = ["Commands", "entry_point"]

TICK = 0.02

Commands = dict[bytes, Callable[[Any, list[bytes]], object]]
"""A version: upper-case command name -> handler(state, args) returning the reply value."""


def run_command(commands: Commands, state: Any, words: list[bytes]) -> bytes:
    handler = commands.get(words[0].upper())
    if handler is None:
        return encode(Error(f"ERR unknown command '{words[0].decode('latin-1')}'"))
    try:
        return encode(handler(state, words[1:]))
    except ValueError:  # a handler unpacks its arguments: too many or too few
        return encode(Error(f"ERR wrong number of arguments for '"
                            f"{words[0].decode('latin-1').lower()}' command"))


def entry_point(commands: Commands) -> Entry:
    """The serving loop of the version whose commands are ``commands``."""

    def serve(state: Any, listener: socket.socket, safe_point: SafePoint) -> None:
        listener.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ, None)
        buffers: dict[socket.socket, bytearray] = {}
        while True:
            for key, _ in selector.select(TICK):
                if key.data is None:
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    buffers[conn] = bytearray()
                    selector.register(conn, selectors.EVENT_READ, conn)
                    continue
                conn = key.data
                try:
                    data = conn.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                buffer = buffers[conn]
                buffer += data
                try:
                    out = b"".join(run_command(commands, state, words)
                                   for words in parse_commands(buffer))
                    if out:
                        conn.setblocking(True)  # replies are small: write them whole
                        conn.sendall(out)
                        conn.setblocking(False)
                except (ProtocolError, OSError):
                    data = b""
                if not data:
                    selector.unregister(conn)
                    del buffers[conn]
                    conn.close()
            safe_point.reached()

    return serve
