"""The requests that give a new Redis connection the session an existing one has.

When an update pairs a client connection with a connection to the new version, that connection
must first reach the same session: the same user, protocol, database, name and client flags, the
same watched keys, subscriptions and reply mode, and, when the client is in the middle of a
transaction, the same queued commands. The session requests the client sent are replayed in the
order it sent them (keeping only the last of each kind, after the last RESET), so that whatever
made one fail on the old version (a SELECT before AUTH) makes it fail on the new one too; the
rest comes from the connection state that the reply reader tracked. The database too, where the
reader knows it: the last SELECT sent may be one the server refused (``SELECT 99``), which left
the connection in the database an earlier one chose.
"""

from __future__ import annotations

from twinproxy.protocols.messages import Request
from twinproxy.protocols.redis.session import _OFF as REPLY_OFF
from twinproxy.protocols.redis.session import ConnectionState
from twinproxy.protocols.redis.types import encode_command

# Session commands replayed from the client's own requests; the value names what a later request
# of the same kind replaces.
_KINDS = {"SELECT": "db", "AUTH": "auth", "HELLO": "hello", "READONLY": "readonly",
          "READWRITE": "readonly"}
_CLIENT_KINDS = {b"SETNAME": "name", b"NO-EVICT": "no-evict", b"NO-TOUCH": "no-touch",
                 b"TRACKING": "tracking"}


def _kind(request: Request) -> str | None:
    if request.name == "CLIENT" and request.args:
        sub = request.args[0].upper()
        if sub == b"SETINFO" and len(request.args) > 1:
            return "setinfo:" + request.args[1].upper().decode("latin-1")
        return _CLIENT_KINDS.get(sub)
    return _KINDS.get(request.name)


def compact(session: list[Request]) -> list[Request]:
    """The session requests that still matter: after the last RESET, the last of each kind in
    the order they were last sent, and the WATCH/UNWATCH/EXEC/DISCARD that decide watched keys.
    Keeps a client's session record bounded however long it lives."""
    last: dict[str, Request] = {}
    watch: list[Request] = []
    for request in session:
        if request.name == "RESET":
            last.clear()
            watch.clear()
            continue
        if request.name in ("WATCH", "UNWATCH", "EXEC", "DISCARD"):
            if request.name == "WATCH":
                watch.append(request)
            else:
                watch.clear()
            continue
        kind = _kind(request)
        if kind is not None:
            last.pop(kind, None)
            last[kind] = request
    return [*last.values(), *watch]


def select(db: int) -> bytes:
    """``SELECT db``: what puts a connection in that database."""
    return encode_command(b"SELECT", b"%d" % db)


def replay(session: list[Request], state: ConnectionState | None) -> list[bytes]:
    """The requests, encoded, to send a fresh connection so that it reaches this session.

    ``session`` is what the client sent that changes its session (see ``Request.session``);
    ``state`` the state its reply reader tracked (None for a connection whose replies were never
    framed, which is in the plain state: RESP2, no subscription, replies on, no transaction).
    """
    kept = compact(session)
    db = state.db if state is not None else None
    out = [r.raw if r.name != "SELECT" or db is None else select(db)
           for r in kept if r.name != "WATCH"]
    watched: list[bytes] = []
    for r in kept:
        if r.name == "WATCH":
            watched.extend(r.args)
    if watched:
        out.append(encode_command(b"WATCH", *dict.fromkeys(watched)))
    if state is None:
        return out
    for command, names in ((b"SUBSCRIBE", state.channels), (b"PSUBSCRIBE", state.patterns),
                           (b"SSUBSCRIBE", state.shards)):
        if names:
            out.append(encode_command(command, *sorted(names)))
    if state.in_multi:
        out.append(encode_command(b"MULTI"))
        out.extend(r.raw for r in state.queued)
    if state.reply == REPLY_OFF:
        out.append(encode_command(b"CLIENT", b"REPLY", b"OFF"))
    return out
