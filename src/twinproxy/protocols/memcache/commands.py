"""The memcached commands the codec knows, as one table that the readers and ``describe()`` share.

Rules the table keeps, each checked against memcached 1.6.18 (the recordings under
``tests/golden/memcache`` show them):

* A line is split on spaces only (runs of spaces count as one); it ends at ``\\n``, with one ``\\r``
  before it dropped. Command names are case-sensitive.
* ``noreply`` silences a text command completely, errors included: it counts only as the last token
  and only with at least ``noreply_from`` arguments (``delete noreply`` deletes the key "noreply";
  ``incr k noreply`` and ``touch k noreply`` answer nothing, not even the error of a missing
  number).
* Meta commands (``mg ms md ma mn me``) take flags: one letter, then an optional token. ``q``
  (quiet) hides the outcomes in ``Command.hidden``; errors always show. ``O`` (opaque) and ``k``
  (key) are echoed in the reply, and ``b`` says the key is base64.
* A storage line whose size memcached cannot read loses the framing of the stream (memcached then
  runs the data block as a command), so the request reader refuses it; other bad arguments get an
  error reply from the server itself and leave the framing intact, so the reader lets them through.
* Numbers are read as memcached's ``safe_strto*`` read them: C's ``strtol``/``strtoul`` over 64
  bits, then stored in 32 (a size of 4294967297 is a size of 1, flags of 4294967296 are flags 0).
* A line of more than 23 tokens is cut by memcached's tokenizer: the 23rd token holds the rest of
  the line, so ``noreply`` counts only as the 23rd token or before.
* The administrative commands (``cache_memlimit``, ``lru_crawler``, ``lru``, ``slabs``,
  ``extstore``, ``watch``, ``shutdown``, ``refresh_certs``) answer one line whose words vary
  (``OK``, ``BUSY ...``, ``MEMLIMIT_TOO_SMALL ...``, ``ERROR: shutdown not enabled``), except
  ``lru_crawler metadump``, which answers ``key=...`` lines then ``END``, and a ``watch`` that
  answers ``OK``, after which memcached streams log lines and reads nothing more from the client.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

# How a reply to a command is framed.
LINE = 0  # one line: STORED, DELETED, 42, VERSION 1.6.18, OK ...
VALUES = 1  # VALUE blocks, then END
STATS = 2  # STAT (or ITEM, PREFIX) lines, then END; or one line (OK, RESET)
META = 3  # one meta reply: HD, VA <size> + data, EN, NF, NS, EX, MN, ME ...
NONE = 4  # no reply at all (quit)
TEXT = 5  # one line, whatever its words (the administrative commands)
DUMP = 6  # lru_crawler metadump: key=... lines, then END; or one line (an error, BUSY ...)
WATCH = 7  # one line; after OK the connection is memcached's log stream for good

ERRORS = frozenset((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"))

UNBOUNDED = 1 << 30  # max_args of a command with any number of arguments

STORE_CODES = frozenset((b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND"))


@dataclass(frozen=True, slots=True)
class Command:
    """What the codec knows about one command.

    ``min_args``/``max_args`` bound the tokens after the name (``UNBOUNDED``: none); past them
    memcached answers ``ERROR`` and so does the reader. ``size_at`` is the index of the data block's
    size in the arguments, for commands that carry one. ``key_args`` is the slice of arguments that
    are keys. ``codes`` are the first tokens of the replies a non-quiet request can get besides
    errors, ``hidden`` those that quiet mode suppresses. ``is_global`` (with ``write``, changing
    it) marks what concerns the whole cache: ``flush_all`` and the administrative commands.
    """

    name: str
    min_args: int
    max_args: int
    reply: int
    codes: frozenset[bytes] = frozenset()
    size_at: int | None = None
    noreply_from: int | None = None
    key_args: slice | None = None
    meta: bool = False
    write: bool = False
    hidden: frozenset[bytes] = frozenset()
    one_key: bool = False  # key_args is exactly the first argument (the readers' fast path)
    noreply_after: bytes | None = None  # noreply counts only after this subcommand (slabs)
    is_global: bool = False  # touches what the whole cache holds, or its settings

    def __post_init__(self) -> None:
        object.__setattr__(self, "one_key", self.key_args == slice(0, 1))


def _meta(name: str, codes: tuple[bytes, ...], hidden: tuple[bytes, ...] = (), *,
          write: bool = True, min_args: int = 1, max_args: int = UNBOUNDED,
          size_at: int | None = None) -> Command:
    return Command(name, min_args, max_args, META, frozenset(codes), size_at=size_at,
                   key_args=slice(0, 1), meta=True, write=write, hidden=frozenset(hidden))


def _table() -> dict[bytes, Command]:
    first = slice(0, 1)
    cmds = [
        Command("get", 1, UNBOUNDED, VALUES, key_args=slice(0, None)),
        Command("gets", 1, UNBOUNDED, VALUES, key_args=slice(0, None)),
        Command("gat", 1, UNBOUNDED, VALUES, key_args=slice(1, None), write=True),
        Command("gats", 1, UNBOUNDED, VALUES, key_args=slice(1, None), write=True),
        *(Command(name, 4, 5, LINE, STORE_CODES, size_at=3, noreply_from=5, key_args=first,
                  write=True)
          for name in ("set", "add", "replace", "append", "prepend")),
        Command("cas", 5, 6, LINE, STORE_CODES, size_at=3, noreply_from=6, key_args=first,
                write=True),
        Command("incr", 2, 3, LINE, frozenset((b"NOT_FOUND",)), noreply_from=2, key_args=first,
                write=True),
        Command("decr", 2, 3, LINE, frozenset((b"NOT_FOUND",)), noreply_from=2, key_args=first,
                write=True),
        Command("touch", 2, 3, LINE, frozenset((b"TOUCHED", b"NOT_FOUND")), noreply_from=2,
                key_args=first, write=True),
        Command("delete", 1, 3, LINE, frozenset((b"DELETED", b"NOT_FOUND")), noreply_from=2,
                key_args=first, write=True),
        Command("bget", 1, UNBOUNDED, VALUES, key_args=slice(0, None)),  # an old name of get
        Command("flush_all", 0, 2, LINE, frozenset((b"OK",)), noreply_from=1, write=True,
                is_global=True),
        Command("verbosity", 1, 2, LINE, frozenset((b"OK",)), noreply_from=1),
        Command("version", 0, UNBOUNDED, LINE, frozenset((b"VERSION",))),
        Command("stats", 0, UNBOUNDED, STATS),
        Command("quit", 0, UNBOUNDED, NONE),
        # The administrative commands, with memcached's own token counts and noreply rules.
        Command("cache_memlimit", 1, 2, TEXT, noreply_from=1, write=True, is_global=True),
        Command("slabs", 0, UNBOUNDED, TEXT, noreply_from=2, noreply_after=b"automove",
                write=True, is_global=True),
        Command("lru", 1, UNBOUNDED, TEXT, noreply_from=1, is_global=True),
        Command("lru_crawler", 0, UNBOUNDED, TEXT, is_global=True),
        Command("extstore", 1, UNBOUNDED, TEXT, noreply_from=1, is_global=True),
        Command("refresh_certs", 0, UNBOUNDED, TEXT, noreply_from=1),
        Command("watch", 0, UNBOUNDED, WATCH, noreply_from=1),
        Command("shutdown", 0, UNBOUNDED, TEXT, write=True, is_global=True),
        # mg: a quiet miss is hidden; ms/md/ma: a quiet success is hidden, failures show.
        _meta("mg", (b"HD", b"VA", b"EN"), (b"EN",), write=False),
        # ms with more than 19 tokens loses its data block in memcached 1.6 ("options flags too
        # long" without swallowing it), so the reader refuses it.
        _meta("ms", (b"HD", b"NS", b"EX", b"NF"), (b"HD",), min_args=2, max_args=18, size_at=1),
        _meta("md", (b"HD", b"NF", b"EX"), (b"HD",)),
        _meta("ma", (b"HD", b"VA", b"NF", b"NS", b"EX"), (b"HD", b"VA")),
        _meta("me", (b"ME", b"EN"), write=False),
        Command("mn", 0, UNBOUNDED, META, frozenset((b"MN",)), meta=True),
    ]
    return {c.name.encode(): c for c in cmds}


COMMANDS: dict[bytes, Command] = _table()
BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS.values()}

# mg flags that change the item: T (new TTL), N (create on miss), R (win a recache), E (new CAS).
MG_WRITE_FLAGS = frozenset(b"TNRE")


# memcached's tokenizer keeps 23 tokens (the command and 22 arguments); the rest of a longer line
# stays in the last one, and "noreply" is looked for in the last token it kept.
_KEPT_ARGS = 22


def noreply(cmd: Command, args: list[bytes]) -> bool:
    """Whether memcached sends nothing at all for this text request."""
    n = len(args)
    return (cmd.noreply_from is not None and n >= cmd.noreply_from
            and (args[-1] if n <= _KEPT_ARGS else args[_KEPT_ARGS - 1]) == b"noreply"
            and (cmd.noreply_after is None or args[0] == cmd.noreply_after))


def reply_kind(cmd: Command, args: list[bytes]) -> int:
    """How the reply to this request is framed: ``cmd.reply``, except for ``lru_crawler
    metadump <classes>`` (with memcached's exact token count for it), which answers a dump."""
    if cmd.name == "lru_crawler" and len(args) == 2 and args[0] == b"metadump":
        return DUMP
    return cmd.reply


def reply_count(cmd: Command, args: list[bytes]) -> int:
    """Replies memcached sends for this request in the usual case (``Request.replies``).

    None for ``noreply``, ``quit`` and a quiet meta request (which shows only the outcomes in
    ``cmd.codes`` that quiet mode does not hide, and errors); one otherwise, a ``get`` of many
    keys included (its VALUE lines end with one END).
    """
    if cmd.reply == NONE or noreply(cmd, args):
        return 0
    return 0 if cmd.meta and cmd.hidden and b"q" in meta_flags(cmd, args) else 1


def meta_flags(cmd: Command, args: list[bytes]) -> list[bytes]:
    """The flag tokens of a meta request (after the key, and after the size for ``ms``)."""
    return args[2:] if cmd.size_at is not None else args[1:]


def decode_key(token: bytes, flags: list[bytes]) -> bytes:
    """The key a meta request names: its token, base64-decoded under flag ``b``.

    A token that is not valid base64 is kept as it is: memcached refuses the request, and ordering
    it on a key it never touches costs nothing.
    """
    if b"b" not in flags:
        return token
    try:
        return binascii.a2b_base64(token, strict_mode=True)
    except (binascii.Error, ValueError):
        return token


def number(token: bytes) -> int | None:
    """A decimal as memcached's strtol/strtoul read it (an optional sign, then digits), or None.

    Guarded on length because Python refuses to convert very long digit strings.
    """
    if len(token) > 24:
        return None
    if token.isdigit():
        return int(token)
    if len(token) > 1 and token[0] in b"+-" and token[1:].isdigit():
        value = int(token[1:])
        return -value if token[0] == 45 else value
    return None


# -- memcached's safe_strtol, safe_strtoul and safe_strtoull (util.c), on 64-bit Linux ------------

_C_SPACE = frozenset(b" \t\n\v\f\r")
_LONG = 1 << 63
_ULONG = 1 << 64


def _c_parse(token: bytes) -> tuple[bool, int] | None:
    """What C's strtol/strtoul read of the whole token: ``(negative, magnitude)``, or None when
    memcached refuses it (no digits, or anything but white space right after them). Leading white
    space and zeros are skipped as C skips them; the magnitude is exact."""
    i, n = 0, len(token)
    while i < n and token[i] in _C_SPACE:
        i += 1
    negative = False
    if i < n and token[i] in b"+-":
        negative = token[i] == 45
        i += 1
    j = i
    while j < n and 48 <= token[j] <= 57:
        j += 1
    if j == i or (j < n and token[j] not in _C_SPACE):
        return None
    digits = token[i:j].lstrip(b"0")
    if len(digits) > 20:  # past any 64-bit value: ERANGE
        return None
    return negative, int(digits or b"0")


def c_int32(token: bytes) -> int | None:
    """``safe_strtol`` into an ``int32_t``: strtol over 64 bits (None past them, ERANGE), then
    the low 32 bits as a signed number, which is what memcached keeps of a size or an exptime."""
    got = _c_parse(token)
    if got is None:
        return None
    negative, value = got
    value = -value if negative else value
    if not -_LONG <= value < _LONG:
        return None
    return (value + (1 << 31)) % (1 << 32) - (1 << 31)


def c_unsigned(token: bytes) -> int | None:
    """``safe_strtoul``/``safe_strtoull`` over 64 bits: strtoul's value (a sign is allowed, and
    ``-n`` wraps), refused when it is out of range or negative as a signed number with a minus
    sign in the token. Flags are kept to 32 bits by memcached, a CAS unique whole."""
    got = _c_parse(token)
    if got is None:
        return None
    negative, value = got
    if value >= _ULONG:
        return None
    if negative:
        value = (_ULONG - value) % _ULONG
    if value >= _LONG and b"-" in token:
        return None
    return value
