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
* Once the new version serves alone, the proxy goes on translating the tokens clients took from
  the old version for a while (:class:`OldTokens`), so that a ``cas`` across the cutover
  succeeds or fails as it would have on the old version. See ``docs/design.md``, "State sync".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twinproxy.protocols.base import Codec, Plan
from twinproxy.protocols.memcache.commands import BY_NAME, decode_key, number
from twinproxy.protocols.memcache.values import Meta, Values
from twinproxy.protocols.messages import Reply, Request

__all__ = ["NO_TOKEN", "RULE", "OldTokens", "follower_tokens", "name", "token_pairs",
           "token_plan"]

RULE = "builtin:cas-token"
NO_TOKEN = (1 << 64) - 1
"""A token no memcached hands out (its counter would need 2**64 writes): a cas with it fails."""
_TOKEN = (1 << 64) - 1
_KEY = (1 << 60) - 1


def name(key: bytes, token: int) -> int:
    """The name of an item version: its key and a server's token for it, as one int (the
    key's hash in the high bits, the token in the low 64). The update's map of names holds
    one pair per item (a million after a copy of a million items): ints cost a third of
    what tuples of the key and the token did. Names live in the proxy's process only (the
    hash of bytes is the process's own). Two keys whose hashes agree in 60 bits (one chance
    in 10**18 a pair) share names: a token of one then names a version of the other, which the
    other server numbered otherwise: a false EXISTS, never a false success."""
    return (hash(key) & _KEY) << 64 | token


def token_of(name: int) -> int:
    """The server's token in an item version's :func:`name`."""
    return name & _TOKEN

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


def _meta_key(request: Request) -> bytes:
    """The key a meta request names (base64-decoded under its ``b`` flag)."""
    args = request.args
    return decode_key(args[0], _meta_flags(request)) if args else b""


def _key(request: Request) -> bytes:
    return request.args[0] if request.name == "cas" else _meta_key(request)


def token_pairs(request: Request, leader: Any, follower: Any) -> Sequence[tuple[int, int]]:
    """The two servers' names of each item version both replies show (:func:`name`: the key
    and the leader's token, the key and the follower's). The key is part of the name because
    the two counters give the same numbers to other items: after the cutover a number alone
    could be either version's (see :class:`OldTokens`)."""
    if type(leader) is not tuple or type(follower) is not tuple or not leader or \
            leader[0] != follower[0]:
        return ()
    if leader[0] == "values":
        return tuple((name(a.key, a.cas), name(b.key, b.cas))
                     for a, b in zip(leader[1], follower[1], strict=False)
                     if a.key == b.key and a.cas is not None and b.cas is not None)
    if leader[0] == "meta":
        a = dict(leader[2]).get("c")
        b = dict(follower[2]).get("c")
        if a is not None and b is not None:
            x, y = number(a), number(b)
            if x is not None and y is not None:
                key = _meta_key(request)
                return ((name(key, x), name(key, y)),)
    return ()


def _token_at(request: Request) -> int | None:
    """Where the CAS token is in ``request``'s arguments (``cas``'s fifth word, or a meta
    request's ``C`` flag), or None for a request that sends none."""
    name = request.name
    args = request.args
    if name == "cas":
        return 4 if len(args) >= 5 else None
    if name not in _SENDS_META:
        return None
    for i in range(2 if name == "ms" else 1, len(args)):
        if args[i][:1] == b"C":
            return i
    return None


def _name(request: Request, at: int) -> int | None:
    """The name of the item version the token at ``at`` names (None: not a number)."""
    word = request.args[at]
    token = number(word if request.name == "cas" else word[1:])
    if token is None or not 0 <= token <= _TOKEN:
        return None
    return name(_key(request), token)


def _with_token(request: Request, at: int, token: int | None) -> list[bytes]:
    """``request``'s words with the token at ``at`` replaced by ``token``; None: sent without
    the condition (``cas`` becomes ``set``, a meta ``C`` flag goes), the data block last."""
    args = request.args
    name = request.name
    if name == "cas":
        if token is None:
            return [b"set", *args[:4], *args[5:], request.data or b""]
        return [b"cas", *args[:4], b"%d" % token, *args[5:], request.data or b""]
    new = [*args[:at], *(() if token is None else (b"C%d" % token,)), *args[at + 1:]]
    words = [name.encode(), *new]
    if request.data is not None:
        words.append(request.data)
    return words


def follower_tokens(request: Request, ids: Mapping[Any, Any], leader: Any
                    ) -> list[bytes] | None:
    """The follower's words for a request that sends a CAS token (``cas``; ``ms``, ``md``, ``ma``
    with ``C``), with the follower's token for the same item version (see the module's doc);
    the data block, if any, is the last word. None: the request goes as it is."""
    at = _token_at(request)
    if at is None:
        return None
    theirs = ids.get(_name(request, at))
    if theirs is not None:
        return _with_token(request, at, token_of(theirs))
    if request.name == "cas":
        stored, refused = leader == _STORED, leader == _EXISTS
    else:
        stored = type(leader) is tuple and leader[:1] == ("meta",) and leader[1] in (b"HD", b"VA")
        refused = type(leader) is tuple and leader[:2] == ("meta", b"EX")
    if stored:
        return _with_token(request, at, None)
    if refused:
        return _with_token(request, at, NO_TOKEN)
    return None


# Writes that leave an item's version (its token) as it was: they change only its expiry.
_SAME_VERSION = frozenset(("touch", "gat", "gats", "mg"))


class OldTokens:
    """After a cutover, the CAS tokens clients still hold from the old version, translated to
    the new version's tokens for the same item versions (``docs/design.md``, "CAS tokens after
    the cutover"). The relay shows it each request it forwards (:meth:`__call__`) and each
    reply (:meth:`seen`).

    ``ids`` are the names the update learnt (:func:`name`), the old version's name of each item
    version to the new version's. Each server numbers its item versions with its own counter, so one
    number can be a token of both versions; a token the new version showed a client since
    the cutover (:meth:`seen`) is therefore always taken as the new version's and goes as it
    is. Any other token the map has, for the request's key:

    * while no request changed the key since the cutover, becomes the new version's token for
      that item version: the ``cas`` succeeds exactly when it would have on the old version
      (that version is still the current one) and fails otherwise;
    * once a request changed the key (or after a ``flush_all``), becomes :data:`NO_TOKEN` and
      fails, as it would have on the old version, where every version it could name was
      replaced since.

    A token the map does not have goes as it is (one taken before the update from a version
    replaced since: it fails, unless by chance the new version numbered the key's current
    version the same).

    Bounded: it never holds more keys and tokens seen since the cutover than the map has
    pairs; past that it lets go of all of them and passes every request as it is (a token of
    the old version then fails with EXISTS, and the client takes a new one, as after a lost
    race). The lifecycle ends it after :attr:`seconds`, and when the next update starts.
    """

    seconds = 600.0
    """How long after the cutover the proxy keeps translating (a client that holds a token
    longer than this takes a new one after its EXISTS)."""

    def __init__(self, ids: Mapping[int, int], codec: Codec):
        self.ids = ids
        self.changed: set[bytes] = set()  # keys a request changed since the cutover
        self.fresh: set[int] = set()  # names of the versions the new version showed since
        self.flushed = False
        self.translated = 0  # tokens sent as the new version's for the same item version
        self.refused = 0  # tokens sent as NO_TOKEN
        self._codec = codec

    def __call__(self, request: Request) -> Request:
        """What to send in place of ``request``: itself, or the request with the new version's
        token (or :data:`NO_TOKEN`). Notes the keys that change."""
        cmd = BY_NAME.get(request.name)
        if not self.ids or cmd is None or not cmd.write or request.answer is not None:
            return request
        out = request
        at = _token_at(request)
        key = None
        if at is not None:
            key = _key(request)
            ours = _name(request, at)
            theirs = None if ours is None else self.ids.get(ours)
            if theirs is not None and ours not in self.fresh:
                if self.flushed or key in self.changed:
                    token = NO_TOKEN
                    self.refused += 1
                else:
                    token = token_of(theirs)
                    self.translated += 1
                out = self._codec.make_request(_with_token(request, at, token))
        if cmd.is_global:
            self.flushed = True
        elif request.name not in _SAME_VERSION:
            if key is None:
                key = _key(request) if cmd.meta else request.args[0] if request.args else b""
            self.changed.add(key)
            self._bound()
        return out

    def seen(self, replies: Sequence[Reply]) -> None:
        """Note the tokens the new version shows in ``replies`` (gets, gats; meta ``c``)."""
        if not self.ids:
            return
        fresh = self.fresh
        for reply in replies:
            value = reply.value
            if type(value) is Values:
                fresh.update(name(item.key, item.cas) for item in value.items
                             if item.cas is not None)
            elif type(value) is Meta and reply.request is not None:
                for flag in value.flags:
                    token = number(flag[1:]) if flag[:1] == b"c" else None
                    if token is not None:
                        fresh.add(name(_meta_key(reply.request), token))
        self._bound()

    def _bound(self) -> None:
        if len(self.changed) + len(self.fresh) > len(self.ids):
            self.ids, self.changed, self.fresh = {}, set(), set()
