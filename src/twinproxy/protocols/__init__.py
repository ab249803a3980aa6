"""One sans-IO codec per protocol; :func:`get_codec` finds one by its config name."""

from __future__ import annotations

import importlib

from twinproxy.protocols.base import (
    DEFAULT_LIMITS,
    Codec,
    Limits,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    Reply,
    ReplyReader,
    Request,
    RequestReader,
)

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

# config name -> module under twinproxy.protocols
PROTOCOLS = {"redis": "resp", "memcache": "memcache", "ftp": "ftp"}


def get_codec(protocol: str) -> Codec:
    """The codec for a config's ``protocol`` name.

    Raises:
        KeyError: no such protocol.
    """
    module = importlib.import_module(f"twinproxy.protocols.{PROTOCOLS[protocol]}")
    return module.CODEC
