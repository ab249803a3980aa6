"""Blocking Redis commands during an update: the proxy does the waiting itself.

Which write wakes a blocked BLPOP is decided inside the server, among requests arriving on
different connections, so a proxy cannot know where in the order the pop happened. During MVE the
proxy therefore never sends a blocking command as such. It sends a *poll*: a script that does, once
and without blocking, what the command does when data is there (``LPOP`` for BLPOP, ``LMOVE`` for
BLMOVE ...), with the same reply shape. The poll is ordered like any write on its keys, so both
versions run it at the same place in the order and take the same element. When it finds nothing,
the client waits in the proxy, and the proxy polls again after each write on those keys, or
answers the client's timeout itself (a null, as Redis would).
"""

from __future__ import annotations

import re

from twinproxy.protocols.base import BlockingPoll
from twinproxy.protocols.messages import Reply, Request
from twinproxy.protocols.reader import ReplyReader
from twinproxy.protocols.redis.reply_reader import RespReplyReader

_POP = ("for _, key in ipairs(KEYS) do local v = redis.call('{cmd}', key) "
        "if v then return {{key, v}} end end return false")
_ZPOP = ("for _, key in ipairs(KEYS) do local v = redis.call('{cmd}', key) "
         "if v[1] then return {{key, v[1], v[2]}} end end return false")
_RPOPLPUSH = "return redis.call('RPOPLPUSH', KEYS[1], KEYS[2])"
_LMOVE = "return redis.call('LMOVE', KEYS[1], KEYS[2], ARGV[1], ARGV[2])"
# (In Lua, f(unpack(a), unpack(b)) expands only the last unpack: build one list.)
_MPOP = ("local a = {{#KEYS}} for _, k in ipairs(KEYS) do a[#a + 1] = k end "
         "for _, v in ipairs(ARGV) do a[#a + 1] = v end return redis.call('{cmd}', unpack(a))")


class Emulation(BlockingPoll):
    """How to poll for a blocking Redis request; ``bulk``: its null is a null bulk string
    (BRPOPLPUSH, BLMOVE), else a null array."""

    __slots__ = ("bulk",)

    def __init__(self, poll: list[bytes], timeout: float, bulk: bool = False):
        super().__init__(poll, timeout)
        self.bulk = bulk

    def null(self, replies: ReplyReader | None) -> bytes:
        """The reply a client gets when its wait times out: RESP3's null on a connection that
        said HELLO 3, else RESP2's."""
        if isinstance(replies, RespReplyReader) and replies.state.resp3:
            return b"_\r\n"
        return b"$-1\r\n" if self.bulk else b"*-1\r\n"


    def answer(self, reply: Reply) -> bytes:
        """The poll's reply; an error that a command inside the poll's script raised loses
        what the script adds to it, so that the client gets the blocking command's own error
        (WRONGTYPE, say) as directly."""
        raw = reply.raw
        if not reply.error:
            return raw
        match = _IN_SCRIPT_7.match(raw) or _IN_SCRIPT_6.match(raw)
        return b"-%s\r\n" % match.group(1) if match else raw


# How redis-server 7 and 6.2 report an error raised by redis.call() inside a script.
_IN_SCRIPT_7 = re.compile(rb"-(.*) script: [0-9a-f]{40}, on @user_script:[0-9]+\.\r\n\Z", re.S)
_IN_SCRIPT_6 = re.compile(
    rb"-ERR Error running script \(call to f_[0-9a-f]{40}\): @user_script:[0-9]+: (.*)\r\n\Z",
    re.S)


def _seconds(word: bytes) -> float | None:
    try:
        value = float(word)
    except ValueError:
        return None
    return value if value >= 0 else None


def _script(body: str, keys: list[bytes], argv: list[bytes] = ()) -> list[bytes]:
    return [b"EVAL", body.encode(), b"%d" % len(keys), *keys, *argv]


def emulation(request: Request) -> Emulation | None:
    """The poll for ``request``, or None when it is not a blocking command the proxy can wait
    for (it is then sent as it is: XREAD BLOCK, WAIT, or arguments Redis will reject)."""
    name, args = request.name, request.args
    if name in ("BLPOP", "BRPOP") and len(args) >= 2:
        timeout = _seconds(args[-1])
        if timeout is None:
            return None
        cmd = "LPOP" if name == "BLPOP" else "RPOP"
        return Emulation(_script(_POP.format(cmd=cmd), list(args[:-1])), timeout)
    if name in ("BZPOPMIN", "BZPOPMAX") and len(args) >= 2:
        timeout = _seconds(args[-1])
        if timeout is None:
            return None
        cmd = "ZPOPMIN" if name == "BZPOPMIN" else "ZPOPMAX"
        return Emulation(_script(_ZPOP.format(cmd=cmd), list(args[:-1])), timeout)
    if name == "BRPOPLPUSH" and len(args) == 3:
        timeout = _seconds(args[2])
        if timeout is None:
            return None
        return Emulation(_script(_RPOPLPUSH, list(args[:2])), timeout, True)
    if name == "BLMOVE" and len(args) == 5:
        timeout = _seconds(args[4])
        if timeout is None:
            return None
        return Emulation(_script(_LMOVE, list(args[:2]), list(args[2:4])), timeout, True)
    if name in ("BLMPOP", "BZMPOP") and len(args) >= 4:
        timeout = _seconds(args[0])
        try:
            numkeys = int(args[1])
        except ValueError:
            return None
        if timeout is None or not 0 < numkeys <= len(args) - 3:
            return None
        keys, rest = list(args[2:2 + numkeys]), list(args[2 + numkeys:])
        cmd = "LMPOP" if name == "BLMPOP" else "ZMPOP"
        return Emulation(_script(_MPOP.format(cmd=cmd), keys, rest), timeout)
    if name == "XREADGROUP":
        return _xreadgroup(args)
    return None


def _xreadgroup(args: list[bytes]) -> Emulation | None:
    """XREADGROUP ... BLOCK ms ... STREAMS k.. ids..: the same without BLOCK. It waits only when
    every id is ``>`` (new entries); reading a pending list never waits."""
    upper = [a.upper() for a in args]
    if b"BLOCK" not in upper or b"STREAMS" not in upper:
        return None
    i = upper.index(b"BLOCK")
    if i + 1 >= len(args):
        return None
    try:
        milliseconds = int(args[i + 1])
    except ValueError:
        return None
    poll = [b"XREADGROUP", *args[:i], *args[i + 2:]]
    streams = upper.index(b"STREAMS", i + 2) if b"STREAMS" in upper[i + 2:] else -1
    ids = args[streams + 1:][len(args[streams + 1:]) // 2:] if streams >= 0 else []
    if any(x != b">" for x in ids):
        return None  # not a wait: sent as it is, without effect on the order question
    return Emulation(poll, milliseconds / 1000)
