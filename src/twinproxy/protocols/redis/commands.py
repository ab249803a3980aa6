"""What a Redis request touches: the command table and the parsed view MVE orders requests by.

The table comes from the server's own ``COMMAND`` reply (6.2: seven fields per command; 7.0: ten,
with key specs and subcommands such as ``client|setname``), so module commands are known too.
When no server table is given, a built-in one generated from redis-server 7.0's reply is used
(:mod:`twinproxy.protocols.redis.command_data`).

Keys come from three places, in this order:

1. commands whose keys move with their arguments get their own extraction, as redis-server's
   ``*GetKeys`` functions do it: numkeys (EVAL, FCALL, ZUNIONSTORE, LMPOP ...), STREAMS (XREAD),
   STORE (SORT, GEORADIUS), KEYS (MIGRATE, 6.2's STRALGO), MEMORY USAGE (6.2);
2. other commands flagged ``movablekeys`` with 7.0 key specs: the key specs;
3. the rest: first key, last key (negative: from the end) and step.

A request whose command the table does not know is a global write (a barrier): the server will
reject it, and ordering it with everything costs only concurrency. ``describe`` never raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from twinproxy.protocols.messages import Request
from twinproxy.protocols.redis.names import ALWAYS_BLOCKING
from twinproxy.protocols.redis.textparse import string2ll
from twinproxy.protocols.redis.types import canonical

_SCRIPTS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One 7.0 key spec, reduced to what finding keys needs."""

    begin: str  # "index", "keyword" or "unknown"
    index: int = 0
    keyword: bytes = b""
    startfrom: int = 0
    find: str = "unknown"  # "range", "keynum" or "unknown"
    lastkey: int = 0
    keystep: int = 1
    limit: int = 0
    keynumidx: int = 0
    firstkey: int = 0
    not_key: bool = False


@dataclass(frozen=True, slots=True)
class CommandInfo:
    """One command (or subcommand, named ``PARENT|SUB``) as the server describes it."""

    name: str
    arity: int
    flags: frozenset[str]
    first: int
    last: int
    step: int
    key_specs: tuple[KeySpec, ...] = ()
    subcommands: dict[bytes, CommandInfo] = field(default_factory=dict)

    @property
    def movable(self) -> bool:
        return "movablekeys" in self.flags


class CommandTable:
    """Commands by upper-case name, with their subcommands by upper-case bytes."""

    def __init__(self, commands: Iterable[CommandInfo]) -> None:
        self.commands = {c.name: c for c in commands}
        # describe's shortcut for commands with fixed key positions: name -> (first, last, step,
        # write, global when keyless, blocking), filled as requests come.
        self.plans: dict[str, tuple[int, int, int, bool, bool, bool] | None] = {}

    def __len__(self) -> int:
        return len(self.commands)

    def __contains__(self, name: object) -> bool:
        return name in self.commands

    def lookup(self, name: str, args: Sequence[bytes] = ()) -> CommandInfo | None:
        """The entry for a request: its subcommand's when the table has one, else the command's."""
        info = self.commands.get(name)
        if info is not None and info.subcommands and args:
            return info.subcommands.get(args[0].upper(), info)
        return info

    @classmethod
    def from_command_reply(cls, reply: Any) -> CommandTable:
        """A table from the value of the server's ``COMMAND`` reply (RESP2 or RESP3, 6.2 or 7.0).

        Entries that do not have the documented shape are skipped.

        Raises:
            ValueError: the reply is not an array of command entries.
        """
        entries = canonical(reply)
        if type(entries) is not tuple:
            raise ValueError("a COMMAND reply is an array of command entries")
        return cls(info for info in map(_entry, entries) if info is not None)


def _entry(entry: Any) -> CommandInfo | None:
    try:
        name, arity, flags, first, last, step = entry[:6]
        subs = {}
        if len(entry) >= 10:
            for sub in entry[9]:
                info = _entry(sub)
                if info is not None:
                    subs[info.name.split("|", 1)[-1].encode("latin-1")] = info
        specs = tuple(filter(None, map(_key_spec, entry[8]))) if len(entry) >= 9 else ()
        if specs and all(spec.not_key for spec in specs):
            first = last = step = 0  # shard channels, declared as keys only for cluster routing
        return CommandInfo(
            name=name.upper().decode("latin-1"),
            arity=int(arity),
            flags=frozenset(f.lower().decode("latin-1") for f in flags),
            first=int(first),
            last=int(last),
            step=int(step),
            key_specs=specs,
            subcommands=subs,
        )
    except (TypeError, ValueError, AttributeError, IndexError):
        return None


def _pairs(flat: Any) -> dict:
    if type(flat) is not tuple:
        return {}
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2) if type(flat[i]) is bytes}


def _key_spec(raw: Any) -> KeySpec | None:
    spec = _pairs(raw)
    begin = _pairs(spec.get(b"begin_search"))
    find = _pairs(spec.get(b"find_keys"))
    bspec = _pairs(begin.get(b"spec"))
    fspec = _pairs(find.get(b"spec"))
    flags = {f.lower() for f in spec.get(b"flags", ()) if type(f) is bytes}
    try:
        return KeySpec(
            begin=begin.get(b"type", b"unknown").decode("latin-1"),
            index=int(bspec.get(b"index", 0)),
            keyword=bspec.get(b"keyword", b""),
            startfrom=int(bspec.get(b"startfrom", 0)),
            find=find.get(b"type", b"unknown").decode("latin-1"),
            lastkey=int(fspec.get(b"lastkey", 0)),
            keystep=int(fspec.get(b"keystep", 1)),
            limit=int(fspec.get(b"limit", 0)),
            keynumidx=int(fspec.get(b"keynumidx", 0)),
            firstkey=int(fspec.get(b"firstkey", 0)),
            not_key=b"not_key" in flags,
        )
    except (TypeError, ValueError, AttributeError):
        return None


# -- keys ------------------------------------------------------------------------------------
# Each extractor takes the arguments after the command name (argv[1:]) and returns key bytes.


def _range_keys(argv_len: int, args: Sequence[bytes], first: int, last: int, step: int) -> list:
    if first <= 0 or step <= 0:
        return []
    if last < 0:
        last += argv_len
    last = min(last, argv_len - 1)
    return [args[i - 1] for i in range(first, last + 1, step)]


def _numkeys(args: Sequence[bytes], at: int) -> list[bytes]:
    """The keys counted by the number at ``args[at]`` and following it."""
    if at >= len(args):
        return []
    n = string2ll(args[at])
    if n is None or n <= 0:
        return []
    return list(args[at + 1 : at + 1 + n])


def _store_numkeys(args: Sequence[bytes]) -> list[bytes]:  # ZUNIONSTORE dest numkeys k ...
    return [*args[:1], *_numkeys(args, 1)] if args else []


def _xread(args: Sequence[bytes]) -> list[bytes]:
    """redis-server's xreadGetKeys: options up to STREAMS, then half of the rest are keys."""
    pos = _xread_streams(args)
    if pos is None:
        return []
    rest = args[pos + 1 :]
    if not rest or len(rest) % 2:
        return []
    return list(rest[: len(rest) // 2])


def _xread_streams(args: Sequence[bytes]) -> int | None:
    """Where STREAMS is in an XREAD/XREADGROUP, skipping option arguments as the server does."""
    i = 0
    while i < len(args):
        word = args[i].upper()
        if word in (b"BLOCK", b"COUNT"):
            i += 2
        elif word == b"GROUP":
            i += 3
        elif word == b"NOACK":
            i += 1
        elif word == b"STREAMS":
            return i
        else:
            return None
    return None


def _xread_blocks(args: Sequence[bytes]) -> bool:
    i = 0
    while i < len(args):
        word = args[i].upper()
        if word == b"BLOCK":
            return True
        if word == b"COUNT":
            i += 2
        elif word == b"GROUP":
            i += 3
        elif word == b"NOACK":
            i += 1
        else:
            return False
    return False


def _sort(args: Sequence[bytes]) -> list[bytes]:
    """redis-server's sortGetKeys: the key, and the last STORE destination."""
    if not args:
        return []
    keys = [args[0]]
    store = None
    skips = {b"LIMIT": 2, b"GET": 1, b"BY": 1}
    i = 1
    while i < len(args):
        word = args[i].upper()
        if word in skips:
            i += skips[word]
        elif word == b"STORE" and i + 1 < len(args):
            store = args[i + 1]
        i += 1
    return [*keys, store] if store is not None else keys


def _migrate(args: Sequence[bytes]) -> list[bytes]:
    """redis-server's migrateGetKeys: the key argument, or what follows KEYS when it is empty."""
    if len(args) < 3:
        return []
    skips = {b"COPY": 0, b"REPLACE": 0, b"AUTH": 1, b"AUTH2": 2}
    i = 5
    while i < len(args):
        word = args[i].upper()
        if word == b"KEYS":
            return [] if args[2] else list(args[i + 1 :])
        i += skips.get(word, 0) + 1
    return [args[2]]


def _georadius(args: Sequence[bytes]) -> list[bytes]:
    """redis-server's georadiusGetKeys: the key and the last STORE/STOREDIST destination."""
    if not args:
        return []
    store = None
    i = 4
    while i < len(args):
        if args[i].upper() in (b"STORE", b"STOREDIST") and i + 1 < len(args):
            store = args[i + 1]
            i += 1
        i += 1
    return [args[0]] if store is None else [args[0], store]


def _memory(args: Sequence[bytes]) -> list[bytes]:  # 6.2: MEMORY USAGE key
    return [args[1]] if len(args) >= 2 and args[0].upper() == b"USAGE" else []


def _stralgo(args: Sequence[bytes]) -> list[bytes]:  # 6.2: STRALGO LCS ... KEYS k1 k2
    for i in range(1, len(args)):
        word = args[i].upper()
        if word == b"STRINGS":
            break
        if word == b"KEYS" and len(args) - 1 - i >= 2:
            return [args[i + 1], args[i + 2]]
    return []


_MOVABLE: dict[str, Callable[[Sequence[bytes]], list[bytes]]] = {
    **dict.fromkeys(_SCRIPTS, lambda a: _numkeys(a, 1)),
    **dict.fromkeys(("ZUNIONSTORE", "ZINTERSTORE", "ZDIFFSTORE"), _store_numkeys),
    **dict.fromkeys(
        ("ZUNION", "ZINTER", "ZDIFF", "ZINTERCARD", "SINTERCARD", "LMPOP", "ZMPOP"),
        lambda a: _numkeys(a, 0),
    ),
    **dict.fromkeys(("BLMPOP", "BZMPOP"), lambda a: _numkeys(a, 1)),
    "XREAD": _xread,
    "XREADGROUP": _xread,
    "SORT": _sort,
    "SORT_RO": lambda a: list(a[:1]),
    "MIGRATE": _migrate,
    "GEORADIUS": _georadius,
    "GEORADIUSBYMEMBER": _georadius,
    "MEMORY": _memory,
    "STRALGO": _stralgo,
}


def _spec_keys(specs: tuple[KeySpec, ...], args: Sequence[bytes]) -> list[bytes] | None:
    """Keys by 7.0 key specs (redis-server's getKeysUsingKeySpecs); None if one is unknown."""
    argc = len(args) + 1
    keys: list[bytes] = []
    for spec in specs:
        if spec.not_key:
            continue
        if spec.begin == "index":
            first = spec.index
        elif spec.begin == "keyword":
            first = _keyword(spec, args)
            if not first:
                continue
        else:
            return None
        if spec.find == "range":
            step = spec.keystep
            if spec.lastkey >= 0:
                last = first + spec.lastkey
            elif not spec.limit:
                last = argc + spec.lastkey
            else:
                last = first + ((argc - first) // spec.limit + spec.lastkey)
        elif spec.find == "keynum":
            step = spec.keystep
            at = first + spec.keynumidx
            n = string2ll(args[at - 1]) if 0 < at < argc else None
            if n is None or n < 0:
                continue
            first += spec.firstkey
            last = first + (n - 1) * step  # n keys, step apart
        else:
            return None
        if step <= 0 or first <= 0:
            continue
        keys.extend(args[i - 1] for i in range(first, min(last, argc - 1) + 1, step))
    return keys


def _keyword(spec: KeySpec, args: Sequence[bytes]) -> int:
    argc = len(args) + 1
    start = spec.startfrom if spec.startfrom > 0 else argc + spec.startfrom
    end = argc - 1 if spec.startfrom > 0 else 1
    step = 1 if start <= end else -1
    i = start
    while i != end:
        if i >= argc or i < 1:
            break
        if args[i - 1].upper() == spec.keyword.upper():
            return i + 1
        i += step
    return 0


def _plan(table: CommandTable, name: str) -> tuple[int, int, int, bool, bool, bool] | None:
    info = table.commands.get(name)
    if (
        info is None or info.subcommands or info.movable or name in _MOVABLE or name in _SCRIPTS
        or name in ("SCRIPT", "XREAD", "XREADGROUP", "AUTH", "HELLO", "DEBUG")
    ):  # fmt: skip
        return None
    rw = "write" in info.flags or "readonly" in info.flags
    return (info.first, info.last, info.step, "write" in info.flags, not info.first and rw,
            name in ALWAYS_BLOCKING)  # fmt: skip


# ACL subcommands that change users: a login or a command of another connection sent after one
# must run after it on the follower too, as it did on the leader (ordering.py tracks neither
# otherwise: they name no keys). CONFIG SET likewise (requirepass ...).
_ACL_CHANGES = frozenset({b"SETUSER", b"DELUSER", b"LOAD"})
_SUBSCRIBES = frozenset({"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"})
_UNSUBSCRIBES = frozenset({"UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"})
_COUNTED = _SUBSCRIBES | _UNSUBSCRIBES | {"CLIENT"}


def reply_count(name: str, args: Sequence[bytes]) -> int | None:
    """Replies to one request on a connection in its default state (``Request.replies``).

    A (P|S)SUBSCRIBE is confirmed once per channel, an UNSUBSCRIBE too, or once per current
    subscription when it names none (``None``: the connection knows). CLIENT REPLY OFF and SKIP
    are not answered. Everything else gets one reply, an error included.
    """
    if name in _SUBSCRIBES:
        return len(args) or 1  # with no channel: one error
    if name in _UNSUBSCRIBES:
        return len(args) or None
    if name == "CLIENT" and len(args) == 2 and args[0].upper() == b"REPLY":
        return 0 if args[1].upper() in (b"OFF", b"SKIP") else 1
    return 1


def describe(request: Request, table: CommandTable) -> Request:
    """Fill ``request``'s keys, write, is_global, blocking and replies from ``table``; return
    it."""
    name = request.name
    args = request.args
    if name in _COUNTED:
        request.replies = reply_count(name, args)
    try:
        plan = table.plans[name]
    except KeyError:
        plan = table.plans[name] = _plan(table, name) if len(table.plans) < 4096 else None
    if plan is not None:
        first, last, step, request.write, keyless_global, request.blocking = plan
        if first == 1 and last == 1:
            request.keys = (args[0],) if args else ()
        else:
            request.keys = tuple(_range_keys(len(args) + 1, args, first, last, step))
        request.is_global = keyless_global
        return request
    info = table.lookup(name, args)
    if info is None:
        request.keys, request.write, request.is_global = (), True, True
        request.blocking = name in ALWAYS_BLOCKING
        return request
    flags = info.flags
    extract = _MOVABLE.get(name)
    keys: list[bytes] | None
    whole = False  # touches more than the keys it names
    if extract is not None:
        keys = extract(args)
        if name in ("SORT", "SORT_RO"):
            whole = _sort_reads_patterns(args)
    elif info.movable:
        keys = _spec_keys(info.key_specs, args) if info.key_specs else None
        if keys is None:
            keys = _range_keys(len(args) + 1, args, info.first, info.last, info.step)
            whole = True  # keys it cannot name: order it with everything
    else:
        keys = _range_keys(len(args) + 1, args, info.first, info.last, info.step)
    write = "write" in flags
    if name in _SCRIPTS:
        write = not name.endswith("_RO")
        whole = not keys
    elif name == "SCRIPT" and args and args[0].upper() in (b"LOAD", b"FLUSH"):
        write = whole = True  # which scripts EVALSHA finds
    elif (name == "ACL" and args and args[0].upper() in _ACL_CHANGES) or (
            name == "CONFIG" and args and args[0].upper() == b"SET"):
        # Who may do what (ACL, CONFIG SET requirepass), what later requests of every
        # connection do (maxmemory, notify-keyspace-events, acl-pubsub-default ...): later
        # requests of other connections go after it, logins among them.
        write = whole = True
    elif name == "DEBUG" and args:
        # What the subcommand touches (the table says nothing): POPULATE writes keys it does
        # not name, DIGEST reads them all, OBJECT and DIGEST-VALUE read the keys they name.
        # RELOAD and LOADAOF stay untracked on the leader (see Codec.quiesces).
        sub = args[0].upper()
        if sub == b"POPULATE":
            write = whole = True
        elif sub == b"DIGEST":
            whole = True
        elif sub in (b"OBJECT", b"DIGEST-VALUE"):
            keys = list(args[1:2] if sub == b"OBJECT" else args[1:])
    elif name == "AUTH" or (name == "HELLO" and any(a.upper() == b"AUTH" for a in args[1:])):
        whole = True  # a global read: after every earlier write, an ACL SETUSER among them
    elif not keys and not info.first and not info.movable and ("readonly" in flags or write):
        whole = True  # FLUSHALL, KEYS, SCAN, DBSIZE ... (not a keyed command short of args)
    request.keys = tuple(keys)
    request.write = write
    request.is_global = whole
    request.blocking = name in ALWAYS_BLOCKING or (
        name in ("XREAD", "XREADGROUP") and _xread_blocks(args)
    )
    return request


def _sort_reads_patterns(args: Sequence[bytes]) -> bool:
    """SORT ... BY/GET with a pattern reads keys it does not name (``BY nosort``, ``GET #``
    do not)."""
    for i in range(1, len(args) - 1):
        word = args[i].upper()
        if (word == b"BY" and b"*" in args[i + 1]) or (word == b"GET" and args[i + 1] != b"#"):
            return True
    return False


@cache
def builtin_table() -> CommandTable:
    """The table used when no server table is given (redis-server 7.0's, see the data module)."""
    from twinproxy.protocols.redis.command_data import TABLE

    parents: dict[str, CommandInfo] = {}
    for line in TABLE.splitlines():
        name, arity, first, last, step, flags = line.split()
        info = CommandInfo(
            name=name.upper(),
            arity=int(arity),
            flags=frozenset(flags.split(",")) - {"-"},
            first=int(first),
            last=int(last),
            step=int(step),
        )
        parent, _, sub = info.name.partition("|")
        if sub:
            parents[parent].subcommands[sub.encode()] = info
        else:
            parents[parent] = info
    return CommandTable(parents.values())
