"""The request reader's fast path: hiredis frames a chunk, cheap whole-chunk checks prove it exact.

redis-server and hiredis agree on canonical requests (``*<n>`` then ``n`` times ``$<len>``, each
line ending in CRLF), but hiredis also accepts what redis-server does not (RESP3 types as array
elements, ``~``/``|`` aggregates, nested arrays) and gives no byte offsets. So a chunk's prefix of
complete requests is taken from hiredis only when these checks pass, which together leave no room
for any framing but the canonical one; otherwise the exact parser handles the chunk. Measured on
this project's benchmark, the fast path frames a 16-request SET/GET pipeline about 2.5x faster
than the exact pure-Python parser (see ``loadtests/bench_codecs.py`` and the codec's report).

The proof, for a prefix P of the chunk (starting at a request boundary with ``*``) that hiredis
parsed completely into K values (it holds no byte, and it is inside no aggregate: a status reply
fed after P comes back as itself):

1. No ``*`` followed by 6 digits anywhere (else hiredis would allocate a huge list up front), and
   no ``~ > % |`` aggregate header of 6 digits: every aggregate is small.
2. Every value is a non-empty ``list`` whose items are all ``bytes``: each request is a ``*`` or
   ``~`` array (``>`` gives a ``PushNotification``, ``%`` a dict, ``*0`` and ``*-1`` fail) whose
   elements are ``$`` bulk, ``+`` simple, ``(`` big number or ``=`` verbatim strings.
3. No ``\\r\\n=``, ``\\r\\n~`` or ``\\r\\n|`` in P: no verbatim element, no ``~`` request after the
   first, no attribute (every element and request after the first follows a CRLF).
4. No value contains ``\\r``. Hence the CRLFs in P are exactly: one per array header, one per
   element header line (``$``) or element line (``+``, ``(``), and one per ``$`` element whose two
   trailing bytes (skipped unchecked by both hiredis and redis-server) are CRLF. So P has at most
   ``K + 2 * (number of elements)`` CRLFs, with equality exactly when every element is a ``$``
   bulk string ending in CRLF: every request is canonical.
5. Then ``\\r\\n*`` occurs in P at each request start after the first and wherever a value starts
   with ``*``, nowhere else (no value holds a CR). ``P.split(b"\\r\\n*")`` having exactly K pieces
   means there is no such value, so the pieces are the requests, byte for byte.

redis-server frames a canonical request exactly as hiredis does, so the requests, their arguments
and their raw bytes are what the exact parser would give.

For a read that is one request (an unpipelined client's), :func:`one_request` checks the same
canonical form by walking its headers, cheaper than the proof's fixed cost.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import chain

import hiredis

from twinproxy.protocols import compiled
from twinproxy.protocols.messages import Request
from twinproxy.protocols.redis.textparse import INTS

# SINGLE mode's count in C (_scan.c), built by setup.py where a compiler is: the same answers as
# the proof below for what count() and count_run() take, 20 to 50 times faster. None where it was
# built without one: the proof below.
_compiled = compiled.load("redis")
c_scan = _compiled.scan if _compiled is not None else None
# count's and the relay's send in one call (RespRequestReader.forward), the sets of names it
# takes given once (requests.py: c_bind); the same as a C function for the relay's batch
# (c_forward_capsule: RespRequestReader.c_forward, see relay/_io.h)
c_forward = _compiled.forward if _compiled is not None else None
c_bind = _compiled.bind if _compiled is not None else None
c_forward_capsule = _compiled.FORWARD if _compiled is not None else None
# The exact parser's elements of a request with many (_scan.c), where built; else the parser's own
# loop takes them one at a time.
c_elements = _compiled.elements if _compiled is not None else None
# A run's SETs with EX or PX made PXAT for the follower (RespCodec.follower_run), where built.
c_absolute = _compiled.absolute if _compiled is not None else None
# Whether a read's transactions are whole (count(): redis-py's default pipeline), where built.
c_whole_transactions = _compiled.whole_transactions if _compiled is not None else None

_NOT_ENOUGH = object()
_BIG_ARRAY = re.compile(rb"\*[0-9]{6}")
_BIG_OTHER = tuple((ord(c), re.compile(rb"\%c[0-9]{6}" % ord(c))) for c in "~>%|")
_join = b"".join
_flatten = chain.from_iterable

# Bigger chunks go to the exact parser (a complete array in this many bytes has < 100000 items,
# which is what makes check 1 safe).
FAST_CHUNK = 256 * 1024


def new_reader() -> hiredis.Reader:
    return hiredis.Reader(notEnoughData=_NOT_ENOUGH)


def _parse_all(reader: hiredis.Reader, data: bytes, end: int) -> list | None:
    reader.feed(data, 0, end)
    out: list = []
    gets = reader.gets
    try:
        v = gets()
        while v is not _NOT_ENOUGH:
            out.append(v)
            v = gets()
        if reader.has_data():
            return None
        # has_data() is false too inside an aggregate whose header hiredis has consumed: an
        # empty status reply must come back as itself, not as part of something unfinished.
        reader.feed(b"+\r\n")
        if reader.gets() != b"" or reader.has_data():
            return None
    except Exception:  # any complaint from hiredis just means "not for the fast path"
        return None
    return out


def _safe_for_hiredis(data: bytes) -> bool:
    if _BIG_ARRAY.search(data):
        return False
    return not any(data.find(byte) >= 0 and pattern.search(data) for byte, pattern in _BIG_OTHER)


def _prove(data: bytes, reader: hiredis.Reader
           ) -> tuple[list | None, int, list[bytes], hiredis.Reader]:
    """The proof in the module docstring, for the complete requests at the start of ``data``.

    Returns ``(requests' argument lists, bytes they take, their pieces, reader)``, or
    ``(None, 0, [], reader)`` when the exact parser must take the chunk from its start; the
    returned reader is the one to pass next time (a fresh one when this call left ``reader``
    holding bytes).
    """
    no: tuple[None, int, list[bytes], hiredis.Reader] = (None, 0, [], reader)
    if not _safe_for_hiredis(data):
        return no
    end = len(data)
    reqs = None
    if data.endswith(b"\r\n"):
        reqs = _parse_all(reader, data, end)
        if reqs is None:
            reader = new_reader()
            no = (None, 0, [], reader)
    if reqs is None:
        # The chunk ends inside a request: try the requests before the last "\r\n*".
        end = data.rfind(b"\r\n*") + 2
        if end < 2:
            return no
        reqs = _parse_all(reader, data, end)
        if reqs is None:
            return None, 0, [], new_reader()
    k = len(reqs)
    if not k or set(map(type, reqs)) != {list} or [] in reqs:
        return no
    try:
        values = _join(_flatten(reqs))
    except TypeError:
        return no
    if values.find(b"\r") >= 0:
        return no
    for byte in b"=~|":
        if data.find(byte, 0, end) >= 0 and data.find(b"\r\n%c" % byte, 0, end) >= 0:
            return no
    if data.count(b"\r\n", 0, end) != k + 2 * sum(map(len, reqs)):
        return no
    pieces = data.split(b"\r\n*", k)
    if end == len(data):
        if len(pieces) != k:
            return no
    elif len(pieces) != k + 1 or len(pieces[k]) != len(data) - end - 1:
        return no  # the k-th "\r\n*" is not where the prefix was cut
    return reqs, end, pieces, reader


def fast_requests(
    data: bytes,
    reader: hiredis.Reader,
    make_request: Callable[[bytes, list[bytes]], Request],
    names: dict[bytes, tuple[str, int]],
) -> tuple[list[Request], int, hiredis.Reader]:
    """The canonical complete requests at the start of ``data`` and where they end.

    ``data`` starts at a request boundary with ``*``. Returns ``([], 0, reader)`` when the exact
    parser must take the chunk from its start; the returned reader is the one to pass next time.
    """
    reqs, end, pieces, reader = _prove(data, reader)
    if reqs is None:
        return [], 0, reader
    out: list[Request] = []
    append = out.append
    get = names.get
    begin = 0
    stop = -1  # the first piece holds its "*": one byte less to add than the others
    for v, piece in zip(reqs, pieces, strict=False):
        stop += len(piece) + 3
        raw = data[begin:stop]  # past the end (the last piece keeps its CRLF) slicing stops at it
        known = get(v[0])
        if known is None or known[1]:
            append(make_request(raw, v))
        else:
            del v[0]
            append(Request(raw, known[0], v))
        begin = stop
    return out, end, reader


def fast_count(data: bytes, reader: hiredis.Reader, ordinary: Callable[[set[bytes]], bool]
               ) -> tuple[int, int, hiredis.Reader]:
    """How many bytes at the start of ``data`` are complete requests that all pass
    ``ordinary`` (given the set of their command names as sent), and how many requests; 0 when
    the caller must frame the chunk itself. Builds no request: this is SINGLE mode's framing."""
    reqs, end, _, reader = _prove(data, reader)
    if reqs is None or not ordinary({v[0] for v in reqs}):
        return 0, 0, reader
    return end, len(reqs), reader


def one_request(data: bytes) -> bytes | None:
    """The command name when ``data`` is exactly one canonical multibulk request, else None.

    The read of an unpipelined client is one request; for it this costs less than the hiredis
    proof, whose fixed cost pays off only over a pipeline. Canonical means what the fast path
    proves (``*<n>`` and ``$<len>`` headers in their only spelling, each bulk followed by CRLF),
    so redis-server frames it the same way; anything else gets None.
    """
    nl = data.find(b"\r\n", 1, 9)
    argc = INTS.get(data[1:nl])
    if not argc:
        return None
    pos = nl + 2
    name = None
    find = data.find
    for _ in range(argc):
        if data[pos : pos + 1] != b"$":
            return None
        nl = find(b"\r\n", pos + 1, pos + 12)
        length = INTS.get(data[pos + 1 : nl]) if nl > 0 else None
        if length is None:
            return None
        pos = nl + 2 + length
        if data[pos : pos + 2] != b"\r\n":
            return None
        if name is None:
            name = data[nl + 2 : pos]
        pos += 2
    return name if pos == len(data) else None
