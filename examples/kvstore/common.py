"""What every version answers besides its own commands: PING (the proxy's readiness probe),
ECHO (which the proxy uses to find where replies end, in front of a single version),
COMMAND (where each command's key is, in Redis's format, so that the proxy orders requests by
key as it does for Redis) and what redis-py sends on a new connection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from examples.kvstore.resp import Error, Status

__all__ = ["COMMON", "command_table"]


def ping(state: Any, args: list[bytes]) -> object:
    return Status("PONG") if not args else args[0]


def echo(state: Any, args: list[bytes]) -> object:
    (message,) = args
    return message


def client(state: Any, args: list[bytes]) -> object:
    # redis-py sends CLIENT SETINFO on every new connection and ignores an error
    return Error("ERR unknown subcommand")


COMMON: dict[bytes, Callable[[Any, list[bytes]], object]] = {
    b"PING": ping, b"ECHO": echo, b"CLIENT": client}


def command_table(table: dict[bytes, tuple]) -> Callable[[Any, list[bytes]], object]:
    """The COMMAND handler for a version whose commands are ``table`` (name: (handler, arity,
    flags, first key, last key, step))."""
    entries = [[name.lower(), arity, flags, first, last, step]
               for name, (_, arity, flags, first, last, step) in table.items()]
    entries += [[b"ping", -1, ["fast", "stale"], 0, 0, 0],
                [b"echo", 2, ["fast"], 0, 0, 0],
                [b"command", -1, ["loading", "stale"], 0, 0, 0]]

    def command(state: Any, args: list[bytes]) -> object:
        return entries

    return command
