"""The parsed view of Redis requests: keys, write, global, blocking; the command table.

The real servers' own ``COMMAND GETKEYS`` answers are checked in ``test_redis_golden.py``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.protocols.redis_support import SETTINGS
from twinproxy.protocols.messages import Reply, Request
from twinproxy.protocols.redis import (
    CODEC,
    NO_REPLY,
    CommandTable,
    Map,
    RespError,
    SimpleString,
    encode_command,
)
from twinproxy.protocols.redis.commands import builtin_table


def describe(text: str, table: CommandTable | None = None) -> Request:
    args = [b"" if a == '""' else a.encode() for a in text.split(" ")]
    [req] = CODEC.request_reader().receive(encode_command(*args))
    return CODEC.describe(req, table)


@pytest.mark.parametrize(("text", "keys", "write"), [
    ("GET k", "k", False), ("SET k v", "k", True), ("MSET a 1 b 2", "a b", True),
    ("MGET a b", "a b", False), ("HSET h f v", "h", True), ("BLPOP a b 0", "a b", True),
    ("OBJECT ENCODING k", "k", False), ("XINFO STREAM s", "s", False),
    ("XGROUP CREATE s g $", "s", True), ("MEMORY USAGE k", "k", False),
    ("EVAL s 2 k1 k2 a", "k1 k2", True), ("EVALSHA s 1 k", "k", True),
    ("EVAL_RO s 1 k", "k", False), ("EVALSHA_RO s 1 k", "k", False),
    ("FCALL f 1 k a", "k", True), ("FCALL_RO f 2 a b", "a b", False),
    ("ZUNIONSTORE d 2 a b WEIGHTS 1 2", "d a b", True), ("ZINTERSTORE d 1 a", "d a", True),
    ("ZDIFFSTORE d 2 a b", "d a b", True), ("ZUNION 2 a b", "a b", False),
    ("ZINTER 1 a", "a", False), ("ZDIFF 2 a b", "a b", False), ("ZINTERCARD 2 a b", "a b", False),
    ("SINTERCARD 2 a b LIMIT 1", "a b", False), ("LMPOP 2 a b LEFT", "a b", True),
    ("BLMPOP 0 2 a b LEFT", "a b", True), ("ZMPOP 1 z MIN", "z", True),
    ("BZMPOP 1.5 2 y z MAX", "y z", True), ("XREAD COUNT 1 STREAMS s1 s2 0 0", "s1 s2", False),
    ("XREADGROUP GROUP streams c NOACK STREAMS s >", "s", True), ("SORT k", "k", True),
    ("SORT k LIMIT 0 1 STORE d1 STORE d2", "k d2", True), ("SORT k STORE", "k", True),
    ("SORT_RO k BY nosort", "k", False), ("MIGRATE h 1 k 0 5", "k", True),
    ("MIGRATE h 1 \"\" 0 5 AUTH2 u p KEYS a b", "a b", True),
    ("MIGRATE h 1 k 0 5 KEYS a b", "", True), ("GEORADIUS g 0 0 1 km STORE d", "g d", True),
    ("GEORADIUSBYMEMBER g m 1 km STOREDIST d", "g d", True),
    ("GEORADIUS g 0 0 1 km STORE", "g", True), ("SPUBLISH ch m", "", False),
])
def test_keys_and_write(text: str, keys: str, write: bool) -> None:
    req = describe(text)
    assert req.keys == tuple(k.encode() for k in keys.split())
    assert req.write is write


@pytest.mark.parametrize(("text", "is_global", "write"), [
    ("FLUSHALL", True, True), ("FLUSHDB ASYNC", True, True), ("KEYS *", True, False),
    ("SCAN 0", True, False), ("RANDOMKEY", True, False), ("DBSIZE", True, False),
    ("SWAPDB 0 1", True, True), ("EVAL s 0", True, True), ("EVALSHA s 0 a", True, True),
    ("FCALL f 0", True, True), ("EVAL_RO s 0", True, False), ("FCALL_RO f 0", True, False),
    ("FUNCTION LOAD code", True, True), ("SCRIPT LOAD s", True, True),
    ("SORT k BY w_*", True, True), ("SORT k GET o_*", True, True), ("SORT k GET #", False, True),
    ("NOSUCHCOMMAND a", True, True), ("ACL SETUSER u on", True, True),
    ("CONFIG SET requirepass pw", True, True), ("config set maxmemory 1mb", True, True),
    ("AUTH u pw", True, False), ("HELLO 3 AUTH u pw", True, False),
    ("CONFIG RESETSTAT", False, False), ("ACL WHOAMI", False, False),
    ("PING", False, False), ("ECHO x", False, False), ("INFO", False, False),
    ("CLIENT SETNAME x", False, False), ("CLIENT LIST", False, False), ("HELLO 3", False, False),
    ("SELECT 1", False, False), ("CONFIG GET x", False, False), ("TIME", False, False),
    ("COMMAND", False, False), ("PUBLISH c m", False, False), ("GET", False, False),
    ("SUBSCRIBE c", False, False), ("MULTI", False, False), ("WAIT 1 0", False, False),
])
def test_global(text: str, is_global: bool, write: bool) -> None:
    req = describe(text)
    assert (req.is_global, req.write) == (is_global, write)
    if text.split()[0] in ("PING", "ECHO", "INFO", "CLIENT", "HELLO", "SELECT", "CONFIG", "TIME",
                           "COMMAND", "PUBLISH"):
        assert req.keys == ()


@pytest.mark.parametrize(("text", "blocking"), [
    ("BLPOP a 0", True), ("BRPOP a 0", True), ("BRPOPLPUSH a b 0", True),
    ("BLMOVE a b LEFT LEFT 0", True), ("BLMPOP 0 1 a LEFT", True), ("BZPOPMIN a 0", True),
    ("BZPOPMAX a 0", True), ("BZMPOP 0 1 a MIN", True), ("WAIT 1 0", True),
    ("WAITAOF 1 0 0", True), ("XREAD BLOCK 0 STREAMS s $", True),
    ("XREAD COUNT 1 BLOCK 10 STREAMS s $", True),
    ("XREADGROUP GROUP g c BLOCK 0 STREAMS s >", True),
    ("XREAD STREAMS s 0", False), ("XREAD COUNT 5 STREAMS s 0", False), ("LPOP a", False),
    ("XREADGROUP GROUP g c STREAMS s >", False), ("GET block", False),
])
def test_blocking(text: str, blocking: bool) -> None:
    assert describe(text).blocking is blocking


@pytest.mark.parametrize("text", [
    "EVAL s", "EVAL s -1 k", "EVAL s x k", "EVAL s 5 k", "ZUNIONSTORE", "ZUNIONSTORE d",
    "XREAD STREAMS", "XREAD STREAMS a b c", "XREAD COUNT", "XREADGROUP GROUP g",
    "MIGRATE", "MIGRATE h", "GEORADIUS", "SORT", "MSET a", "BLMPOP 0",
    "LMPOP 99999999999999999999 a",
    "MEMORY USAGE", "OBJECT", "CLIENT", "XGROUP", "BITFIELD", "SET",
])
def test_odd_requests_get_what_keys_can_be_found(text: str) -> None:
    req = describe(text)
    assert isinstance(req.keys, tuple)


def test_eval_takes_the_declared_keys_only_as_far_as_they_go() -> None:
    assert describe("EVAL s 5 a b").keys == (b"a", b"b")


@SETTINGS
@given(st.sampled_from(sorted(builtin_table().commands)),
       st.lists(st.one_of(st.binary(max_size=6), st.sampled_from(
           [b"STREAMS", b"STORE", b"KEYS", b"BLOCK", b"GROUP", b"2", b"-1", b"0", b"BY", b""])),
           max_size=8))
def test_property_describe_never_raises(name: str, args: list[bytes]) -> None:
    req = Request(b"", name, args)
    for table in (None, builtin_table()):
        CODEC.describe(req, table)
        assert all(type(k) is bytes for k in req.keys)
    CODEC.describe(Request(b"", name.lower() + "\xff", args))


# -- the table --------------------------------------------------------------------------------


def module_table() -> CommandTable:
    """A 7.0-shaped COMMAND reply for two module commands with movable keys."""
    def spec(begin: list, find: list) -> list:
        return [b"flags", [b"RW"], b"begin_search", begin, b"find_keys", find]

    keyword = spec([b"type", b"keyword", b"spec", [b"keyword", b"KEYS", b"startfrom", 1]],
                   [b"type", b"range", b"spec", [b"lastkey", -1, b"keystep", 1, b"limit", 0]])
    keynum = spec([b"type", b"index", b"spec", [b"index", 1]],
                  [b"type", b"keynum", b"spec", [b"keynumidx", 0, b"firstkey", 1, b"keystep", 2]])
    unknown = spec([b"type", b"unknown", b"spec", []], [b"type", b"unknown", b"spec", []])
    return CommandTable.from_command_reply([
        [b"mod.kw", -1, [b"write", b"movablekeys"], 0, 0, 0, [], [], [keyword], []],
        [b"mod.num", -2, [SimpleString(b"readonly"), b"movablekeys"], 0, 0, 0, [], [], [keynum],
         []],
        [b"mod.unknown", -2, [b"write", b"movablekeys"], 1, 1, 1, [], [], [unknown], []],
        [b"broken"], b"junk",
    ])


def test_module_commands_keys_come_from_their_key_specs() -> None:
    table = module_table()
    assert len(table) == 3
    kw = describe("MOD.KW x y KEYS a b", table)
    assert (kw.keys, kw.write, kw.is_global) == ((b"a", b"b"), True, False)
    num = describe("MOD.NUM 2 a x b y", table)
    assert (num.keys, num.write) == ((b"a", b"b"), False)
    unknown = describe("MOD.UNKNOWN k more", table)
    assert unknown.keys == (b"k",) and unknown.is_global  # it may touch more than it names


def test_a_table_needs_an_array() -> None:
    with pytest.raises(ValueError, match="array"):
        CommandTable.from_command_reply(b"nope")
    assert len(CommandTable.from_command_reply(Map())) == 0


# -- the codec --------------------------------------------------------------------------------


def test_error_reply_is_one_line() -> None:
    assert CODEC.error_reply("no\r\nway") == b"-ERR no  way\r\n"
    assert CODEC.error_reply("é") == "-ERR é\r\n".encode()


@pytest.mark.parametrize(("value", "ok"), [
    (SimpleString(b"PONG"), True), (RespError(b"NOAUTH Authentication required."), True),
    (RespError(b"LOADING Redis is loading the dataset in memory"), False),
    (RespError(b"ERR other"), False), (b"PONG", True), (SimpleString(b"OK"), False),
    ([b"pong", b""], False), (NO_REPLY, False),
])
def test_probe(value: object, ok: bool) -> None:
    assert CODEC.probe() == encode_command("PING")
    assert CODEC.probe_ok(Reply(b"", value)) is ok
