"""Golden tests: the Redis codec on what real redis-server 6.2 and 7.0 sent.

The recordings (``tests/golden/redis/``, made by ``tests/golden/record_redis.py``) hold each
session's requests, the bytes each connection got, where hiredis cut them into replies, hiredis's
values, and which request each reply answered (known from when it came). Offline, the readers
must cut, parse and pair the same bytes the same way, pipelined, whole and byte by byte; the
command table built from each version's recorded ``COMMAND`` reply must give the keys its
``COMMAND GETKEYS`` gave; the request reader must treat malformed input as the server did. Live,
the same sessions are replayed through real servers and paired the same way.
"""

from __future__ import annotations

import json
import re
import socket
import time
from functools import cache
from pathlib import Path
from typing import Any

import hiredis
import pytest

from tests import servers
from tests.protocols.redis_support import requests_of
from twinproxy.protocols.messages import Limits, Reply, Request
from twinproxy.protocols.redis import (
    CODEC,
    NO_REPLY,
    Attributed,
    BigNumber,
    CommandTable,
    Double,
    Map,
    Push,
    RespError,
    RespSet,
    SimpleString,
    Verbatim,
    canonical,
)

GOLDEN = Path(__file__).parents[1] / "golden" / "redis"
VERSIONS = ["6.2", "7.0"]


@cache
def load(version: str) -> dict:
    with open(GOLDEN / f"{version}.json") as f:
        return json.load(f)


def frame(request: str) -> Request:
    [req] = CODEC.request_reader().receive(request.encode("latin-1"))
    return req


def project(value: Any) -> Any:
    """A reply value as hiredis sees it, in the recordings' JSON form."""
    t = type(value)
    if t is Attributed:
        return {"attribute": project(list(value.attributes)), "value": project(value.value)}
    if t in (bytes, SimpleString, Verbatim):
        return bytes(value).decode("latin-1")
    if t is BigNumber:
        return str(int(value))
    if t is Double:
        return {"double": repr(float(value))}
    if t is RespError:
        return {"error": value.message.decode("latin-1")}
    if t is Push:
        return {"push": [project(v) for v in value]}
    if t is Map:
        return {"map": [[project(k), project(v)] for k, v in value.items()]}
    if t in (list, RespSet):
        return [project(v) for v in value]
    return value


def label(reply: Reply, indices: dict[int, int]) -> Any:
    if reply.push:
        return "push"
    if reply.request is None:
        return "unpaired"
    return indices[id(reply.request)]


def sessions() -> list[tuple[str, str]]:
    return [(v, name) for v in VERSIONS for name in load(v)["sessions"]]


def connection_scripts(steps: list[dict]) -> dict[str, tuple[list, list, bytes]]:
    """Per connection: its (step index, request), the replies it got, and their bytes."""
    out: dict[str, tuple[list, list, bytes]] = {}
    for index, step in enumerate(steps):
        out.setdefault(step["conn"], ([], [], b""))
        out[step["conn"]][0].append((index, frame(step["request"])))
    for step in steps:
        for reply in step["replies"]:
            reqs, replies, stream = out.setdefault(reply["conn"], ([], [], b""))
            replies.append(reply)
            out[reply["conn"]] = (reqs, replies, stream + reply["raw"].encode("latin-1"))
    return out


@pytest.mark.parametrize(("version", "name"), sessions())
def test_recorded_session_cut_parsed_and_paired(version: str, name: str) -> None:
    steps = load(version)["sessions"][name]
    for conn, (reqs, expected, stream) in connection_scripts(steps).items():
        for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
            reader = CODEC.reply_reader()
            indices = {id(req): index for index, req in reqs}
            for _, req in reqs:
                reader.expect(req)
            got: list[Reply] = []
            for chunk in chunks:
                got += reader.receive(chunk)
            real = [r for r in got if r.value is not NO_REPLY]
            silent = [indices[id(r.request)] for r in got if r.value is NO_REPLY]
            where = f"{version} {name} conn {conn}"
            assert [r.raw.decode("latin-1") for r in real] == [e["raw"] for e in expected], where
            for reply, exp in zip(real, expected, strict=True):
                assert project(reply.value) == exp["value"], (where, reply.raw)
                assert label(reply, indices) == exp["answers"], (where, reply.raw)
                assert reply.error == (type(reply.value) is RespError)
            answered = {e["answers"] for e in expected}
            assert set(silent) == {i for i, _ in reqs if i not in answered}, where
            assert reader.pending == 0 and reader.unpaired == 0, where


def _default_state(requests: list[Request]) -> list[bool]:
    """Whether each request ran on a connection in its default state: not after CLIENT REPLY
    OFF (until ON or RESET), not right after CLIENT REPLY SKIP, not queued in MULTI."""
    out = []
    off = skip = in_multi = False
    for req in requests:
        out.append(not (off or skip or in_multi))
        skip = False
        mode = req.args[1].upper() if req.name == "CLIENT" and len(req.args) == 2 else b""
        if req.args[:1] and req.args[0].upper() == b"REPLY" and mode in (b"OFF", b"SKIP", b"ON"):
            off, skip = mode == b"OFF", mode == b"SKIP"
        elif req.name == "MULTI":
            in_multi = True
        elif req.name in ("EXEC", "DISCARD", "RESET"):
            in_multi = off = False
    return out


@pytest.mark.parametrize(("version", "name"), sessions())
def test_reply_counts_are_what_the_server_sent(version: str, name: str) -> None:
    """``Request.replies`` against the replies each request got from the real server."""
    steps = load(version)["sessions"][name]
    got = [0] * len(steps)
    for step in steps:
        for reply in step["replies"]:
            if reply["answers"] not in ("push", "unpaired"):
                got[reply["answers"]] += 1
    for conn, (reqs, _, _) in connection_scripts(steps).items():
        plain = _default_state([req for _, req in reqs])
        for (index, req), default in zip(reqs, plain, strict=True):
            expected = CODEC.describe(req).replies
            where = (version, name, conn, index, req.raw)
            if expected is None:  # UNSUBSCRIBE of everything: one per subscription, or one
                assert req.name.endswith("UNSUBSCRIBE") and not req.args and got[index] >= 1
            elif default:
                assert got[index] == expected, where


def test_recordings_cover_the_connection_states() -> None:
    for version in VERSIONS:
        all_replies = [r for s in load(version)["sessions"].values() for st in s
                       for r in st["replies"]]
        first = {r["raw"][:1] for r in all_replies}
        assert {"+", "-", ":", "$", "*", "%", "~", ">", "|", ",", "#", "(", "=", "_"} <= first
        assert sum(r["answers"] == "push" for r in all_replies) >= 10


# -- the command table --------------------------------------------------------------------------


@cache
def server_table(version: str) -> CommandTable:
    value, _ = parse((GOLDEN / f"{version}.command.resp").read_bytes())
    return CommandTable.from_command_reply(value)


def parse(data: bytes) -> tuple[Any, bytes]:
    reader = CODEC.reply_reader()
    reader.expect(frame("*1\r\n$7\r\nCOMMAND\r\n"))
    [reply] = [r for r in reader.receive(data) if not r.push]
    return reply.value, reply.raw


@cache
def hiredis_commands(version: str) -> dict[str, list]:
    """The COMMAND reply as hiredis parses it: name (and parent|sub) -> entry."""
    reader = hiredis.Reader()
    reader.feed((GOLDEN / f"{version}.command.resp").read_bytes())
    out = {}
    for entry in reader.gets():
        out[entry[0].decode().upper()] = entry
        for sub in entry[9] if len(entry) > 9 else ():
            out[sub[0].decode().upper()] = sub
    return out


def getkeys_cases() -> list[tuple[str, str, Any]]:
    return [(v, text, result) for v in VERSIONS for text, result in load(v)["getkeys"].items()]


@pytest.mark.parametrize(("version", "text", "result"), getkeys_cases())
def test_keys_and_flags_match_the_servers(version: str, text: str, result: Any) -> None:
    args = [b"" if a == '""' else a.encode() for a in text.split(" ")]
    req = CODEC.request_reader().receive(b"".join(
        [b"*%d\r\n" % len(args)] + [b"$%d\r\n%s\r\n" % (len(a), a) for a in args]))[0]
    CODEC.describe(req, server_table(version))
    expected = sorted(k.encode() for k in result) if isinstance(result, list) else []
    assert sorted(req.keys) == expected  # 6.2 and 7.0 order some keys differently
    entries = hiredis_commands(version)
    name = req.name
    entry = entries.get(f"{name}|{req.args[0].decode().upper()}" if req.args else name)
    entry = entry or entries.get(name)
    if entry is None:
        assert req.is_global and req.write  # unknown to this server: a barrier
    elif name in ("EVAL", "EVALSHA", "FCALL", "EVAL_RO", "EVALSHA_RO", "FCALL_RO"):
        assert req.write == (not name.endswith("_RO"))
    else:
        assert req.write == (b"write" in entry[2]), text


def test_both_table_shapes_parse_and_subcommands_resolve() -> None:
    six, seven = server_table("6.2"), server_table("7.0")
    assert len(six) == len(hiredis_commands("6.2")) and "GET" in six and "LMPOP" not in six
    assert len(seven) == len(hiredis_commands("7.0")) - sum(
        "|" in name for name in hiredis_commands("7.0"))
    assert seven.lookup("CLIENT", [b"setname", b"x"]).name == "CLIENT|SETNAME"
    assert seven.lookup("CLIENT", [b"nosuch"]).name == "CLIENT"
    assert seven.lookup("XREAD").key_specs[0].keyword == b"STREAMS"
    assert six.lookup("CLIENT", [b"setname"]).name == "CLIENT"


@pytest.mark.parametrize("version", VERSIONS)
def test_a_resp3_command_reply_gives_the_same_table(version: str) -> None:
    [step] = [s for s in load(version)["sessions"]["resp3_types"]
              if "COMMAND" in s["request"] and "INFO" in s["request"]]
    value, _ = parse(step["replies"][0]["raw"].encode("latin-1"))
    assert type(value[0][2]) is RespSet  # flags are a RESP3 set
    table = CommandTable.from_command_reply(value)
    for name in ("GET", "SET", "CLIENT", "XREAD"):
        assert table.commands[name] == server_table(version).commands[name]


# -- malformed requests -------------------------------------------------------------------------

PROTOCOL_ERROR = re.compile(rb"-ERR Protocol error: [^\r]*\r\n")


def protocol_cases() -> list[tuple[str, int]]:
    return [(v, i) for v in VERSIONS for i in range(len(load(v)["protocol_errors"]))]


@pytest.mark.parametrize(("version", "index"), protocol_cases())
def test_malformed_requests_as_the_server_treats_them(version: str, index: int) -> None:
    case = load(version)["protocol_errors"][index]
    data = b"".join(t.encode("latin-1") * n for t, n in case["input"])
    output = case["output"].encode("latin-1")
    reader = CODEC.reply_reader()
    for _ in range(output.count(b"\r\n")):
        reader.expect(frame("*1\r\n$4\r\nPING\r\n"))
    answered = len([r for r in reader.receive(output) if r.request is not None])
    reqs, result = requests_of(data)
    if data == b"*2000000\r\n":  # 6.2 refuses more than 1M elements; our limit is 7.0's,
        assert result == ("buffered", len(data))  # INT_MAX: 6.2 answers for its own limit
        return
    error = PROTOCOL_ERROR.search(output)
    if error:
        assert case["closed"]
        assert result == ("error", error.group())
        assert len(reqs) == answered - 1
    else:
        assert result[0] == "buffered" and len(reqs) == answered


# -- live -----------------------------------------------------------------------------------------


def replay(port: int, steps: list[dict]) -> dict[int, list]:
    """Run ``steps`` against a live server: per step, the labels of the replies it brought."""
    conns: dict[str, socket.socket] = {}
    readers = {}
    indices: dict[str, dict[int, int]] = {}
    out: dict[int, list] = {}
    for index, step in enumerate(steps):
        conn = step["conn"]
        if conn not in conns:
            conns[conn] = socket.create_connection(("127.0.0.1", port))
            conns[conn].setblocking(False)
            readers[conn] = CODEC.reply_reader()
            indices[conn] = {}
        req = frame(step["request"])
        indices[conn][id(req)] = index
        readers[conn].expect(req)
        conns[conn].sendall(req.raw)
        got = []
        blocks = not step["replies"] or not any(r["conn"] == conn for r in step["replies"])
        deadline = time.monotonic() + (0.6 if blocks else 5)
        quiet_since = None
        while time.monotonic() < deadline:
            for name, s in conns.items():
                try:
                    data = s.recv(1 << 20)
                except BlockingIOError:
                    continue
                if data:  # b"": closed (after QUIT)
                    got += [(name, reply) for reply in readers[name].receive(data)]
                    quiet_since = None
            done = readers[conn].pending == 0 or blocks
            expected = len(step["replies"])
            if done and len([g for g in got if g[1].value is not NO_REPLY]) >= expected:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 0.01:
                    break
            time.sleep(0.002)
        out[index] = [(name, "push" if r.push else indices[name].get(id(r.request), "unpaired"),
                       r) for name, r in got if r.value is not NO_REPLY]
    for s in conns.values():
        s.close()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_live_sessions_pair_as_recorded(version: str) -> None:
    extra = ["--enable-debug-command", "yes"] if version == "7.0" else []
    with servers.redis_server(version[0], *extra) as server:
        for name, steps in load(version)["sessions"].items():
            clean = [b"FLUSHALL", b"SCRIPT FLUSH"] + [b"FUNCTION FLUSH"] * (version == "7.0")
            with socket.create_connection(("127.0.0.1", server.port)) as s:
                for line in clean:
                    s.sendall(line + b"\r\n")
                    assert s.recv(100) == b"+OK\r\n"
            check_live(version, name, steps, replay(server.port, steps))


def check_live(version: str, name: str, steps: list[dict], got: dict[int, list]) -> None:
    """The live replies of each step answer what the recorded ones did, with the same values
    where they do not change from run to run."""
    for index, step in enumerate(steps):
        want = [(r["conn"], r["answers"]) for r in step["replies"]]
        have = [(conn, what) for conn, what, _ in got[index]]
        assert sorted(have, key=str) == sorted(want, key=str), (version, name, index)
        if not step["volatile"] and name != "monitor":  # monitor lines hold times and ports
            values = sorted((canonical_json(r["value"]) for r in step["replies"]), key=repr)
            live = sorted((canonical_json(project(r.value)) for _, _, r in got[index]), key=repr)
            assert live == values, (version, name, index)


def canonical_json(value: Any) -> Any:
    """Recorded values compared across runs: hashable, client ids and ports masked."""
    text = json.dumps(value, sort_keys=True)
    return re.sub(r"127\.0\.0\.1:\d+|\bid=\d+", "<masked>", text)


def test_canonical_is_hashable_on_every_recorded_reply() -> None:
    for version in VERSIONS:
        for steps in load(version)["sessions"].values():
            for step in steps:
                for r in step["replies"]:
                    value, _ = parse_any(r["raw"].encode("latin-1"))
                    hash(canonical(value))


def parse_any(data: bytes) -> tuple[Any, bytes]:
    from twinproxy.protocols.redis import RespReplyParser

    parser = RespReplyParser(Limits())
    parser.feed(data)
    got = parser.next()
    assert got is not None
    return got


@pytest.mark.parametrize("version", VERSIONS)
def test_recordings_come_from_the_release_they_name(version: str) -> None:
    """The servers named their release in their HELLO replies (6.2.14 and 7.0.15 here)."""
    said = {
        m.group(1)
        for steps in load(version)["sessions"].values()
        for step in steps
        for reply in step["replies"]
        if (m := re.search(r"version\r\n\$\d+\r\n([0-9.]+)\r\n", reply["raw"]))
    }
    assert len(said) == 1 and said.pop().startswith(version + ".")
