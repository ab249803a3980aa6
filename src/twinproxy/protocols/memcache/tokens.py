"""CAS tokens during an update: each memcached numbers its item versions itself.

memcached gives every stored item version a token from its own counter (``gets`` shows it, ``cas``
and the meta ``C`` flag send it back), so the leader and the follower give the same item version
different tokens. Three things follow, each a hook of the codec:

* Replies that show tokens are compared without them (:func:`token_plan`: a check that looks past
  them, ``same``, so nothing is recorded), and teach the engine the pair of tokens for that item
  version (:func:`token_pairs`); so does the state sync's copy, for every item it copies.
* A request that sends a leader's token back reaches the follower with the follower's token for
  the same version (:func:`follower_tokens`). When the pair is not known (the follower had not
  answered the ``gets`` yet when the ``cas`` was released to it), the leader's outcome decides,
  which the follower, holding the same version at that point of the order, must share: the
  leader stored, so the follower stores without the condition; the leader found another version
  (EXISTS/EX), so the follower gets a token no item of its own has (:data:`NO_TOKEN`).
  A ``noreply`` cas whose token is not known goes as it is: the leader's outcome is not seen.
* Once the new version serves alone, the proxy no longer translates: a token a client took from
  the old version fails there with EXISTS (the client's usual answer: ``gets`` again and retry),
  unless by chance it names an item of the new one. See ``docs/design.md``, "State sync".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twinproxy.protocols.base import Plan
from twinproxy.protocols.memcache.commands import number
from twinproxy.protocols.messages import Request

__all__ = ["NO_TOKEN", "RULE", "follower_tokens", "token_pairs", "token_plan"]

RULE = "builtin:cas-token"
NO_TOKEN = (1 << 64) - 1
"""A token no memcached hands out (its counter would need 2**64 writes): a cas with it fails."""

_SHOWS_VALUES = frozenset(("gets", "gats"))
_SHOWS_META = frozenset(("mg", "ms", "ma"))
_SENDS_META = frozenset(("ms", "md", "ma"))
_STORED = ("line", b"STORED")
_EXISTS = ("line", b"EXISTS")


def _meta_flags(request: Request) -> list[bytes]:
    return request.args[2:] if request.name == "ms" else request.args[1:]


def _without_tokens(value: Any) -> Any:
    if type(value) is tuple and value:
        if value[0] == "values":
            return ("values", tuple(item._replace(cas=None) for item in value[1]), value[2])
        if value[0] == "meta":
            return ("meta", value[1], tuple(p for p in value[2] if p[0] != "c"), value[3])
    return value


def _same_but_tokens(leader: Any, follower: Any, elapsed: float) -> bool:
    return _without_tokens(leader) == _without_tokens(follower)


_PLAN = Plan(check=_same_but_tokens, rule=RULE, same=True)


def token_plan(request: Request) -> Plan | None:
    """The plan of a request whose reply shows CAS tokens (gets, gats, mg/ms/ma with ``c``):
    compared without the tokens, and their pairs learned. None for any other request."""
    name = request.name
    if name in _SHOWS_VALUES or (name in _SHOWS_META and b"c" in _meta_flags(request)):
        return _PLAN
    return None


def token_pairs(request: Request, leader: Any, follower: Any) -> Sequence[tuple[int, int]]:
    """The (leader's, follower's) token of each item version both replies show."""
    if type(leader) is not tuple or type(follower) is not tuple or not leader or \
            leader[0] != follower[0]:
        return ()
    if leader[0] == "values":
        return tuple((a.cas, b.cas) for a, b in zip(leader[1], follower[1], strict=False)
                     if a.key == b.key and a.cas is not None and b.cas is not None)
    if leader[0] == "meta":
        a = dict(leader[2]).get("c")
        b = dict(follower[2]).get("c")
        if a is not None and b is not None:
            x, y = number(a), number(b)
            if x is not None and y is not None:
                return ((x, y),)
    return ()


def follower_tokens(request: Request, ids: Mapping[Any, Any], leader: Any
                    ) -> list[bytes] | None:
    """The follower's words for a request that sends a CAS token (``cas``; ``ms``, ``md``, ``ma``
    with ``C``), with the follower's token for the same item version (see the module's doc);
    the data block, if any, is the last word. None: the request goes as it is."""
    name = request.name
    args = request.args
    if name == "cas":
        if len(args) < 5:
            return None
        token = number(args[4])
        theirs = ids.get(token)
        if theirs is not None:
            new = [*args[:4], b"%d" % theirs, *args[5:]]
        elif leader == _STORED:
            return [b"set", *args[:4], *args[5:], request.data or b""]
        elif leader == _EXISTS:
            new = [*args[:4], b"%d" % NO_TOKEN, *args[5:]]
        else:
            return None
        return [b"cas", *new, request.data or b""]
    if name not in _SENDS_META:
        return None
    start = 2 if name == "ms" else 1
    for i in range(start, len(args)):
        flag = args[i]
        if flag[:1] != b"C":
            continue
        theirs = ids.get(number(flag[1:]))
        if theirs is not None:
            new = [*args[:i], b"C%d" % theirs, *args[i + 1:]]
        elif type(leader) is tuple and leader[:1] == ("meta",) and leader[1] in (b"HD", b"VA"):
            new = [*args[:i], *args[i + 1:]]
        elif type(leader) is tuple and leader[:2] == ("meta", b"EX"):
            new = [*args[:i], b"C%d" % NO_TOKEN, *args[i + 1:]]
        else:
            return None
        words = [name.encode(), *new]
        if request.data is not None:
            words.append(request.data)
        return words
    return None
