"""Per-protocol inputs for the codec contract suite (``test_contract.py``): no tests here.

Each protocol gives, in one :class:`Samples` entry of :data:`SAMPLES`, streams of complete
requests and replies with what they must frame to, incomplete tails that must stay buffered,
inputs its readers must refuse (with the protocol's own error), and the material its fuzz
contract splices. A new protocol adds an entry here and gets the whole suite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twinproxy.protocols import Limits
from twinproxy.protocols.ftp.readers import LINE_TOO_LONG as FTP_LINE_TOO_LONG
from twinproxy.protocols.memcache.requests import BAD_FORMAT, LINE_TOO_LONG
from twinproxy.protocols.redis import encode_command

DEFAULT = Limits()

Framed = tuple[str, list[bytes], bytes | None]
"""A request as the contract checks it: ``(name, args, data)``."""


@dataclass(frozen=True)
class RequestSample:
    """A stream of complete requests and what it frames to."""

    data: bytes
    expected: list[Framed]


@dataclass(frozen=True)
class ReplySample:
    """What a client sent (framed by the request reader, then expected by the reply reader), the
    server's replies, and for each reply the index of the request it answers (None: a reply no
    request asked for, such as a greeting or a push) and whether it is final."""

    sent: bytes
    data: bytes
    expected: list[tuple[int | None, bool]]


@dataclass(frozen=True)
class ErrorCase:
    """Input a reader must refuse: ``good`` frames first (its messages come with the error),
    then ``bad`` breaks the protocol or a limit. ``reply`` is what the peer must be sent (the
    protocol's own error), ``words`` is part of the error's message. For a reply reader,
    ``sent`` is what it expects."""

    good: bytes
    bad: bytes
    reply: bytes
    words: str
    limits: Limits = DEFAULT
    sent: bytes = b""


@dataclass(frozen=True)
class Samples:
    """Everything the contract suite feeds one protocol's readers."""

    requests: list[RequestSample]
    request_tails: list[bytes]  # each a request's start: after any of them, it stays buffered
    replies: list[ReplySample]
    # (one more request sent, the start of its reply): after replies[0], the start stays buffered
    reply_tails: list[tuple[bytes, bytes]]
    request_errors: list[ErrorCase]
    reply_errors: list[ErrorCase]
    # The fuzz contract: random bytes and splices of ``tokens`` under ``fuzz_limits``; a reply
    # reader first expects some of ``fuzz_sent``.
    tokens: list[bytes]
    fuzz_limits: Limits
    fuzz_sent: list[bytes]
    # Whether the error reply a request reader gives is one of the protocol's own; a reply
    # reader's error reply must be ``reply_refusal``'s.
    request_refusal: Callable[[bytes], bool]
    reply_refusal: Callable[[bytes], bool]
    # The most an incomplete message may hold under the fuzz limits; None where the protocol
    # bounds memory by what a message announces (checked in its own tests).
    bound: int | None = None
    reply_bound: int | None = None  # where a reply reader may hold more (None: ``bound``)
    # Whether the request reader consumes bytes that make no request (so requests' raw bytes
    # are in the stream in order, but not back to back).
    skips: bool = False


# ---- Redis --------------------------------------------------------------------------------------

REDIS_PIPELINE = b"".join([
    encode_command("SET", "k", "v"), encode_command("get", "k"), b"PING\r\n",
    encode_command("CLIENT", "setname", "x"), encode_command("ECHO", b"a\r\nb"),
])

REDIS = Samples(
    requests=[
        RequestSample(REDIS_PIPELINE, [
            ("SET", [b"k", b"v"], None), ("GET", [b"k"], None), ("PING", [], None),
            ("CLIENT", [b"setname", b"x"], None), ("ECHO", [b"a\r\nb"], None)]),
        # inline commands: quotes, a bare LF
        RequestSample(b"SET a \"b c\"\nECHO 'x'\r\n", [
            ("SET", [b"a", b"b c"], None), ("ECHO", [b"x"], None)]),
        # line ends redis-server takes: a header ends at its first CR, the byte after it skipped
        RequestSample(b"*1\rx$4\rxPINGxx*2\r\n$4\r\nECHO\r\n$1\r\nz\r\n", [
            ("PING", [], None), ("ECHO", [b"z"], None)]),
        RequestSample(encode_command("SET", "big", b"v" * 300) + encode_command("GET", "big"), [
            ("SET", [b"big", b"v" * 300], None), ("GET", [b"big"], None)]),
    ],
    request_tails=[b"*", b"*2\r", b"*2\r\n$3\r\nGET\r\n$1", b"*1\r\n$4\r\nPI", b"PIN",
                   b"*1\r\n$4\r\nPING\r", b"PING\x00\r\n"],
    replies=[
        ReplySample(
            b"".join(encode_command(*c.split()) for c in (
                "SET k v", "GET k", "GET nope", "LRANGE l 0 -1", "INCR n", "HGETALL h", "GET e")),
            b"+OK\r\n$1\r\nv\r\n$-1\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n:1\r\n*0\r\n-ERR wrong\r\n",
            [(0, True), (1, True), (2, True), (3, True), (4, True), (5, True), (6, True)]),
        # RESP3: a push nobody asked for between two replies
        ReplySample(
            encode_command("HELLO", "3") + encode_command("CLIENT", "TRACKING", "on")
            + encode_command("GET", "k"),
            b"%1\r\n+server\r\n+redis\r\n+OK\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"
            b"$1\r\nv\r\n",
            [(0, True), (1, True), (None, True), (2, True)]),
        # RESP2 subscribe mode: one confirmation per channel, then a message
        ReplySample(
            encode_command("SUBSCRIBE", "a", "b"),
            b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"
            b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n",
            [(0, False), (0, True), (None, True)]),
    ],
    reply_tails=[(encode_command("GET", "x"), tail)
                 for tail in (b"$", b"$5\r\nab", b"*2\r\n:1\r\n", b"+O", b"-ERR")],
    request_errors=[
        ErrorCase(encode_command("PING"), b"*x\r\n",
                  b"-ERR Protocol error: invalid multibulk length\r\n", "invalid multibulk length"),
        ErrorCase(b"", encode_command("SET", "k", "x" * 11),
                  b"-ERR Protocol error: invalid bulk length\r\n", "over the limit 10",
                  Limits(max_bulk=10)),
        ErrorCase(b"", encode_command("MSET", "a", "1", "b"),
                  b"-ERR Protocol error: invalid multibulk length\r\n", "over the limit 3",
                  Limits(max_elements=3)),
        ErrorCase(b"", b"PING " + b"x" * 100 + b"\r\n",
                  b"-ERR Protocol error: too big inline request\r\n", "no end to an inline",
                  Limits(max_line=100)),
    ],
    reply_errors=[
        ErrorCase(b"+OK\r\n", b"?\r\n", b"", "unknown reply type",
                  sent=encode_command("SET", "k", "v") + encode_command("GET", "k")),
        *(ErrorCase(b"", bad, b"", words, limits, sent=encode_command("GET", "k"))
          for limits, bad, words in [
              (Limits(max_line=10), b"+" + b"x" * 11 + b"\r\n", "longer than 10"),
              (Limits(max_line=10), b"+" + b"x" * 12, "longer than 10"),
              (Limits(max_bulk=3), b"$4\r\nabcd\r\n", "bulk length 4"),
              (Limits(max_elements=2), b"*3\r\n", "aggregate length 3"),
              (Limits(max_elements=2), b"%3\r\n", "aggregate length 3"),
              (Limits(max_depth=3), b"*1\r\n" * 4, "nested deeper than 3"),
          ]),
    ],
    tokens=[b"*", b"$", b"\r", b"\n", b"\r\n", b"\r\n*", b"\r\n$", b"0", b"1", b"-", b"+", b"=",
            b"~", b"|", b"\x00", b" ", b'"', b"'", b"*1\r\n", b"$1\r\n", b"\r\n=", b"*99999",
            b"*2\r\n", b"\r\n*2\r\n", b"%", b">", b",", b"#", b"(", b"!", b"_", b"$-1\r\n",
            b"+OK\r\n", b"PING", b"subscribe", b"message", b"txt:", b"inf", b"\\x41"],
    fuzz_limits=Limits(max_line=64, max_bulk=64, max_elements=16, max_depth=4),
    fuzz_sent=[encode_command(*c.split()) for c in (
        "GET k", "SET k v", "PING", "SUBSCRIBE a b", "PSUBSCRIBE p*", "UNSUBSCRIBE", "HELLO 3",
        "HELLO 2", "CLIENT REPLY OFF", "CLIENT REPLY ON", "CLIENT REPLY SKIP", "MULTI", "EXEC",
        "MONITOR", "RESET", "QUIT", "LRANGE l 0 -1")],
    request_refusal=lambda reply: reply.startswith(b"-ERR Protocol error: ")
    and reply.endswith(b"\r\n") and reply.count(b"\n") == 1,
    reply_refusal=lambda reply: reply == b"",
    skips=True,
)


# ---- memcached ----------------------------------------------------------------------------------

# (input, [(name, args, data)]) for streams of complete requests: every command family, and
# memcached's tolerance (bare LF, runs of spaces, odd flags left for the server to refuse)
MEMCACHE_FRAMED: list[tuple[bytes, list[Framed]]] = [
    (b"get a\r\n", [("get", [b"a"], None)]),
    (b"gets a b c\r\n", [("gets", [b"a", b"b", b"c"], None)]),
    (b"gat 10 a b\r\ngats 0 a\r\n",
     [("gat", [b"10", b"a", b"b"], None), ("gats", [b"0", b"a"], None)]),
    (b"gat 10\r\n", [("gat", [b"10"], None)]),
    (b"set k 5 0 3\r\nabc\r\n", [("set", [b"k", b"5", b"0", b"3"], b"abc")]),
    (b"add k 0 0 0\r\n\r\n", [("add", [b"k", b"0", b"0", b"0"], b"")]),
    (b"replace k 0 0 2 noreply\r\nhi\r\n",
     [("replace", [b"k", b"0", b"0", b"2", b"noreply"], b"hi")]),
    (b"append k 0 0 4\r\n\r\n\r\n\r\n", [("append", [b"k", b"0", b"0", b"4"], b"\r\n\r\n")]),
    (b"prepend k 0 0 1\r\n\0\r\n", [("prepend", [b"k", b"0", b"0", b"1"], b"\0")]),
    (b"cas k 0 0 1 99\r\nx\r\n", [("cas", [b"k", b"0", b"0", b"1", b"99"], b"x")]),
    (b"cas k 0 0 1 99 noreply\r\nx\r\n",
     [("cas", [b"k", b"0", b"0", b"1", b"99", b"noreply"], b"x")]),
    (b"set k +1 -5 +1\r\nx\r\n", [("set", [b"k", b"+1", b"-5", b"+1"], b"x")]),
    (b"incr n 5\r\ndecr n 1 noreply\r\n",
     [("incr", [b"n", b"5"], None), ("decr", [b"n", b"1", b"noreply"], None)]),
    (b"touch k 10\r\ndelete k\r\ndelete k 0 noreply\r\n",
     [("touch", [b"k", b"10"], None), ("delete", [b"k"], None),
      ("delete", [b"k", b"0", b"noreply"], None)]),
    (b"flush_all\r\nflush_all 0 noreply\r\nversion\r\nverbosity 1\r\n",
     [("flush_all", [], None), ("flush_all", [b"0", b"noreply"], None), ("version", [], None),
      ("verbosity", [b"1"], None)]),
    (b"stats\r\nstats items\r\nstats cachedump 1 10\r\nstats detail dump\r\n",
     [("stats", [], None), ("stats", [b"items"], None),
      ("stats", [b"cachedump", b"1", b"10"], None), ("stats", [b"detail", b"dump"], None)]),
    (b"mg k v t f q k O12\r\n", [("mg", [b"k", b"v", b"t", b"f", b"q", b"k", b"O12"], None)]),
    (b"ms k 3 T0 F5 q\r\nabc\r\n", [("ms", [b"k", b"3", b"T0", b"F5", b"q"], b"abc")]),
    (b"ms YQ== 1 b\r\nx\r\n", [("ms", [b"YQ==", b"1", b"b"], b"x")]),
    (b"md k q\r\nma k MD D3 v\r\nmn\r\nme k\r\n",
     [("md", [b"k", b"q"], None), ("ma", [b"k", b"MD", b"D3", b"v"], None), ("mn", [], None),
      ("me", [b"k"], None)]),
    (b"get a\nget  a  b \r\n  mg a v\n", [("get", [b"a"], None), ("get", [b"a", b"b"], None),
                                          ("mg", [b"a", b"v"], None)]),
    (b"mg a !\r\nincr n x\r\ntouch k x\r\ndelete k 5\r\n",
     [("mg", [b"a", b"!"], None), ("incr", [b"n", b"x"], None), ("touch", [b"k", b"x"], None),
      ("delete", [b"k", b"5"], None)]),
    (b"get a\tb\r\n", [("get", [b"a\tb"], None)]),
    (b"get a\r\r\n", [("get", [b"a\r"], None)]),
    # every command memcached 1.6 accepts, the administrative ones included
    (b"cache_memlimit 100\r\ncache_memlimit 64 noreply\r\nlru_crawler metadump all\r\n"
     b"lru_crawler sleep 100\r\nlru tune 10 10 0.1 2\r\nslabs automove 1\r\n"
     b"slabs reassign 1 2\r\nextstore item_size 100\r\nrefresh_certs\r\nbget a b\r\n"
     b"watch fetchers\r\nshutdown\r\n",
     [("cache_memlimit", [b"100"], None), ("cache_memlimit", [b"64", b"noreply"], None),
      ("lru_crawler", [b"metadump", b"all"], None), ("lru_crawler", [b"sleep", b"100"], None),
      ("lru", [b"tune", b"10", b"10", b"0.1", b"2"], None), ("slabs", [b"automove", b"1"], None),
      ("slabs", [b"reassign", b"1", b"2"], None), ("extstore", [b"item_size", b"100"], None),
      ("refresh_certs", [], None), ("bget", [b"a", b"b"], None), ("watch", [b"fetchers"], None),
      ("shutdown", [], None)]),
    # sizes, flags and exptimes as memcached reads them: 4294967297 is 1, +3 is 3
    (b"set a 4294967296 4294967297 4294967297\r\nx\r\nset b 0 0 +3\r\nabc\r\n",
     [("set", [b"a", b"4294967296", b"4294967297", b"4294967297"], b"x"),
      ("set", [b"b", b"0", b"0", b"+3"], b"abc")]),
]

MEMCACHE_LIMITS = Limits(max_line=50, max_value=10, max_elements=3)

MEMCACHE = Samples(
    requests=[RequestSample(data, expected) for data, expected in MEMCACHE_FRAMED],
    request_tails=[b"g", b"get a", b"set k 0 0 5\r\nab", b"ms k 2\r\nx"],
    replies=[
        # a value block, a quiet request's hidden outcome (its implied reply), mn
        ReplySample(b"get a\r\nmg b v q\r\nmn\r\n", b"VALUE a 0 1\r\nx\r\nEND\r\nMN\r\n",
                    [(0, True), (1, True), (2, True)]),
        ReplySample(
            b"set a 0 0 1\r\nx\r\nadd a 0 0 1\r\nx\r\ncas a 0 0 1 5\r\nx\r\nappend z 0 0 1\r\nx\r\n"
            b"incr n 1\r\ndecr z 1\r\ntouch a 1\r\ndelete a\r\nflush_all\r\nverbosity 1\r\n"
            b"version\r\nstats\r\n",
            b"STORED\r\nNOT_STORED\r\nEXISTS\r\nNOT_FOUND\r\n18446744073709551615\r\nNOT_FOUND\r\n"
            b"TOUCHED\r\nDELETED\r\nOK\r\nOK\r\nVERSION 1.6.18\r\nSTAT pid 1\r\nSTAT x y\r\n"
            b"END\r\n",
            [(i, True) for i in range(12)]),
        ReplySample(b"get a b c\r\ngets a\r\ngat 1 a\r\nget z\r\n",
                    b"VALUE a 5 3\r\nabc\r\nVALUE c 0 0\r\n\r\nEND\r\n"
                    b"VALUE a 5 4 77\r\nab\r\n\r\nEND\r\nVALUE a 1 1\r\n\n\r\nEND\r\nEND\r\n",
                    [(0, True), (1, True), (2, True), (3, True)]),
        # quiet meta requests: shown outcomes, hidden ones (implied replies), settled by mn
        ReplySample(b"mg a v q\r\nmg b v q\r\nms c 1 q\r\nx\r\nms d 1 q ME\r\ny\r\nmd e q\r\n"
                    b"ma f q\r\nget g\r\nmn\r\n",
                    b"VA 1\r\nA\r\nNS\r\nNF\r\nEND\r\nMN\r\n",
                    [(i, True) for i in range(8)]),
        # the administrative commands: one line of any words, or a dump; a shutdown memcached
        # refuses; the dump's lines end with a bare LF
        ReplySample(b"cache_memlimit 100\r\nlru_crawler metadump all\r\nlru_crawler crawl 99\r\n"
                    b"lru_crawler metadump 99\r\nshutdown\r\nslabs reassign 1 2\r\n"
                    b"cache_memlimit 1 noreply\r\nversion\r\n",
                    b"OK\r\nkey=a exp=-1 la=1 cas=2 fetch=no cls=1 size=63\nkey=b exp=-1 la=1"
                    b" cas=3 fetch=no cls=1 size=63\nEND\r\nBADCLASS invalid class id\r\n"
                    b"BADCLASS invalid class id\r\nERROR: shutdown not enabled\r\n"
                    b"NOSPARE source class has no spare pages\r\nVERSION 1.6.18\r\n",
                    [(i, True) for i in range(8)]),
        # noreply requests get implied replies, the first before any byte from the server
        ReplySample(b"set a 0 0 1 noreply\r\nx\r\nget a\r\ndelete a noreply\r\n", b"END\r\n",
                    [(0, True), (1, True), (2, True)]),
    ],
    reply_tails=[(b"set a 0 0 1\r\nx\r\n", b"STO"), (b"get c\r\n", b"VALUE c 0 5\r\nab"),
                 (b"get c d\r\n", b"VALUE c 0 1\r\nx\r\nVAL"), (b"mg c v\r\n", b"VA 3\r\nx"),
                 (b"stats\r\n", b"STAT a 1\r\nSTAT b"), (b"mg c v q\r\n", b"V")],
    request_errors=[
        ErrorCase(b"get a\r\nset b 0 0 1\r\nx\r\n", b"bogus\r\nget c\r\n", b"ERROR\r\n",
                  "unknown command"),
        ErrorCase(b"get a\r\n", b"delete " + b"a" * 94 + b"\r\n", LINE_TOO_LONG,
                  "longer than 100", Limits(max_line=100)),
        # a multi-get line, which memcached reads however long, has max_bulk for its limit
        ErrorCase(b"get " + b"a" * 140 + b"\r\n", b"get " + b"a " * 80 + b"\r\n", LINE_TOO_LONG,
                  "longer than 150", Limits(max_line=100, max_bulk=150)),
        ErrorCase(b"set abcd 0 0 1\r\nx\r\n", b"set abcde 0 0 1\r\nx\r\n", BAD_FORMAT, "5 bytes",
                  Limits(max_key=4)),
        ErrorCase(b"set a 0 0 10\r\n0123456789\r\n", b"set a 0 0 2147483646\r\n", BAD_FORMAT,
                  "unreadable number"),
    ],
    reply_errors=[
        ErrorCase(b"END\r\n", b"VALUE x 0 1\r\nx\r\nEND\r\n", b"", "cannot answer set",
                  sent=b"get a\r\nset b 0 0 1\r\nx\r\n"),
        *(ErrorCase(b"", bad, b"", words, MEMCACHE_LIMITS, sent=sent) for sent, bad, words in [
            (b"version\r\n", b"VERSION " + b"1" * 60, "longer than 50"),
            (b"version\r\n", b"VERSION " + b"1" * 60 + b"\r\n", "longer than 50"),
            (b"get a\r\n", b"VALUE a 0 11\r\n", "11 bytes"),
            (b"mg a v\r\n", b"VA 11\r\n", "11 bytes"),
            (b"stats\r\n", b"STAT a 1\r\nSTAT b 1\r\nSTAT c 1\r\nSTAT d 1\r\nEND\r\n",
             "more than 3"),
        ]),
    ],
    tokens=[b"get a b\r\n", b"set k 0 0 3\r\nabc\r\n", b"mg k v q O1\r\n", b"ms k 2 T0\r\nhi\r\n",
            b"VALUE a 0 1\r\nx\r\nEND\r\n", b"STORED\r\n", b"VA 2 O1\r\nhi\r\n", b"MN\r\n",
            b"STAT a b\r\nEND\r\n", b"\r\n", b"\x80", b"99999999999", b" ", b"noreply"],
    fuzz_limits=Limits(max_line=200, max_key=20, max_value=100, max_elements=50, max_bulk=300),
    fuzz_sent=[b"get a b\r\n", b"gets a\r\n", b"set k 0 0 1\r\nx\r\n", b"mg k v q O1\r\n",
               b"mg k v q\r\n", b"ms k 1 q\r\nx\r\n", b"md k q k\r\n", b"ma k v\r\n", b"mn\r\n",
               b"me k\r\n", b"stats\r\n", b"incr a 1\r\n", b"version\r\n",
               b"delete a noreply\r\n"],
    # memcached's own words, or the binary protocol's error packet, or nothing (a request cut
    # by the end of the stream)
    request_refusal=lambda reply: reply == b"" or reply[:1] == b"\x81" or (
        reply.split(b" ", 1)[0].rstrip(b"\r\n") in (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")
        and reply.endswith(b"\r\n")),
    reply_refusal=lambda reply: reply == b"",
    bound=300 + 100 + 4,  # a (multi-get) line and a value block, with their line ends
    # A reply: at most max_elements lines of a stats reply held until its END.
    reply_bound=50 * (200 + 2),
)


# ---- FTP ----------------------------------------------------------------------------------------

FTP_GREETING = b"220-Welcome\r\n to the test\r\n220 (vsFTPd 3.0.3)\r\n"

FTP = Samples(
    requests=[RequestSample(
        b"USER anonymous\r\n"
        b"PASS guest@\n"  # bare LF, as vsftpd accepts
        b"\r\n\r\n"  # empty lines: vsftpd ignores them, they ride on the next request
        b"cwd  pub\r\n"  # lower case verb, argument with a leading space
        b"\xff\xf4\xff\xf2ABOR\r\n"  # Telnet IP + DM before ABOR
        b"SITE UMASK 022\r\n"
        b"RNFR a\rb\r\n"  # a CR inside the argument stays
        b"NOOP\r\n",
        [("USER", [b"anonymous"], None), ("PASS", [b"guest@"], None), ("CWD", [b" pub"], None),
         ("ABOR", [], None), ("SITE", [b"UMASK 022"], None), ("RNFR", [b"a\rb"], None),
         ("NOOP", [], None)])],
    request_tails=[b"STOR fi", b"NOOP\r", b"\r\n", b"\r\n\r\nLI"],
    replies=[
        ReplySample(
            b"USER anonymous\r\nPASS x\r\nFEAT\r\nLIST\r\nRETR x\r\nQUIT\r\n",
            FTP_GREETING
            + b"331 Please specify the password.\r\n"
            + b"230 Login successful.\r\n"
            + b"211-Features:\r\n EPRT\r\n211-EPSV\r\n211 End\r\n"  # an inner line with 211-
            + b"150 Here comes the directory listing.\r\n226 Directory send OK.\n"  # bare LF
            + b"550 Failed to open file.\r\n"
            + b"221 Goodbye.\r\n",
            [(None, True), (0, True), (1, True), (2, True), (3, False), (3, True), (4, True),
             (5, True)]),
        # an abort during a transfer pairs in order
        ReplySample(b"RETR big\r\n\xff\xf4\xffABOR\r\n",
                    FTP_GREETING + b"150 Opening\r\n426 Failure writing network stream.\r\n"
                    b"226 ABOR ok\r\n",
                    [(None, True), (0, False), (0, True), (1, True)]),
    ],
    reply_tails=[(b"NOOP\r\n", tail) for tail in (b"2", b"230-Lo", b"211-a\r\nb\r\n")],
    request_errors=[
        ErrorCase(b"NOOP\r\n", b"STOR 0123456789\r\n", FTP_LINE_TOO_LONG, "line too long",
                  Limits(max_line=16)),
        # a partial line at the limit fails at once: waiting could only make it longer
        ErrorCase(b"NOOP\r\n", b"x" * 16, FTP_LINE_TOO_LONG, "line too long",
                  Limits(max_line=16)),
    ],
    reply_errors=[
        ErrorCase(FTP_GREETING, b"abc def\r\n", b"421 malformed FTP reply line\r\n",
                  "malformed", sent=b"NOOP\r\n"),
        ErrorCase(b"", b"211-a\r\nb\r\nc\r\n", b"421 FTP reply has too many lines\r\n",
                  "too many lines", Limits(max_line=20, max_elements=3, max_bulk=40)),
        ErrorCase(b"", b"220 " + b"x" * 20, b"421 FTP reply line too long\r\n", "line too long",
                  Limits(max_line=20, max_elements=3, max_bulk=40)),
        ErrorCase(b"", b"211-" + b"x" * 14 + b"\r\n" + b"y" * 15 + b"\r\n211 z\r\n",
                  b"421 FTP reply too long\r\n", "reply too long",
                  Limits(max_line=20, max_bulk=40)),
    ],
    tokens=[b"220", b"-", b" ", b"\r", b"\n", b"\xff", b"211", b"x", b"NOOP", b"USER a",
            b"\r\n"],
    fuzz_limits=Limits(max_line=32, max_elements=4, max_bulk=64),
    fuzz_sent=[b"NOOP\r\n", b"RETR x\r\n", b"QUIT\r\n"],
    request_refusal=lambda reply: reply[:1] in (b"4", b"5") and reply.endswith(b"\r\n"),
    reply_refusal=lambda reply: reply.startswith(b"421 ") and reply.endswith(b"\r\n"),
    bound=64,  # a reply's bytes (max_bulk); a request line is shorter (max_line)
)

SAMPLES: dict[str, Samples] = {"redis": REDIS, "memcache": MEMCACHE, "ftp": FTP}
