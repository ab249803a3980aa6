"""Version 1: ``PUT key value``, ``GET key``, ``DEL key``. The state: ``{key: value}``."""

from __future__ import annotations

from examples.kvstore.common import COMMON, command_table
from examples.kvstore.resp import Status
from examples.kvstore.server import Commands

State = dict[bytes, bytes]


def put(state: State, args: list[bytes]) -> object:
    key, value = args
    state[key] = value
    return Status("OK")


def get(state: State, args: list[bytes]) -> object:
    (key,) = args
    return state.get(key)


def delete(state: State, args: list[bytes]) -> object:
    (key,) = args
    return 1 if state.pop(key, None) is not None else 0


# name: handler, and its entry in COMMAND (arity, flags, first key, last key, step)
TABLE = {
    b"PUT": (put, 3, ["write"], 1, 1, 1),
    b"GET": (get, 2, ["readonly", "fast"], 1, 1, 1),
    b"DEL": (delete, 2, ["write"], 1, 1, 1),
}

COMMANDS: Commands = {**COMMON, **{name: entry[0] for name, entry in TABLE.items()}}
COMMANDS[b"COMMAND"] = command_table(TABLE)
