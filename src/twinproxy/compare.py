"""Reply comparison under the rules (pure: the engine calls it for every reply it compares).

A follower's reply is compared with the leader's in this order; the first check that settles it
wins, so the common case (the same bytes) costs one comparison:

1. the raw bytes are equal: equal;
2. a matching rule says ``ignore``: expected;
3. the canonical forms are equal (a RESP2 and a RESP3 spelling of the same data): equal;
4. they are equal after every matching ``normalize`` substitution, applied to each string in both
   replies (bytes, or text as its UTF-8 bytes): expected;
5. every number differs by no more than the largest matching ``tolerance``: expected;
6. both are errors and a matching ``map_error`` pairs their texts: expected;
7. anything else is unexpected.

Rules come from the config (``[[rules]]``) and from the protocol's built-in rules for its own
non-determinism; a built-in rule's name starts with ``builtin:``. What a divergence leaves
behind (the log the operator reads) is :mod:`twinproxy.divergences`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from twinproxy.config import RuleConfig
    from twinproxy.protocols.base import Codec
    from twinproxy.protocols.messages import Reply, Request


VALUE_ACTIONS = frozenset({"normalize", "tolerance", "map_error"})


class Rules:
    """The rules that apply in one update (``from_version`` -> ``to_version``)."""

    def __init__(self, rules: Iterable[RuleConfig], from_version: str, to_version: str):
        self.from_version = from_version
        self.to_version = to_version
        self._rules = tuple(r for r in rules
                            if r.from_version in (None, from_version)
                            and r.to_version in (None, to_version))
        self._by_command: dict[str, tuple[RuleConfig, ...]] = {}

    def __len__(self) -> int:
        return len(self._rules)

    def matching(self, request: Request) -> tuple[RuleConfig, ...]:
        """The rules that cover ``request`` (by command, arguments and versions)."""
        candidates = self._by_command.get(request.name)
        if candidates is None:
            candidates = tuple(r for r in self._rules if r.covers(request.name))
            self._by_command[request.name] = candidates
        if not candidates:
            return ()
        return tuple(r for r in candidates
                     if r.args is None or r.args.search(b" ".join(request.args)) is not None)

    def read_values(self, request: Request | None = None) -> bool:
        """Whether a rule that needs the replies' values (not only whether they are the same
        bytes) may apply to ``request``, or to any request when None: ``normalize``,
        ``tolerance`` and ``map_error`` do; ``ignore`` and ``rewrite`` do not."""
        rules = self._rules if request is None else self.matching(request)
        return any(r.action in VALUE_ACTIONS for r in rules)

    def rewrite(self, request: Request) -> list[bytes] | None:
        """The words the follower gets instead of ``request``, if a ``rewrite`` rule covers it."""
        for rule in self.matching(request):
            if rule.action == "rewrite":
                words = rule.rewrite_request(request.name.encode("latin-1"), request.args)
                if words is not None:
                    return words
        return None


@dataclass(frozen=True, slots=True)
class Verdict:
    """How a follower's reply compared: ``expected`` when a rule explained a difference."""

    equal: bool
    expected: bool = False
    rule: str | None = None
    tried: tuple[str, ...] = ()

    @property
    def unexpected(self) -> bool:
        return not self.equal and not self.expected


EQUAL = Verdict(True)


class Comparator:
    """Compares replies of one update; stateless apart from the rules' caches."""

    def __init__(self, codec: Codec, rules: Rules):
        self.codec = codec
        self.rules = rules

    def compare(self, request: Request, leader: Reply, follower: Reply) -> Verdict:
        if leader.raw == follower.raw:
            return EQUAL
        rules = self.rules.matching(request)
        for rule in rules:
            if rule.action == "ignore":
                return Verdict(False, True, rule.name, (rule.name,))
        canonical = self.codec.canonical
        a, b = canonical(leader), canonical(follower)
        if a == b:
            return EQUAL
        errors = (error_text(a, leader), error_text(b, follower)) if (
            leader.error and follower.error) else None
        return self._differ(rules, a, b, errors)

    def compare_values(self, request: Request, a: Any, b: Any) -> Verdict:
        """:meth:`compare` for canonical values rather than replies: the parts of a reply that
        answer several requests (a transaction's EXEC). Errors are values with a ``message``."""
        if a == b:
            return EQUAL
        rules = self.rules.matching(request)
        for rule in rules:
            if rule.action == "ignore":
                return Verdict(False, True, rule.name, (rule.name,))
        ea, eb = getattr(a, "message", None), getattr(b, "message", None)
        errors = (ea, eb) if isinstance(ea, bytes) and isinstance(eb, bytes) else None
        return self._differ(rules, a, b, errors)

    def _differ(self, rules: Sequence[RuleConfig], a: Any, b: Any,
                errors: tuple[bytes, bytes] | None) -> Verdict:
        """Whether ``rules`` explain two canonical values that differ."""
        tried = tuple(r.name for r in rules)
        subs = [(r.name, s) for r in rules if r.action == "normalize" for s in r.normalize]
        if subs:
            na, nb = _normalize(a, subs), _normalize(b, subs)
            if na == nb:
                used = next(name for name, _ in subs)
                return Verdict(False, True, used, tried)
            a, b = na, nb
        tolerances = [r for r in rules if r.action == "tolerance"]
        if tolerances:
            best = max(tolerances, key=lambda r: r.tolerance or 0.0)
            if _within(a, b, best.tolerance or 0.0):
                return Verdict(False, True, best.name, tried)
        if errors is not None:
            ea, eb = errors
            for rule in rules:
                if rule.action == "map_error" and any(m.matches(ea, eb) for m in rule.map_error):
                    return Verdict(False, True, rule.name, tried)
        return Verdict(False, False, None, tried)


def error_text(canonical: Any, reply: Reply) -> bytes:
    """An error reply's text, as ``map_error`` patterns see it: no prefix sign, no line end."""
    message = getattr(canonical, "message", None)
    if isinstance(message, bytes):
        return message
    return reply.raw.rstrip(b"\r\n").lstrip(b"-")


def _normalize(value: Any, subs: Sequence[tuple[str, Any]]) -> Any:
    if isinstance(value, bytes):
        for _, sub in subs:
            value = sub.apply(value)
        return value
    if isinstance(value, str):  # text a codec decoded (FTP reply lines): patterns see its bytes
        data = value.encode("utf-8", "surrogateescape")
        for _, sub in subs:
            data = sub.apply(data)
        return data.decode("utf-8", "surrogateescape")
    if isinstance(value, tuple):
        out = []
        for v in value:
            n = _normalize(v, subs)
            if n == "" and v != "":
                # A text line (FTP's reply lines, a listing's) that the rules replaced whole
                # with nothing is left out: one server's two-line "226-" reply or a listing's
                # "." entry can then equal another's one line, or its listing without it.
                continue
            out.append(n)
        return tuple(out)
    message = getattr(value, "message", None)
    if isinstance(message, bytes):
        return ("error", _normalize(message, subs))
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, bytes) and len(value) < 40:
        with contextlib.suppress(ValueError):
            return float(value)
    return None


def _within(a: Any, b: Any, tolerance: float) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_within(x, y, tolerance) for x, y in zip(a, b, strict=True))
    if a == b:
        return True
    x, y = _number(a), _number(b)
    if x is None or y is None:
        return False
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return abs(x - y) <= tolerance
