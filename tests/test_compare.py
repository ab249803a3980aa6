"""Reply comparison under the rules an operator writes, and the divergence log."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from twinproxy.compare import Comparator, Rules
from twinproxy.config import load_config
from twinproxy.divergences import DivergenceLog, read_log
from twinproxy.protocols.redis import CODEC, encode_command

CONFIG = """
[proxy]
listen = "127.0.0.1:16380"
protocol = "redis"
control = "/tmp/twinproxy-compare-test.sock"
start = "old"
[versions.old]
address = "127.0.0.1:16379"
[versions.new]
address = "127.0.0.1:16378"
"""


def rules(tmp_path: Path, text: str, source: str = "old", target: str = "new") -> Rules:
    path = tmp_path / "c.toml"
    path.write_text(CONFIG + text)
    return Rules(load_config(path).rules, source, target)


def request(*words: str | bytes):
    return CODEC.request_reader().receive(encode_command(*words))[0]


def reply(raw: bytes, req):
    replies = CODEC.reply_reader()
    replies.expect(req)
    [got] = replies.receive(raw)
    return got


def compare(r: Rules, words: tuple, leader: bytes, follower: bytes):
    req = request(*words)
    return Comparator(CODEC, r).compare(req, reply(leader, req), reply(follower, req))


def test_same_bytes_and_resp2_resp3_spellings_are_equal(tmp_path) -> None:
    r = rules(tmp_path, "")
    assert compare(r, ("GET", "k"), b"$1\r\nv\r\n", b"$1\r\nv\r\n").equal
    # HGETALL in RESP2 (flat array) and RESP3 (map); ZSCORE as bulk text and as a double.
    resp2, resp3 = b"*2\r\n$1\r\na\r\n$1\r\n1\r\n", b"%1\r\n$1\r\na\r\n$1\r\n1\r\n"
    assert compare(r, ("HGETALL", "h"), resp2, resp3).equal
    assert compare(r, ("ZSCORE", "z", "m"), b"$3\r\n1.5\r\n", b",1.5\r\n").equal


def test_an_unexplained_difference_is_unexpected(tmp_path) -> None:
    v = compare(rules(tmp_path, ""), ("GET", "k"), b"$1\r\nv\r\n", b"$1\r\nw\r\n")
    assert v.unexpected and v.rule is None


def test_ignore(tmp_path) -> None:
    r = rules(tmp_path, '[[rules]]\nname = "info"\ncommand = "INFO"\nignore = true\n')
    v = compare(r, ("INFO",), b"$3\r\nabc\r\n", b"$3\r\nxyz\r\n")
    assert v.expected and v.rule == "info"
    assert compare(r, ("GET", "k"), b"$1\r\nv\r\n", b"$1\r\nw\r\n").unexpected


def test_normalize_applies_to_every_string_of_both_replies(tmp_path) -> None:
    r = rules(tmp_path, """
[[rules]]
name = "version"
command = "*"
args = '^server$'
normalize = [{ pattern = 'redis_version:[0-9.]+', replace = "redis_version:X" }]
""")
    v = compare(r, ("INFO", "server"), b"$20\r\nredis_version:6.2.14\r\n",
                b"$20\r\nredis_version:7.0.15\r\n")
    assert v.expected and v.rule == "version"
    # The args pattern decides: not for another section.
    assert compare(r, ("INFO", "memory"), b"$20\r\nredis_version:6.2.14\r\n",
                   b"$20\r\nredis_version:7.0.15\r\n").unexpected


def test_tolerance_on_numbers(tmp_path) -> None:
    r = rules(tmp_path, '[[rules]]\nname = "ttl"\ncommand = "TTL"\ntolerance = 2\n')
    assert compare(r, ("TTL", "k"), b":100\r\n", b":99\r\n").expected
    assert compare(r, ("TTL", "k"), b":100\r\n", b":90\r\n").unexpected


def test_map_error_pairs_error_texts(tmp_path) -> None:
    r = rules(tmp_path, """
[[rules]]
name = "wording"
command = "*"
map_error = [{ leader = "^ERR unknown command `", follower = "^ERR unknown command '" }]
""")
    v = compare(r, ("FOO",), b"-ERR unknown command `FOO`\r\n", b"-ERR unknown command 'FOO'\r\n")
    assert v.expected and v.rule == "wording"
    # An error against a value is never mapped.
    assert compare(r, ("FOO",), b"-ERR unknown command `FOO`\r\n", b"+OK\r\n").unexpected


def test_rules_apply_only_to_their_update(tmp_path) -> None:
    text = ('[[rules]]\nname = "one-way"\ncommand = "INFO"\nfrom = "old"\nto = "new"\n'
            "ignore = true\n")
    assert len(rules(tmp_path, text, "old", "new")) == 1
    assert len(rules(tmp_path, text, "new", "old")) == 0


def test_rewrite_gives_the_follower_other_words(tmp_path) -> None:
    r = rules(tmp_path, """
[[rules]]
name = "typed-put"
command = "SET"
rewrite = ["SET", "$1", "$2", "KEEPTTL"]
""")
    assert r.rewrite(request("SET", "k", "v")) == [b"SET", b"k", b"v", b"KEEPTTL"]
    assert r.rewrite(request("GET", "k")) is None


def test_divergence_log_in_memory_and_msgpack(tmp_path) -> None:
    path = tmp_path / "d.msgpack"
    log = DivergenceLog(str(path), keep=2)
    r = rules(tmp_path, "")
    for value in (b"a", b"b", b"c"):
        req = request("GET", "k")
        verdict = Comparator(CODEC, r).compare(req, reply(b"$1\r\nv\r\n", req),
                                               reply(b"$1\r\n" + value + b"\r\n", req))
        log.add(1, "127.0.0.1:5000", req, b"$1\r\nv\r\n", b"$1\r\n" + value + b"\r\n", verdict)
    log.close()
    recent = log.since(0)
    assert [d.id for d in recent] == [2, 3]  # the last two kept in memory
    assert log.since(2) == recent[1:]
    on_disk = read_log(str(path))
    assert [d["id"] for d in on_disk] == [1, 2, 3]  # all of them in the file
    assert on_disk[0]["request"] == [b"GET", b"k"]
    assert on_disk[2]["follower"] == b"$1\r\nc\r\n" and not on_disk[2]["expected"]
    with open(path, "rb") as f:
        assert len(list(msgpack.Unpacker(f, raw=False))) == 3


@pytest.mark.parametrize("bad", [
    ('normalize = [{ pattern = "(", replace = "x" }]', "rules[0].normalize[0].pattern"),
    ("tolerance = -1", "rules[0].tolerance"),
    ('rewrite = ["SET", "$x"]', "rules[0].rewrite"),
])
def test_a_bad_rule_is_a_config_error_naming_it(tmp_path, bad) -> None:
    from twinproxy.config import ConfigError

    action, key = bad
    path = tmp_path / "c.toml"
    path.write_text(CONFIG + f'[[rules]]\nname = "broken"\ncommand = "SET"\n{action}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert key in str(info.value) and 'rule "broken"' in str(info.value)


def test_expected_divergences_are_kept_apart_and_counted_by_rule(tmp_path) -> None:
    """A stream of explained divergences (every INFO differs) must not push an unexpected one
    out of memory; each kind keeps its last ``keep``, and ``since`` gives both in id order."""
    log = DivergenceLog(None, keep=3)
    r = rules(tmp_path, '[[rules]]\nname = "info"\ncommand = "INFO"\nignore = true\n')
    get, info = request("GET", "k"), request("INFO")
    bad = Comparator(CODEC, r).compare(get, reply(b"$1\r\nv\r\n", get),
                                       reply(b"$1\r\nw\r\n", get))
    log.add(1, "c", get, b"$1\r\nv\r\n", b"$1\r\nw\r\n", bad)
    for i in range(10):
        explained = Comparator(CODEC, r).compare(info, reply(b"$1\r\na\r\n", info),
                                                 reply(b"$1\r\n%d\r\n" % i, info))
        assert explained.expected and explained.rule == "info"
        log.add(1, "c", info, b"$1\r\na\r\n", b"$1\r\n%d\r\n" % i, explained)
    kept = log.since(0)
    assert [d.id for d in kept] == [1, 9, 10, 11]
    assert not kept[0].expected and all(d.expected and d.rule == "info" for d in kept[1:])
    assert log.since(9, limit=1) == [kept[2]]
    assert log.by_rule == {"info": 10}


def test_ftp_rules_normalize_reply_text() -> None:
    """FTP replies compare as text lines (str): the shipped configs/ftp.toml rules must reach
    them, so that two vsftpd instances' PASV/EPSV replies, which name each one's own data port,
    agree (they did not: normalize only rewrote bytes)."""
    ftp = ftp_comparison("ftp.toml")

    v = ftp(b"PASV\r\n", b"227 Entering Passive Mode (127,0,0,1,195,80).\r\n",
            b"227 Entering Passive Mode (127,0,0,1,31,7).\r\n")
    assert v.expected and v.rule == "pasv-port"
    v = ftp(b"EPSV\r\n", b"229 Entering Extended Passive Mode (|||50000|)\r\n",
            b"229 Entering Extended Passive Mode (|||50001|)\r\n")
    assert v.expected and v.rule == "epsv-port"
    assert ftp(b"PASV\r\n", b"227 Entering Passive Mode (127,0,0,1,195,80).\r\n",
               b"500 PASV refused\r\n").unexpected
    assert ftp(b"PWD\r\n", b'257 "/a"\r\n', b'257 "/b"\r\n').unexpected


def test_migration_rules_map_vsftpd_to_pureftpd_replies() -> None:
    """configs/ftp-migrate.toml: a reply's words may differ, even its number of lines (a line a
    rule empties is left out), but never its code nor what it names (PWD's directory)."""
    ftp = ftp_comparison("ftp-migrate.toml")

    assert ftp(b"STOR a\r\n", b"226 Transfer complete.\r\n",
               b"226-File successfully transferred\r\n226 0.001 seconds (measured here), "
               b"843.76 Mbytes per second\r\n").expected
    assert ftp(b"DELE a\r\n", b"550 Permission denied.\r\n",
               b"550 Anonymous users can not delete files\r\n").expected
    assert ftp(b"STOR a\r\n", b"226 Transfer complete.\r\n", b"451 Disk full\r\n").unexpected
    v = ftp(b"STOR a\r\n", b"553 Could not create file.\r\n",
            b"550 Anonymous users may not overwrite existing files\r\n")
    assert v.expected and v.rule == "overwrite-refused"
    assert ftp(b"STOR a\r\n", b"553 Could not create file.\r\n",
               b"550 Permission denied.\r\n").unexpected
    assert ftp(b"PWD\r\n", b'257 "/pub" is the current directory\r\n',
               b'257 "/pub" is your current location\r\n').expected
    assert ftp(b"PWD\r\n", b'257 "/pub" is the current directory\r\n',
               b'257 "/" is your current location\r\n').unexpected


def ftp_comparison(config: str):
    """``ftp(line, leader, follower)``: the verdict on two FTP replies to the request ``line``
    under the rules of the shipped ``configs/<config>``."""
    from twinproxy.protocols.ftp import CODEC as FTP

    shipped = Rules(load_config(Path(__file__).parent.parent / "configs" / config).rules,
                    "v1", "v2")

    def ftp(line: bytes, leader: bytes, follower: bytes):
        (req,) = FTP.request_reader().receive(line)
        pair = []
        for raw in (leader, follower):
            replies = FTP.reply_reader(greeted=True)
            replies.expect(req)
            pair += replies.receive(raw)
        return Comparator(FTP, shipped).compare(req, *pair)

    return ftp
