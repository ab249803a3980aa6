"""Record what a real memcached 1.6 answers to every family of commands the memcache codec frames.

    python tests/golden/record_memcache.py      # rewrites tests/golden/memcache/scenarios.json

Each scenario is sent over its own raw socket to one fresh memcached (in this order, so CAS ids
come out the same on every run), and everything the server sends back is kept, until it has been
quiet for a moment or closed the connection. The requests and the raw replies are stored as JSON
strings holding the bytes one to one (latin-1), so the file stays readable. ``kind`` says what the
codec must do: "ok" (frame it all), "refuse" (the request reader raises; the server's first reply
line is the error memcached itself gives), "binary" (a binary-protocol client).
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "golden" / "memcache" / "scenarios.json"

LONG_KEY = b"k" * 251
BIG = 5000  # a value larger than a line


def flags(n: int) -> bytes:
    return b" ".join(b"O%d" % i for i in range(n))


# (name, kind, requests)
SCENARIOS: list[tuple[str, str, bytes]] = [
    ("storage", "ok",
     b"set s1 5 0 3\r\nabc\r\nget s1\r\nadd s1 0 0 1\r\nx\r\nadd s2 0 0 1\r\ny\r\n"
     b"replace s3 0 0 1\r\nz\r\nreplace s2 7 0 2\r\nyy\r\nappend s1 0 0 2\r\nde\r\n"
     b"prepend s1 0 0 2\r\nzz\r\nappend s9 0 0 1\r\nx\r\nprepend s9 0 0 1\r\nx\r\n"
     b"set s4 0 0 0\r\n\r\nget s1 s2 s3 s1 s4\r\n"),
    ("cas", "ok",
     b"set c1 0 0 1\r\nx\r\ngets c1\r\ncas c1 0 0 1 999999\r\ny\r\ncas c9 0 0 1 1\r\ny\r\n"
     b"gets c1 c9\r\n"),
    ("numbers", "ok",
     b"set n1 0 0 2\r\n10\r\nincr n1 5\r\ndecr n1 3\r\ndecr n1 100\r\nincr n9 1\r\n"
     b"set n2 0 0 20\r\n18446744073709551615\r\nincr n2 1\r\nset n3 0 0 3\r\nabc\r\nincr n3 1\r\n"
     b"incr n1 x\r\nincr n1 1 2\r\n"),
    ("touch_delete", "ok",
     b"set t1 0 0 1\r\nx\r\ntouch t1 100\r\ntouch t9 100\r\ntouch t1 x\r\ndelete t1\r\n"
     b"delete t1\r\nset t2 0 0 1\r\nx\r\ndelete t2 0\r\ndelete t2 5\r\ndelete noreply\r\n"),
    ("gat", "ok",
     b"set g1 3 0 2\r\nhi\r\ngat 100 g1 g9 g1\r\ngats 100 g1\r\ngat 100\r\ngat x g1\r\n"),
    ("admin", "ok",
     b"version\r\nverbosity 1\r\nverbosity 0 noreply\r\nverbosity x\r\nflush_all 0\r\n"
     b"set a1 0 0 1\r\nx\r\nflush_all\r\nget a1\r\nflush_all noreply\r\nflush_all x\r\n"
     b"version extra\r\n"),
    ("noreply", "ok",
     b"set r1 0 0 1 noreply\r\na\r\nadd r1 0 0 1 noreply\r\nb\r\nreplace r1 0 0 1 noreply\r\nc\r\n"
     b"append r1 0 0 1 noreply\r\nd\r\nprepend r1 0 0 1 noreply\r\ne\r\n"
     b"cas r1 0 0 1 1 noreply\r\nf\r\nset r2 0 0 1\r\n7\r\nincr r2 3 noreply\r\n"
     b"decr r2 1 noreply\r\nincr r1 1 noreply\r\ntouch r1 10 noreply\r\ndelete r9 noreply\r\n"
     b"incr r2 noreply\r\ndecr r2 noreply\r\ntouch r1 noreply\r\n"
     b"get r1 r2\r\ndelete r1 0 noreply\r\nget r1\r\n"),
    ("stats", "ok",
     b"stats\r\nstats items\r\nstats slabs\r\nstats sizes\r\nstats settings\r\nstats conns\r\n"),
    ("stats_other", "ok",
     b"stats reset\r\nstats detail on\r\nstats detail dump\r\nstats detail off\r\nstats detail\r\n"
     b"set sc 0 0 1\r\nx\r\nstats cachedump 1 100\r\nstats cachedump\r\nstats bogus\r\n"),
    ("meta_set_get", "ok",
     b"ms m1 3\r\nabc\r\nmg m1\r\nmg m1 v\r\nmg m1 s v f t k O42\r\nmg m9 v\r\nmg m9 v k O7\r\n"
     b"ms m2 2 T0 F9 k O1\r\nhi\r\nmg m2 v f\r\nms m1 1 ME\r\nx\r\nms m9 1 MR\r\nx\r\n"
     b"ms m1 1 MA\r\nd\r\nms m1 1 MP\r\nz\r\nmg m1 v\r\nms m1 1 C1\r\nx\r\nms m1 1 I\r\nx\r\n"
     b"mn\r\n"),
    ("meta_flags", "ok",
     b"ms f1 1\r\nx\r\nmg f1 v h l\r\nmg f1 v h l\r\nmg f1 T30 v\r\nmg f1 t\r\n"
     b"mg f9 N30 v\r\nmg f9 v\r\nmg f1 !\r\nmg f1 v v\r\nmg f1 O" + b"o" * 40 + b"\r\n"
     b"ms f1 1 S\r\nx\r\nms f1 1 Mz\r\nx\r\nmg f1 " + flags(18) + b"\r\nmn\r\n"),
    ("meta_delete_arith", "ok",
     b"ms d1 1\r\nx\r\nmd d1\r\nmd d1\r\nmd d9 O5 k\r\nms d2 1\r\nx\r\nmd d2 I\r\nmg d2 v\r\n"
     b"ms a1 2\r\n10\r\nma a1\r\nma a1 v\r\nma a1 MD D4 v\r\nma a9\r\nma a9 N0 J13 v\r\n"
     b"ma d1 v\r\nms a2 1\r\nx\r\nma a2\r\nmn\r\n"),
    ("meta_debug", "ok",
     b"ms e1 2\r\nhi\r\nme e1\r\nme e9\r\nme ZTE= b\r\nmn x\r\n"),
    ("quiet", "ok",
     b"ms q1 1 q\r\na\r\nms q1 1 q ME\r\nb\r\nms q9 1 q MR\r\nc\r\nms q1 1 q C1\r\nd\r\n"
     b"mg q1 v q\r\nmg q9 v q\r\nmg q1 q\r\nmg q1 k q\r\nmd q9 q\r\nmd q1 q\r\nmd q1 q\r\n"
     b"ms q2 1\r\n5\r\nma q2 q\r\nma q2 v q\r\nma q9 q\r\nms q3 1 q\r\nx\r\nma q3 q\r\nmn\r\n"),
    ("quiet_echo", "ok",
     b"ms w1 1 q O1 k\r\nx\r\nmg w1 v q k O2\r\nmg w9 v q k O3\r\nmg w1 q O4\r\nmd w9 q O5\r\n"
     b"mg w9 v q O6\r\nmg w1 v O7\r\nmg w9 v q k\r\nmg w1 v k\r\nmn\r\n"),
    ("quiet_then_text", "ok",
     b"ms x1 1\r\nx\r\nmg x9 v q\r\nget x1\r\nmg x9 v q\r\nmg x9 v q\r\nset x2 0 0 1\r\ny\r\n"
     b"mg x1 v q\r\nmn\r\nms x1 1 q ME\r\nz\r\nmn\r\n"),
    ("base64", "ok",
     b"ms YjE= 2 b\r\nhi\r\nmg YjE= b k v\r\nget b1\r\nmd YjE= b q\r\nmg YjE= b v\r\n"
     b"ms a 1 b\r\nx\r\nms YjI= 1 b k q\r\nx\r\nmg YjI= b k v q\r\nmn\r\n"),
    ("line_ends", "ok",
     b"set l1 0 0 1\nx\r\nget l1\nget  l1\r\n  get l1 \r\nmg l1 v\nmn\n"),
    ("big_value", "ok",
     b"set big 0 0 %d\r\n" % BIG + b"v" * BIG + b"\r\nget big\r\nmg big s v\r\nmn\r\n"),
    ("quit", "ok", b"version\r\nquit\r\nversion\r\n"),
    # The request reader refuses these: the first reply line is what memcached says.
    ("unknown_command", "refuse", b"foo bar\r\n"),
    ("empty_line", "refuse", b"\r\n"),
    ("upper_case", "refuse", b"GET a\r\n"),
    ("get_no_key", "refuse", b"get\r\n"),
    ("set_short", "refuse", b"set a 0 0\r\nx\r\n"),
    ("set_bad_flags", "refuse", b"set a x 0 1\r\nx\r\n"),
    ("set_negative_size", "refuse", b"set a 0 0 -1\r\nx\r\n"),
    ("cas_bad_unique", "refuse", b"cas a 0 0 1 -5\r\nx\r\n"),
    ("bad_data_chunk", "refuse", b"set a 0 0 1\r\nxyz\r\n"),
    ("long_key", "refuse", b"get a " + LONG_KEY + b"\r\n"),
    ("long_key_set", "refuse", b"set " + LONG_KEY + b" 0 0 1\r\nx\r\n"),
    ("incr_short", "refuse", b"incr a\r\n"),
    ("mg_no_key", "refuse", b"mg\r\n"),
    ("ms_no_size", "refuse", b"ms a\r\n"),
    ("ms_bad_size", "refuse", b"ms a x\r\nx\r\n"),
    ("ms_many_flags", "refuse", b"ms a 1 " + flags(17) + b"\r\nx\r\n"),
    ("me_no_key", "refuse", b"me\r\n"),
    ("nul_in_line", "refuse", b"set a\0 0 0 1\r\nx\r\n"),
    ("binary", "binary",
     bytes([0x80, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xDE, 0xAD, 0xBE, 0xEF]) + bytes(8)),
]


# Run on a memcached with 1 KiB items (-I 1k, which needs a smaller slab chunk), so that a value
# past the limit stays small here; the codec is given the same limit (``max_value``) for them.
SMALL_ITEMS: list[tuple[str, str, bytes]] = [
    ("too_large", "refuse", b"set a 0 0 2000\r\n" + b"x" * 2000 + b"\r\n"),
    ("too_large_meta", "refuse", b"ms a 2000\r\n" + b"x" * 2000 + b"\r\n"),
]
SMALL_ITEM_LIMIT = 1024
SMALL_ITEM_ARGS = ["-I", "1k", "-o", "slab_chunk_max=512"]


def talk(port: int, data: bytes, idle: float = 0.3) -> bytes:
    """Send ``data``; everything the server sends until it is quiet for ``idle`` s or closes."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        s.settimeout(idle)
        out = bytearray()
        while True:
            try:
                chunk = s.recv(1 << 20)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)


def record(port: int, scenarios: list[tuple[str, str, bytes]], **extra: object) -> list[dict]:
    return [{"name": name, "kind": kind, "requests": requests.decode("latin-1"),
             "replies": talk(port, requests).decode("latin-1"), **extra}
            for name, kind, requests in scenarios]


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from tests.servers import memcached_server

    with memcached_server() as server:
        version = talk(server.port, b"version\r\n").decode().split()[1]
        scenarios = record(server.port, SCENARIOS)
    with memcached_server(*SMALL_ITEM_ARGS) as server:
        scenarios += record(server.port, SMALL_ITEMS, max_value=SMALL_ITEM_LIMIT,
                            server_args=SMALL_ITEM_ARGS)
    data = {
        "about": __doc__.split("\n\n")[0],
        "memcached": version,
        "server": "tests.servers.memcached_server(): -U 0 -m 64, default -I 1m",
        "scenarios": scenarios,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(data, indent=1, ensure_ascii=True) + "\n")
    print(f"memcached {version}: {len(scenarios)} scenarios -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
