"""The records of :mod:`twinproxy.relay.mirror`: one transfer's channel during an update, and
what one version sent on it. Plain data; the I/O is the mirror's."""

from __future__ import annotations

import socket
from typing import IO, TYPE_CHECKING

from twinproxy.digests import new_hasher

if TYPE_CHECKING:
    from twinproxy.relay.connections import ClientConn
    from twinproxy.relay.pipes import End

HEAD = 256 * 1024  # a half's bytes kept whole up to this size (listings, for the rules)


class Half:
    """What one version sent on a channel: its size, running digest, and first bytes."""

    __slots__ = ("hasher", "head", "reported", "size")

    def __init__(self) -> None:
        self.hasher = new_hasher()
        self.size = 0
        self.head: bytearray | None = bytearray()
        self.reported = False

    def add(self, data: bytes) -> None:
        self.hasher.update(data)
        self.size += len(data)
        head = self.head
        if head is not None:
            if len(head) + len(data) <= HEAD:
                head += data
            else:
                self.head = None


class Mirrored:
    """One transfer's channel during an update (see the module docstring)."""

    __slots__ = (
        "accept_from",
        "channel",
        "client_end",
        "cut",
        "follow",
        "follower_end",
        "follower_from",
        "follower_listener",
        "follower_target",
        "halves",
        "leader_end",
        "moved",
        "owner",
        "passive",
        "sock",
        "spool",
        "spool_done",
        "spool_sent",
        "spool_size",
        "target",
        "used",
    )

    def __init__(self, channel: int, owner: ClientConn, passive: bool, target: tuple[str, int]):
        self.channel = channel
        self.owner = owner
        self.passive = passive
        self.target = target  # where the leader's half connects on to
        self.sock: socket.socket | None = None  # the leader's half's endpoint, while it waits
        self.accept_from = ""
        self.follower_from = ""  # the follower's host (active mode)
        self.follower_listener: socket.socket | None = None
        self.follower_target: tuple[str, int] | None = None
        self.client_end: End | None = None
        self.leader_end: End | None = None
        self.follower_end: End | None = None
        self.follow = True  # the follower's half is wanted
        self.halves = (Half(), Half())
        self.used = False  # the leader's half got its connection
        self.cut = False  # the leader's half ended in an error (a client that vanished)
        self.moved = 0  # bytes relayed between the client and the leader, both ways
        self.spool: IO[bytes] | None = None  # the client's bytes, for the follower
        self.spool_size = 0
        self.spool_sent = 0
        self.spool_done = False  # the client ended its input
