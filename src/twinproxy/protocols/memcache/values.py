"""The values of memcached replies, as the reply reader builds them and ``encode_reply`` takes them.

A one-line reply (STORED, 42, VERSION 1.6.18, an error) is its line as ``bytes``, without the line
end; the shapes of several lines or with data are these named tuples: hashable, comparable field
by field, and cheap to build on the hot path.
"""

from __future__ import annotations

from typing import NamedTuple


class Item(NamedTuple):
    """One VALUE block of a get-family reply; ``cas`` only for gets/gats."""

    key: bytes
    flags: int
    data: bytes
    cas: int | None = None


class Values(NamedTuple):
    """A get-family reply: its items, and the line that ended it (END, or an error line after
    some items; an error in place of the first item is a reply of its own, a plain line)."""

    items: tuple[Item, ...]
    end: bytes = b"END"


class Meta(NamedTuple):
    """A meta reply: its code (HD, VA, EN, NF, NS, EX, MN, ME), the tokens after the code (after the
    size, for VA; the key first, for ME) and VA's data block."""

    code: bytes
    flags: tuple[bytes, ...] = ()
    data: bytes | None = None


class Stats(NamedTuple):
    """A stats reply of several lines (STAT, ITEM, PREFIX ...), without its closing END."""

    lines: tuple[bytes, ...]
    end: bytes = b"END"
