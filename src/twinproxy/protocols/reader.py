"""The two kinds of reader a codec makes, as base classes: what the relay calls on them.

A :class:`RequestReader` frames a client's byte stream into requests, a :class:`ReplyReader` a
server's into replies paired with the requests the relay sent. The rules every reader keeps are
in :mod:`twinproxy.protocols.base`.
"""

from __future__ import annotations

from twinproxy.protocols.base import Reply, Request


class RequestReader:
    """Frames a client's byte stream into requests."""

    __slots__ = ()

    def feed(self, data: bytes) -> None:
        """Add bytes from the client; ``b""`` means the client closed its side."""
        raise NotImplementedError

    def next_request(self) -> Request | None:
        """The next complete request, or ``None`` when more bytes are needed.

        Raises:
            RemoteProtocolError: the input is malformed or past a limit.
        """
        raise NotImplementedError

    def receive(self, data: bytes) -> list[Request]:
        """``feed(data)`` then every complete request: the relay's one call per read.

        Raises:
            RemoteProtocolError: as :meth:`next_request`; ``exc.messages`` holds the requests
                completed before the error in this call.
        """
        raise NotImplementedError

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete request held (0 at a request boundary)."""
        raise NotImplementedError

    def count(self, data: bytes) -> int | None:
        """Frame ``data`` without building requests, for SINGLE mode's relay of ordinary
        requests: how many bytes at its start are complete requests that need no look, the
        rest staying buffered. None, having consumed nothing, when the reader cannot say: the
        relay then frames with :meth:`receive`. The default is None: not countable."""
        return None

    def count_run(self, data: bytes) -> tuple[int, int] | None:
        """Like :meth:`count`, for the MVE engine's runs: ``(bytes, requests)`` of the complete
        requests at the start of ``data`` when they may all travel as one run of bytes, else
        None having consumed nothing. The default is None: no runs, every request framed."""
        return None


class ReplyReader:
    """Frames a server's byte stream into replies and pairs them with requests."""

    __slots__ = ()

    def expect(self, request: Request) -> None:
        """The relay has sent ``request`` on this server connection (in this order)."""
        raise NotImplementedError

    def feed(self, data: bytes) -> None:
        """Add bytes from the server; ``b""`` means the server closed its side."""
        raise NotImplementedError

    def next_reply(self) -> Reply | None:
        """The next complete reply, or ``None`` when more bytes are needed.

        Raises:
            RemoteProtocolError: the server's output is malformed or past a limit.
        """
        raise NotImplementedError

    def receive(self, data: bytes) -> list[Reply]:
        """``feed(data)`` then every complete reply.

        Raises:
            RemoteProtocolError: as :meth:`next_reply`; ``exc.messages`` holds the replies
                completed before the error in this call.
        """
        raise NotImplementedError

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete reply held."""
        raise NotImplementedError

    @property
    def pending(self) -> int:
        """Requests expected whose final reply has not arrived yet."""
        raise NotImplementedError
