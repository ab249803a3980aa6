"""memcached (text and meta protocols): the codec registered as ``memcache``, and its public names.

The modules, each named for what it holds:

* :mod:`.codec`: :data:`CODEC`, the canonical form replies are compared in, and builders for
  requests and replies;
* :mod:`.requests` and :mod:`.replies`: the client-side and server-side readers (the pairing of
  quiet meta requests is described in :mod:`.replies`);
* :mod:`.commands`: the command table both readers and ``describe`` use;
* :mod:`.values`: the reply values (``Item``, ``Values``, ``Meta``, ``Stats``).
"""

from __future__ import annotations

from twinproxy.protocols.memcache.codec import (
    CODEC,
    MemcacheCodec,
    encode_reply,
    encode_request,
    make_request,
)
from twinproxy.protocols.memcache.replies import MemcacheReplyReader
from twinproxy.protocols.memcache.requests import MemcacheRequestReader
from twinproxy.protocols.memcache.values import Item, Meta, Stats, Values

__all__ = [
    "CODEC",
    "Item",
    "MemcacheCodec",
    "MemcacheReplyReader",
    "MemcacheRequestReader",
    "Meta",
    "Stats",
    "Values",
    "encode_reply",
    "encode_request",
    "make_request",
]
