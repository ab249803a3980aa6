"""Divergences recorded: every request whose two replies differed, in memory and in a file.

The engine reports each divergence (:class:`twinproxy.engine.commands.Diverged`); the update's
lifecycle records it here, with its time and an id, for ``twinproxy divergences`` and the
msgpack file ``divergence_log`` names.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

if TYPE_CHECKING:
    from twinproxy.compare import Verdict
    from twinproxy.protocols.messages import Request


@dataclass
class Divergence:
    """One request whose replies differed: what was asked, both answers, what the rules said."""

    id: int
    time: float
    update: int
    connection: str
    request: list[bytes]
    leader: bytes
    follower: bytes
    expected: bool
    rule: str | None = None
    rules_tried: list[str] = field(default_factory=list)
    reason: str = "replies differ"

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict: bytes become text (latin-1, so no byte is lost)."""
        out = asdict(self)
        out["request"] = [w.decode("latin-1") for w in self.request]
        out["leader"] = self.leader.decode("latin-1")
        out["follower"] = self.follower.decode("latin-1")
        return out


class DivergenceLog:
    """Divergences kept in memory (the last ``keep`` of each kind) and appended to a msgpack
    file.

    Expected divergences (a rule explained them) are kept apart from unexpected ones, so that
    a stream of explained ones (every INFO differs) never pushes an unexpected one out of
    memory; ``by_rule`` counts the expected ones per rule that explained them.

    The file holds one msgpack map per divergence, the fields of :class:`Divergence`, so that it
    can be read back with ``msgpack.Unpacker`` while the proxy still writes it.
    """

    def __init__(self, path: str | None = None, keep: int = 1000):
        self.path = path
        self._recent: deque[Divergence] = deque(maxlen=keep)
        self._explained: deque[Divergence] = deque(maxlen=keep)
        self.by_rule: dict[str, int] = {}
        self._next_id = 1
        self._file = open(path, "ab") if path else None  # noqa: SIM115 (closed in close())

    def add(self, update: int, connection: str, request: Request, leader: bytes,
            follower: bytes, verdict: Verdict | None, reason: str = "replies differ"
            ) -> Divergence:
        d = Divergence(
            id=self._next_id, time=time.time(), update=update, connection=connection,
            request=[request.name.encode("latin-1"), *request.args], leader=leader,
            follower=follower, expected=bool(verdict and verdict.expected),
            rule=verdict.rule if verdict else None,
            rules_tried=list(verdict.tried) if verdict else [], reason=reason)
        self._next_id += 1
        if d.expected:
            self._explained.append(d)
            rule = d.rule or "?"
            self.by_rule[rule] = self.by_rule.get(rule, 0) + 1
        else:
            self._recent.append(d)
        if self._file is not None:
            self._file.write(msgpack.packb(asdict(d), use_bin_type=True))
            self._file.flush()
        return d

    def since(self, after: int = 0, limit: int = 100) -> list[Divergence]:
        """Divergences with an id above ``after``, oldest first, at most ``limit``."""
        both = heapq.merge((d for d in self._recent if d.id > after),
                           (d for d in self._explained if d.id > after), key=lambda d: d.id)
        return list(itertools.islice(both, limit))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_log(path: str) -> list[dict[str, Any]]:
    """Every divergence in a msgpack log file."""
    with open(path, "rb") as f:
        return list(msgpack.Unpacker(f, raw=False))
