"""A large request kept out of memory during an update: where its bytes are, not the bytes.

During an update a request waits for both versions: the leader gets it in its turn, the follower
after the leader answered it. A 100 MB SET held whole for that time cost the proxy its size two
or three times over (the read, the parsed value, the follower's copy); five at once took it to
1.5 GB. So a request whose value passes ``PASS_FROM`` is not held: the relay writes its bytes to
a file as they come (:mod:`twinproxy.spool`), and the engine gets a :class:`Spooled` as the
request's ``raw``: the request as extents, each bytes in memory or a range of a :class:`Source`.
Its ``args`` hold a token in the value's place (the value is never read by the engine: the
reader lets only ordinary commands' values pass, whose values nothing compares).

The engine orders and sends such a request as any other, on its client's own connection (never
the shared one, where the others' requests would wait behind it), with :class:`~.commands.
SendLarge`; the relay reads the source a piece at a time as the socket takes it. A request
rewritten for the follower from its words (``SET ... EX`` becomes ``SET ... PXAT``) is built with
the token and mapped back to the value's range by :meth:`Spooled.rewritten`. Nothing here reads
a source: the engine stays sans-IO.
"""

from __future__ import annotations

from typing import Protocol


class Source(Protocol):
    """Where a large request's bytes are (a file the relay wrote them to)."""

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset``. Raises OSError when it cannot."""


Extent = bytes | tuple[Source, int, int]
"""Bytes in memory, or ``(source, offset, size)``."""


class Spooled:
    """The bytes of one large request, by extents (see the module docstring).

    Args:
        extents: the request, in order.
        value: the value's range, for :meth:`rewritten` (None: the request has several large
            values, and only the last one's place is known).
        token: what stands for the value in the request's ``args``.
    """

    __slots__ = ("extents", "held", "size", "token", "value")

    def __init__(self, extents: list[Extent], value: tuple[Source, int, int] | None,
                 token: bytes):
        self.extents = tuple(extents)
        self.value = value
        self.token = token
        self.size = sum(len(e) if type(e) is bytes else e[2] for e in extents)
        self.held = sum(len(e) for e in extents if type(e) is bytes)  # in memory

    def __len__(self) -> int:
        return self.size

    def rewritten(self, raw: bytes) -> Spooled | bytes | None:
        """The request ``raw``, built from words in which the value is :attr:`token`, with the
        value in the token's place; ``raw`` itself if the value is not in it; None if it cannot
        be made (several large values). The token is found as a RESP bulk string: only the
        Redis reader lets values pass (``RequestReader.pass_values``)."""
        if self.value is None:
            return None
        token = self.token
        framed = b"$%d\r\n%s\r\n" % (len(token), token)
        at = raw.find(framed)
        if at < 0:
            return raw
        source, offset, size = self.value
        return Spooled([raw[:at] + b"$%d\r\n" % size, (source, offset, size),
                        b"\r\n" + raw[at + len(framed):]], self.value, token)


def held_size(raw: bytes | Spooled) -> int:
    """The bytes a request's ``raw`` holds in memory (what counts in the follower's backlog)."""
    return raw.held if type(raw) is Spooled else len(raw)  # type: ignore[union-attr]
