"""How redis-server reads text: its strict integer parse and its inline command splitter, ported.

Both the request reader (inline commands, argument counts, bulk lengths) and the reply reader and
command tables (numbers in arguments and replies) must accept exactly what redis-server accepts,
so the two C functions they rely on (``string2ll`` in ``util.c``, ``sdssplitargs`` in ``sds.c``)
live here once, apart from the framing that uses them.
"""

from __future__ import annotations

import re

__all__ = ["INTS", "split_inline", "string2ll"]

# Small non-negative numbers in their only valid spelling; anything else takes the strict path.
INTS = {b"%d" % i: i for i in range(10000)}
_STRICT_INT = re.compile(rb"-?[1-9][0-9]{0,19}|0")
_INT64 = (-(2**63), 2**63 - 1)

# sdssplitargs, for a line without quotes: a token starts at a non-isspace byte and runs until
# one of " \t\r\n" (\v and \f are skipped between tokens but belong to a token).
_TOKEN = re.compile(rb"[^ \t\r\n\v\f][^ \t\r\n]*")
_ISSPACE = frozenset(b" \t\n\v\f\r")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}


def string2ll(text: bytes) -> int | None:
    """Redis's strict integer parse (``util.c``), or None where redis-server rejects it."""
    v = INTS.get(text)
    if v is not None:
        return v
    if not _STRICT_INT.fullmatch(text) or text == b"-0":
        return None
    v = int(text)
    return v if _INT64[0] <= v <= _INT64[1] else None


def split_inline(line: bytes) -> list[bytes] | None:
    """The arguments of an inline command line, or None for unbalanced quotes.

    A faithful port of ``sdssplitargs`` (the line holds no NUL: the reader never splits one).
    """
    if b'"' not in line and b"'" not in line:
        return _TOKEN.findall(line)
    out: list[bytes] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i] in _ISSPACE:
            i += 1
        if i >= n:
            return out
        cur = bytearray()
        inq = insq = False
        while True:
            c = line[i] if i < n else 0
            if inq:
                if (
                    c == 92 and i + 3 < n and line[i + 1] == 120
                    and line[i + 2] in _HEX and line[i + 3] in _HEX
                ):  # fmt: skip
                    cur.append(int(line[i + 2 : i + 4], 16))
                    i += 4
                elif c == 92 and i + 1 < n:
                    cur.append(_ESCAPES.get(line[i + 1], line[i + 1]))
                    i += 2
                elif c == 34:
                    if i + 1 < n and line[i + 1] not in _ISSPACE:
                        return None
                    i += 1
                    break
                elif i >= n:
                    return None
                else:
                    cur.append(c)
                    i += 1
            elif insq:
                if c == 92 and i + 1 < n and line[i + 1] == 39:
                    cur.append(39)
                    i += 2
                elif c == 39:
                    if i + 1 < n and line[i + 1] not in _ISSPACE:
                        return None
                    i += 1
                    break
                elif i >= n:
                    return None
                else:
                    cur.append(c)
                    i += 1
            elif i >= n:
                break
            elif c in (32, 10, 13, 9):
                i += 1
                break
            elif c == 34:
                inq = True
                i += 1
            elif c == 39:
                insq = True
                i += 1
            else:
                cur.append(c)
                i += 1
        out.append(bytes(cur))
