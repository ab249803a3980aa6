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

from examples.kvstore.resp import Error, Map, ProtocolError, encode, parse_commands
from twinproxy.cooperative import Entry, SafePoint

__all__ = ["Commands", "entry_point"]

TICK = 0.02

Commands = dict[bytes, Callable[[Any, list[bytes]], object]]
"""A version: upper-case command name -> handler(state, args) returning the reply value."""


def hello(words: list[bytes], proto: int) -> tuple[bytes, int]:
    """``HELLO [2|3]``: a connection's choice of RESP version (redis-py asks for 3); the
    reply and the connection's version from now on."""
    if len(words) > 1:
        try:
            asked = int(words[1])
        except ValueError:
            return encode(Error("ERR Protocol version is not an integer or out of range")), proto
        if asked not in (2, 3):
            return encode(Error("NOPROTO unsupported protocol version")), proto
        proto = asked
    info = Map({"server": "kvstore", "version": "1.0.0", "proto": proto, "id": 0,
                "mode": "standalone", "role": "master", "modules": []})
    return encode(info, proto), proto


def run_command(commands: Commands, state: Any, words: list[bytes], proto: int) -> bytes:
    handler = commands.get(words[0].upper())
    if handler is None:
        return encode(Error(f"ERR unknown command '{words[0].decode('latin-1')}'"))
    try:
        return encode(handler(state, words[1:]), proto)
    except ValueError:  # a handler unpacks its arguments: too many or too few
        return encode(Error(f"ERR wrong number of arguments for '"
                            f"{words[0].decode('latin-1').lower()}' command"))


def run_all(commands: Commands, state: Any, connection: list, buffer: bytearray) -> bytes:
    """Every complete command in ``buffer``, in order; the replies. ``connection[0]`` is the
    connection's RESP version."""
    out = []
    for words in parse_commands(buffer):
        if words[0].upper() == b"HELLO":
            reply, connection[0] = hello(words, connection[0])
            out.append(reply)
        else:
            out.append(run_command(commands, state, words, connection[0]))
    return b"".join(out)


def entry_point(commands: Commands) -> Entry:
    """The serving loop of the version whose commands are ``commands``."""

    def serve(state: Any, listener: socket.socket, safe_point: SafePoint) -> None:
        listener.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ, None)
        buffers: dict[socket.socket, bytearray] = {}
        protos: dict[socket.socket, list] = {}
        while True:
            for key, _ in selector.select(TICK):
                if key.data is None:
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    buffers[conn] = bytearray()
                    protos[conn] = [2]
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
                    out = run_all(commands, state, protos[conn], buffer)
                    if out:
                        conn.setblocking(True)  # replies are small: write them whole
                        conn.sendall(out)
                        conn.setblocking(False)
                except (ProtocolError, OSError):
                    data = b""
                if not data:
                    selector.unregister(conn)
                    del buffers[conn], protos[conn]
                    conn.close()
            safe_point.reached()

    return serve
