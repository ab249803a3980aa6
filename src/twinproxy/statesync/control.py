"""A connection of the state sync's own to a server, in the server's protocol.

A method talks to the servers as a client would, with the protocol's own readers (so replies
are framed and paired exactly as the proxy frames them): one request at a time for a control
command, or a pipeline of many (memcached's copy), sent while the replies are read so that
neither side waits on a full socket buffer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import trio

from twinproxy.protocols.base import Codec
from twinproxy.protocols.messages import Limits, ProtocolError, Reply, Request
from twinproxy.statesync.base import Address, SyncError

__all__ = ["ServerControl"]

READ = 1 << 18  # bytes asked of the socket per read

# A server's own replies, not a client's requests: the proxy's input bounds do not apply.
LIMITS = Limits(max_line=1 << 20, max_value=1 << 30)


class ServerControl:
    """A connection of the proxy's own to one server, in ``codec``'s protocol."""

    def __init__(self, codec: Codec, stream: trio.SocketStream, address: Address):
        self.codec = codec
        self.stream = stream
        self.address = address
        self.requests = codec.request_reader(LIMITS)
        self.replies = codec.reply_reader(LIMITS)

    @classmethod
    async def open(cls, codec: Codec, address: Address, timeout: float = 5.0) -> ServerControl:
        with trio.fail_after(timeout):
            try:
                stream = await trio.open_tcp_stream(*address)
            except OSError as exc:
                raise SyncError(f"cannot connect to {address[0]}:{address[1]}: {exc}") from exc
        return cls(codec, stream, address)

    async def exchange(self, raw: bytes, timeout: float = 10.0,
                       requests: Sequence[Request] | None = None) -> list[Reply]:
        """Send ``raw`` (whole requests, any number, pipelined); the final reply to each, in
        order. The replies are read while ``raw`` is sent.

        ``requests`` are the requests ``raw`` holds, as the reply reader needs them (a bulk
        caller whose requests all get replies of one shape may pass one request for all, and
        save framing its own bytes again); None: framed from ``raw``.

        Raises:
            SyncError: the server closed, broke the protocol or took longer than ``timeout``.
        """
        if requests is None:
            requests = self.requests.receive(raw)
        for request in requests:
            self.replies.expect(request)
        out: list[Reply] = []
        what = requests[0].name if requests else "nothing"
        try:
            with trio.fail_after(timeout):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.stream.send_all, raw)
                    while len(out) < len(requests):
                        reply = self.replies.next_reply()
                        if reply is None:
                            data = await self.stream.receive_some(READ)
                            if not data:
                                raise SyncError(f"{self.address[0]}:{self.address[1]} closed "
                                                f"the connection during {what!r}")
                            self.replies.feed(data)
                        elif reply.request is not None and reply.final:
                            out.append(reply)
        except trio.TooSlowError as exc:
            raise SyncError(f"no reply to {what!r} within {timeout:g}s") from exc
        except (OSError, trio.BrokenResourceError, ProtocolError) as exc:
            raise SyncError(f"{what!r} failed: {exc}") from exc
        return out

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.stream.aclose()
