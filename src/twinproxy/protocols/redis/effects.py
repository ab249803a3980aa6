"""What the follower is sent for a Redis request, once the leader's reply is known.

The follower runs behind the leader, so it can be sent the leader's *effect* instead of the
request, the way Redis replication makes non-deterministic commands deterministic:

* random choices (SPOP, SRANDMEMBER, HRANDFIELD, ZRANDMEMBER, RANDOMKEY): the follower removes, or
  checks, what the leader chose;
* blocking pops (BLPOP, BLMOVE, BZPOPMIN, BLMPOP ...): the follower pops, without blocking, what
  the leader handed out, at the position in the order where the leader handed it out; a pop the
  leader timed out on changes nothing and is not sent;
* ``XADD ... *``: the follower gets the ID the leader chose;
* ``EXEC`` that the leader aborted (a WATCHed key changed): the follower gets ``DISCARD``;
* ``EXEC`` of a transaction that holds such a command (SPOP, ``XADD *`` ...): its queued commands
  went to the follower as they were, before anyone knew what the leader would choose, so the
  follower drops them (``DISCARD``) and gets the transaction again with each such command
  replaced by its effect, taken from the leader's EXEC reply, as Redis propagates a
  transaction's SPOP to replicas as SREM inside MULTI/EXEC (:func:`transaction_plan`);
* a write the leader rejected with an error is withheld (a failed Redis command has no effect,
  and a newer version may accept what an older one rejects: ``LMPOP`` is unknown to 6.2), and
  so is any request the leader refused without running it (``-LOADING``, ``-BUSY``);
* reads whose result is a cursor or a wait (SCAN family, WAIT) are not sent, nor CLIENT KILL
  and CLIENT UNBLOCK (they name the leader's connections).

Replies whose value legitimately differs between two servers are compared by a check instead of
as they are (:mod:`.checks`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twinproxy.protocols.base import SKIP, Check, Plan, TransactionPlan
from twinproxy.protocols.messages import Request
from twinproxy.protocols.redis.checks import CLIENT_FIELDS_PLAN, client_entries, reply_plan
from twinproxy.protocols.redis.types import RespError

# Errors that say the server did not run the command at all: unknown to it, or refused for
# the moment (loading its dataset: DEBUG RELOAD, a restart; a script past its time limit).
NOT_RUN = (b"ERR unknown command", b"LOADING ", b"BUSY ")
WITHHELD = Plan()
WITHHELD.rule = "builtin:withheld"


def _all_ones(a: Any, b: Any, elapsed: float) -> bool:
    return (isinstance(b, tuple) and all(x == 1 for x in b)) or b == 1


def _count_of(expected: int) -> Check:
    return lambda a, b, elapsed: b == expected


def _equals(expected: Any) -> Check:
    return lambda a, b, elapsed: b == expected


def _no_nils(a: Any, b: Any, elapsed: float) -> bool:
    return isinstance(b, tuple) and None not in b


def _scores_equal(scores: tuple) -> Check:
    """ZMSCORE on the follower gives the scores ZRANDMEMBER WITHSCORES gave on the leader (a
    member missing there is a nil: a difference, not an error)."""
    def check(a: Any, b: Any, elapsed: float) -> bool:
        return isinstance(b, tuple) and None not in b and \
            [float(x) for x in b] == [float(x) for x in scores]
    return check


# Not sent: cursors and waits, and QUIT (the proxy closes the follower's connection itself).
NOT_SENT = {"SCAN", "SSCAN", "HSCAN", "ZSCAN", "WAIT", "WAITAOF", "XREAD", "QUIT"}
SCRIPTS = {"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"}
# What a script or function call the leader stopped at SCRIPT KILL or FUNCTION KILL answers
# (6.2: "ERR Error running script (call to f_...): @user_script:1: Script killed by user with
# SCRIPT KILL..."; 7.0: "ERR Script killed by user with SCRIPT KILL... script: ...").
_KILLED = b"Script killed by user with "


def kills_script(name: str, args: list[bytes]) -> bool:
    """SCRIPT KILL or FUNCTION KILL: it stops a script that runs on another connection (so it
    must not wait behind one, see ``RespCodec.route``)."""
    return name in ("SCRIPT", "FUNCTION") and bool(args) and args[0].upper() == b"KILL"

def _refused(a: Any, b: Any, elapsed: float) -> bool:
    return isinstance(b, RespError)


def _aborted(a: Any, b: Any, elapsed: float) -> bool:
    return isinstance(b, RespError) and b.message.startswith(b"EXECABORT")


# DEBUG RELOAD saves the dataset and loads it again: the same data on both versions. With an
# option (NOSAVE, NOFLUSH, MERGE) it loads, or merges in, whatever dump file each server has
# in its own directory: the two states cannot be known to be equal any more.
_RELOAD_WITH_OPTIONS = Plan(fails="a client's DEBUG RELOAD with options loaded the old "
                                  "version's own dump file, which the new version does not have")

# Inside MULTI, redis-server runs these rather than queue them (a refusal of one does not abort
# the transaction).
RUN_IN_MULTI = frozenset({"MULTI", "EXEC", "DISCARD", "WATCH", "QUIT", "RESET"})
# A request every version refuses to queue, aborting the transaction (GET with no key: the
# arity check comes before anything else, and has since Redis 1.0).
_REFUSED_IN_MULTI = Plan(words=[b"GET"], check=_refused, rule="builtin:refused-in-transaction")
_EXECABORT_PLAN = Plan(check=_aborted, rule="builtin:refused-in-transaction")


def follower_plan(request: Request, leader: Any, in_multi: bool, at: float = 0.0
                  ) -> Plan | None:
    """The plan for ``request`` given the leader's canonical reply; None: send it as it is.

    ``in_multi``: the request was queued in a transaction (its leader reply is ``QUEUED``, its
    effect comes with EXEC): it is sent as it is, so both transactions hold the same commands;
    a command among them whose effect the leader decides is replaced when EXEC's reply is
    known (:func:`transaction_plan`).
    """
    name = request.name
    args = request.args
    if in_multi:
        if isinstance(leader, RespError) and name not in RUN_IN_MULTI:
            # The leader refused to queue it (-BUSY, -OOM, -NOPERM: refusals of the moment or
            # of that server), so its EXEC will abort: the follower's must abort too, not run
            # the command the leader never ran.
            return _REFUSED_IN_MULTI
        return None
    if name == "DEBUG" and len(args) > 1 and args[0].upper() == b"RELOAD":
        return _RELOAD_WITH_OPTIONS  # (refused, it may still have emptied the dataset)
    if kills_script(name, args):
        # It stopped a script the leader ran. The follower gets a script only once the leader
        # answered it, and not at all one that was stopped (below): nothing to stop there, and
        # stopping whatever it runs then would stop what the leader ran to its end.
        return SKIP
    if isinstance(leader, RespError):
        if name == "EXEC" and leader.message.startswith(b"EXECABORT"):
            return _EXECABORT_PLAN  # the reason each names may differ (see _REFUSED_IN_MULTI)
        # A write the leader refused changed nothing there; neither did a command it does not
        # know (FCALL on 6.2), even a script, nor any command it refused without running it
        # because it was loading its dataset or busy with a script (the follower, behind,
        # may be neither by then: it would run it).
        # A script the leader stopped at SCRIPT KILL had written nothing (Redis refuses to
        # stop one that wrote, -UNKILLABLE): the follower, which would run it in full (a loop
        # that never ends, as likely as not), does not get it.
        if (request.write and name not in SCRIPTS) or leader.message.startswith(NOT_RUN) or \
                (name in SCRIPTS and _KILLED in leader.message[:200]):
            return WITHHELD
        return None
    if name in NOT_SENT:
        return SKIP
    words = absolute_expiry(request, at)
    if words is not None:
        return Plan(words=words)
    if name == "XREADGROUP" and any(a.upper() == b"BLOCK" for a in args):
        return Plan(words=[b"XREADGROUP", *_without_block(args)])
    if request.blocking:
        return _blocking_effect(name, args, leader)
    plan = _RANDOM.get(name)
    if plan is not None:
        return plan(args, leader)
    if name == "EXEC" and leader is None:
        return Plan(words=[b"DISCARD"], check=_equals(b"OK"), rule="builtin:exec-aborted")
    if name == "XADD" and len(args) >= 2:
        return _xadd(args, leader)
    if name == "CLIENT" and args and args[0].upper() in (b"KILL", b"UNBLOCK"):
        # The connections it names are the leader's; the proxy closes the clients the leader
        # disconnects, and their follower connections with them. No client ever blocks in the
        # follower (it gets the effects of the blocking requests the leader served), so there
        # is nothing to unblock there.
        return SKIP
    return reply_plan(name, args)


# Commands that set an expiry relative to when they run: the follower runs them later, and would
# keep the key longer by its lag (seconds, under load). It gets the leader's moment instead, as
# Redis's own replication does (EXPIRE is propagated as PEXPIREAT).
RELATIVE_EXPIRY = frozenset({"EXPIRE", "PEXPIRE", "SETEX", "PSETEX", "SET", "GETEX"})
_UNITS = {b"EX": 1000, b"PX": 1}


def absolute_expiry(request: Request, at: float) -> list[bytes] | None:
    """The words the follower gets for a request that sets an expiry relative to when it runs,
    made absolute from ``at`` (the wall-clock time the leader answered); None for any other
    request, or when ``at`` is 0 (unknown)."""
    if not at or request.name not in RELATIVE_EXPIRY:
        return None
    return _absolute_expiry(request.name, request.args, int(at * 1000))


def _absolute_expiry(name: str, args: list[bytes], at_ms: int) -> list[bytes] | None:
    """The request with its relative expiry made absolute from ``at_ms`` (None: it has none,
    or one the leader accepted that this does not read)."""
    if name in ("EXPIRE", "PEXPIRE"):
        n = _integer(args[1]) if len(args) >= 2 else None
        if n is None:
            return None
        ms = n * 1000 if name == "EXPIRE" else n
        return [b"PEXPIREAT", args[0], b"%d" % (at_ms + ms), *args[2:]]
    if name in ("SETEX", "PSETEX"):
        n = _integer(args[1]) if len(args) == 3 else None
        if n is None:
            return None
        ms = n * 1000 if name == "SETEX" else n
        return [b"SET", args[0], args[2], b"PXAT", b"%d" % (at_ms + ms)]
    first = 2 if name == "SET" else 1  # after SET's key and value, GETEX's key
    for i in range(first, len(args) - 1):
        unit = _UNITS.get(args[i].upper())
        if unit is not None:
            n = _integer(args[i + 1])
            if n is None:
                return None
            return [name.encode(), *args[:i], b"PXAT", b"%d" % (at_ms + n * unit), *args[i + 2:]]
    return None


def _integer(word: bytes) -> int | None:
    try:
        return int(word)
    except ValueError:
        return None


def follower_ids(request: Request, ids: Mapping[Any, Any]) -> list[bytes] | None:
    """CLIENT TRACKING ... REDIRECT <id> and CLIENT LIST ID <id> ... name connections by the
    leader's ids: the follower gets its own id for each, learned from CLIENT ID or CLIENT INFO
    on both (a client asks a connection's id before it names it). An id not learned goes as it
    is: for REDIRECT the follower's error shows as a divergence; CLIENT LIST is then compared
    only for a refusal (see :func:`.checks.reply_plan`).

    CLIENT KILL ID and CLIENT UNBLOCK name connections too, but are not sent (see
    :func:`follower_plan`)."""
    args = request.args
    if request.name != "CLIENT" or not args:
        return None
    sub = args[0].upper()
    if sub == b"LIST" and len(args) > 2 and args[1].upper() == b"ID":
        theirs = [ids.get(_integer(a)) for a in args[2:]]
        if None in theirs:
            return None
        return [b"CLIENT", *args[:2], *(b"%d" % i for i in theirs)]
    if sub != b"TRACKING":
        return None
    for i in range(2, len(args) - 1):
        if args[i].upper() == b"REDIRECT":
            theirs = ids.get(_integer(args[i + 1]))
            if theirs is None:
                return None
            return [b"CLIENT", *args[: i + 1], b"%d" % theirs, *args[i + 2:]]
    return None


def server_ids(request: Request, leader_value: Any, follower_value: Any
               ) -> tuple[tuple[int, int], ...]:
    """The two servers' ids of the connection that asked CLIENT ID, or CLIENT INFO (its
    ``id`` field)."""
    args = request.args
    if request.name != "CLIENT" or len(args) != 1:
        return ()
    sub = args[0].upper()
    if sub == b"ID":
        if type(leader_value) is int and type(follower_value) is int:
            return ((leader_value, follower_value),)
    elif sub == b"INFO":
        ours, theirs = client_entries(leader_value), client_entries(follower_value)
        if ours and theirs:
            a, b = _integer(ours[0].get(b"id", b"")), _integer(theirs[0].get(b"id", b""))
            if a is not None and b is not None:
                return ((a, b),)
    return ()


def renamed_plan(request: Request, plan: Plan | None) -> Plan | None:
    """CLIENT LIST ID with the follower's own ids lists the pairs of the connections the
    leader lists: compared field by field (:data:`.checks.CLIENT_FIELDS`)."""
    if request.name == "CLIENT" and request.args[0].upper() == b"LIST":
        return CLIENT_FIELDS_PLAN
    return plan


def _without_block(args: list[bytes]) -> list[bytes]:
    out, skip = [], False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a.upper() == b"BLOCK" and i + 1 < len(args):
            skip = True
            continue
        out.append(a)
    return out


def _blocking_effect(name: str, args: list[bytes], leader: Any) -> Plan:
    if leader is None or leader == ():
        return SKIP  # it timed out: nothing was taken
    if name in ("BLPOP", "BRPOP") and isinstance(leader, tuple) and len(leader) == 2:
        key, value = leader
        return Plan(words=[b"LPOP" if name == "BLPOP" else b"RPOP", key], check=_equals(value),
                    rule="builtin:blocking-effect")
    if name == "BRPOPLPUSH" and len(args) >= 2:
        return Plan(words=[b"RPOPLPUSH", args[0], args[1]], check=_equals(leader),
                    rule="builtin:blocking-effect")
    if name == "BLMOVE" and len(args) >= 4:
        return Plan(words=[b"LMOVE", *args[:4]], check=_equals(leader),
                    rule="builtin:blocking-effect")
    if name in ("BZPOPMIN", "BZPOPMAX") and isinstance(leader, tuple) and len(leader) == 3:
        key, member, score = leader
        return Plan(words=[b"ZPOPMIN" if name == "BZPOPMIN" else b"ZPOPMAX", key],
                    check=lambda a, b, e: isinstance(b, tuple) and len(b) == 2
                    and b[0] == member and float(b[1]) == float(score),
                    rule="builtin:blocking-effect")
    if name in ("BLMPOP", "BZMPOP") and isinstance(leader, tuple) and len(leader) == 2:
        key, items = leader
        side = _where(args)
        if side is not None and isinstance(items, tuple):
            # (BZMPOP's members come as [member, score] pairs)
            nested = name == "BLMPOP" or (items and isinstance(items[0], tuple))
            count = len(items) if nested else len(items) // 2 or len(items)
            cmd = b"LMPOP" if name == "BLMPOP" else b"ZMPOP"
            return Plan(words=[cmd, b"1", key, side, b"COUNT", b"%d" % count],
                        check=_equals(leader), rule="builtin:blocking-effect")
    return Plan(words=None)  # not understood: send as it is


def _where(args: list[bytes]) -> bytes | None:
    for a in args:
        if a.upper() in (b"LEFT", b"RIGHT", b"MIN", b"MAX"):
            return a.upper()
    return None


def _xadd(args: list[bytes], leader: Any) -> Plan | None:
    if not isinstance(leader, bytes):
        return None
    # The ID follows the key and the options: NOMKSTREAM, MAXLEN|MINID [=|~] n, LIMIT n.
    i = 1
    while i < len(args):
        word = args[i].upper()
        if word == b"NOMKSTREAM":
            i += 1
        elif word in (b"MAXLEN", b"MINID"):
            i += 1
            if i < len(args) and args[i] in (b"=", b"~"):
                i += 1
            i += 1
        elif word == b"LIMIT":
            i += 2
        else:
            break
    if i >= len(args) or not args[i].endswith(b"*"):
        return None
    return Plan(words=[b"XADD", *args[:i], leader, *args[i + 1:]])


def _spop(args: list[bytes], leader: Any) -> Plan | None:
    if leader is None or leader == ():
        return None  # nothing to pop: deterministic as it is
    members = leader if isinstance(leader, tuple) else (leader,)
    return Plan(words=[b"SREM", args[0], *members], check=_count_of(len(set(members))),
                rule="builtin:random-effect")


def _srandmember(args: list[bytes], leader: Any) -> Plan | None:
    if leader is None or leader == ():
        return None
    members = leader if isinstance(leader, tuple) else (leader,)
    return Plan(words=[b"SMISMEMBER", args[0], *members], check=_all_ones,
                rule="builtin:random-check")


def _flat(pairs: tuple) -> tuple:
    """A reply of pairs as RESP2 gives it: RESP3 nests each field or member with its value or
    score (``((f, v), ...)``), RESP2 alternates them (``(f, v, ...)``)."""
    if pairs and isinstance(pairs[0], tuple):
        return tuple(x for pair in pairs for x in pair)
    return pairs


def _hrandfield(args: list[bytes], leader: Any) -> Plan | None:
    if leader is None or leader == ():
        return None
    with_values = len(args) > 2 and args[2].upper() == b"WITHVALUES"
    if with_values and isinstance(leader, tuple):
        leader = _flat(leader)
    if not isinstance(leader, tuple):
        return Plan(words=[b"HEXISTS", args[0], leader], check=_equals(1),
                    rule="builtin:random-check")
    fields = leader[::2] if with_values else leader
    check = _equals(tuple(leader[1::2])) if with_values else _no_nils
    return Plan(words=[b"HMGET", args[0], *fields], check=check, rule="builtin:random-check")


def _zrandmember(args: list[bytes], leader: Any) -> Plan | None:
    if leader is None or leader == ():
        return None
    with_scores = len(args) > 2 and args[2].upper() == b"WITHSCORES"
    if with_scores and isinstance(leader, tuple):
        leader = _flat(leader)
    if not isinstance(leader, tuple):
        return Plan(words=[b"ZSCORE", args[0], leader],
                    check=lambda a, b, e: b is not None, rule="builtin:random-check")
    members = leader[::2] if with_scores else leader
    check = _scores_equal(tuple(leader[1::2])) if with_scores else _no_nils
    return Plan(words=[b"ZMSCORE", args[0], *members], check=check, rule="builtin:random-check")


def _randomkey(args: list[bytes], leader: Any) -> Plan | None:
    if leader is None:
        return None
    return Plan(words=[b"EXISTS", leader], check=_equals(1), rule="builtin:random-check")


_RANDOM: dict[str, Callable[[list[bytes], Any], Plan | None]] = {
    "SPOP": _spop,
    "SRANDMEMBER": _srandmember,
    "HRANDFIELD": _hrandfield,
    "ZRANDMEMBER": _zrandmember,
    "RANDOMKEY": _randomkey,
}


# Commands whose effect on the follower is what the leader's reply says (see follower_plan).
DECIDED = frozenset({*_RANDOM, "XADD"})


def transaction_plan(queue: Sequence[Request], leader: Any) -> TransactionPlan | None:
    """The follower's EXEC for a transaction that ran ``queue`` on the leader with the reply
    ``leader``; None: EXEC goes as it is (no command in ``queue`` is decided by the leader, or
    the leader did not run them: EXEC aborted (nil), EXECABORT, a reply that does not match
    the queue).

    Why replay instead of holding the queued commands back until EXEC: the queued commands are
    already on the follower, and a transaction still open when a barrier holds the leader (the
    cutover, or after it when the old version follows) would otherwise never let the follower
    catch up. ``DISCARD`` also drops the follower's WATCHes, which is right: the follower is
    sent EXEC only when the leader's EXEC ran, and must then run it too.

    A command the leader answered with an error inside EXEC (WRONGTYPE) goes as it is: it
    fails the same way on the follower, and keeps the replies in their places.
    """
    if not isinstance(leader, tuple) or len(leader) != len(queue):
        return None
    for request in queue:
        if request.name in DECIDED:
            break
    else:
        return None
    before: list[list[bytes] | int] = [[b"DISCARD"], [b"MULTI"]]
    effects: dict[int, Plan] = {}
    for i, (request, value) in enumerate(zip(queue, leader, strict=True)):
        plan = None
        if request.name in DECIDED and not isinstance(value, RespError):
            plan = follower_plan(request, value, in_multi=False)
        if plan is not None and plan.words is not None:
            effects[i] = plan
            before.append(plan.words)
        else:
            before.append(i)
    if not effects:
        return None  # nothing was chosen (SPOP of an empty set): as it is is deterministic
    return TransactionPlan(before, effects)
