"""Redis (RESP2 and RESP3): the codec registered as the ``redis`` protocol, and its public names.

The modules, each named for what it holds:

* :mod:`.codec`: :data:`CODEC`, what the proxy and the MVE engine ask of Redis;
* :mod:`.requests`: the request reader, framing exactly as redis-server does (multibulk and
  inline), with a hiredis fast path in :mod:`.fast`;
* :mod:`.replies`: the reply parser, every RESP3 type; :mod:`.reply_reader` pairs its replies
  with requests by the connection-state rules of :mod:`.session`;
* :mod:`.types`: reply values, their canonical form, ``encode_command``/``encode_reply``;
* :mod:`.commands` (with the built-in table in :mod:`.command_data`): the command table and
  ``describe``, the view the engine orders requests by;
* :mod:`.effects`, :mod:`.blocking`, :mod:`.replay`: what the follower is sent for a request,
  how the proxy waits for a blocking command itself, and replaying a connection's session.
"""

from __future__ import annotations

from twinproxy.protocols.redis.codec import CODEC, RespCodec
from twinproxy.protocols.redis.commands import CommandInfo, CommandTable, KeySpec
from twinproxy.protocols.redis.replies import RespReplyParser
from twinproxy.protocols.redis.reply_reader import RespReplyReader
from twinproxy.protocols.redis.requests import RespRequestReader
from twinproxy.protocols.redis.session import ConnectionState
from twinproxy.protocols.redis.textparse import split_inline
from twinproxy.protocols.redis.types import (
    NO_REPLY,
    Attributed,
    BigNumber,
    Double,
    Map,
    Push,
    RespError,
    RespSet,
    SimpleString,
    Verbatim,
    canonical,
    encode_command,
    encode_reply,
    format_double,
)

__all__ = [
    "CODEC",
    "NO_REPLY",
    "Attributed",
    "BigNumber",
    "CommandInfo",
    "CommandTable",
    "ConnectionState",
    "Double",
    "KeySpec",
    "Map",
    "Push",
    "RespCodec",
    "RespError",
    "RespReplyParser",
    "RespReplyReader",
    "RespRequestReader",
    "RespSet",
    "SimpleString",
    "Verbatim",
    "canonical",
    "encode_command",
    "encode_reply",
    "format_double",
    "split_inline",
]
