"""One sans-IO codec per protocol, each a subpackage; :func:`get_codec` finds one by its config
name.

Adding a protocol is a new subpackage whose ``__init__`` exposes ``CODEC`` (an instance of a
:class:`Codec` subclass) plus one line in :data:`PROTOCOLS`. The registry names packages rather
than importing them, so a service loads only the protocol it serves.
"""

from __future__ import annotations

import importlib

from twinproxy.protocols.base import Codec
from twinproxy.protocols.messages import (
    DEFAULT_LIMITS,
    Limits,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    Reply,
    Request,
)
from twinproxy.protocols.reader import ReplyReader, RequestReader

__all__ = [
    "DEFAULT_LIMITS",
    "PROTOCOLS",
    "Codec",
    "Limits",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "Reply",
    "ReplyReader",
    "Request",
    "RequestReader",
    "get_codec",
]

# config name -> the package that implements it
PROTOCOLS = {
    "redis": "twinproxy.protocols.redis",
    "memcache": "twinproxy.protocols.memcache",
    "ftp": "twinproxy.protocols.ftp",
}


def get_codec(protocol: str) -> Codec:
    """The codec for a config's ``protocol`` name.

    Raises:
        KeyError: no such protocol.
    """
    return importlib.import_module(PROTOCOLS[protocol]).CODEC
