"""Version 2 adds a type to every value: ``PUT type key value`` (type ``string`` or ``int``,
an ``int`` value is checked), ``GET key``, ``DEL key``, ``TYPE key``.
The state: ``{key: (type, value)}``.

v1's ``PUT key value`` is still accepted, as a ``string``: clients written for v1 keep working
after the cutover. (During the update the proxy rewrites it into ``PUT string key value`` for
v2, so that MVE exercises the typed form; see configs/kvstore.toml.)"""

from __future__ import annotations

from examples.kvstore.common import COMMON, command_table
from examples.kvstore.resp import Error, Status
from examples.kvstore.server import Commands

State = dict[bytes, tuple[str, bytes]]
TYPES = ("string", "int")


def put(state: State, args: list[bytes]) -> object:
    if len(args) == 2:
        args = [b"string", *args]
    kind, key, value = args
    name = kind.decode("latin-1").lower()
    if name not in TYPES:
        return Error(f"ERR unknown type '{kind.decode('latin-1')}' (string or int)")
    if name == "int":
        try:
            int(value)
        except ValueError:
            return Error("ERR value is not an integer")
    state[key] = (name, value)
    return Status("OK")


def get(state: State, args: list[bytes]) -> object:
    (key,) = args
    entry = state.get(key)
    return None if entry is None else entry[1]


def delete(state: State, args: list[bytes]) -> object:
    (key,) = args
    return 1 if state.pop(key, None) is not None else 0


def type_of(state: State, args: list[bytes]) -> object:
    (key,) = args
    entry = state.get(key)
    return Status("none" if entry is None else entry[0])


TABLE = {
    # keys at 1 and 2: the key is at 2 in the typed form, at 1 in v1's (ordering by both words
    # is never wrong, only a little less concurrent)
    b"PUT": (put, -3, ["write"], 1, 2, 1),
    b"GET": (get, 2, ["readonly", "fast"], 1, 1, 1),
    b"DEL": (delete, 2, ["write"], 1, 1, 1),
    b"TYPE": (type_of, 2, ["readonly", "fast"], 1, 1, 1),
}

COMMANDS: Commands = {**COMMON, **{name: entry[0] for name, entry in TABLE.items()}}
COMMANDS[b"COMMAND"] = command_table(TABLE)
