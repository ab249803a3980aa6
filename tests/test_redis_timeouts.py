"""What is left of a blocking command's timeout when the proxy sends it again
(protocols/redis/timeouts.py): the engine's scripts and the real-server tests in
test_mve_redis_blocking.py rely on these rewrites."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from twinproxy.protocols.redis import CODEC
from twinproxy.protocols.redis.types import encode_command


def _again(elapsed: float, *words: bytes) -> list[bytes]:
    request = CODEC.make_request(list(words))
    CODEC.time_left(request, elapsed)
    [parsed] = CODEC.request_reader().receive(request.raw)  # what the server will read
    assert [parsed.name.encode(), *parsed.args] == [request.name.encode(), *request.args]
    return [request.name.encode(), *request.args]


@pytest.mark.parametrize(("words", "elapsed", "expected"), [
    ((b"BLPOP", b"a", b"b", b"2"), 0.5, (b"BLPOP", b"a", b"b", b"1.500")),
    ((b"blpop", b"a", b"2.5"), 1.0004, (b"BLPOP", b"a", b"1.500")),  # rounded up
    ((b"BRPOPLPUSH", b"s", b"d", b"1"), 3.0, (b"BRPOPLPUSH", b"s", b"d", b"0.001")),  # spent
    ((b"BLMOVE", b"s", b"d", b"LEFT", b"RIGHT", b"10"), 4.0,
     (b"BLMOVE", b"s", b"d", b"LEFT", b"RIGHT", b"6.000")),
    ((b"BZPOPMIN", b"z", b"0"), 5.0, (b"BZPOPMIN", b"z", b"0")),  # for ever stays for ever
    ((b"BLMPOP", b"3", b"1", b"l", b"LEFT"), 1.0, (b"BLMPOP", b"2.000", b"1", b"l", b"LEFT")),
    ((b"XREAD", b"COUNT", b"2", b"BLOCK", b"1500", b"STREAMS", b"s", b"$"), 0.25,
     (b"XREAD", b"COUNT", b"2", b"BLOCK", b"1250", b"STREAMS", b"s", b"$")),
    ((b"XREADGROUP", b"GROUP", b"g", b"BLOCK", b"block", b"100", b"STREAMS", b"s", b">"), 1.0,
     (b"XREADGROUP", b"GROUP", b"g", b"BLOCK", b"block", b"1", b"STREAMS", b"s", b">")),
    ((b"XREAD", b"STREAMS", b"block", b"0"), 1.0, (b"XREAD", b"STREAMS", b"block", b"0")),
    ((b"BLPOP", b"a", b"soon"), 1.0, (b"BLPOP", b"a", b"soon")),  # the server's error to give
    ((b"GET", b"a"), 1.0, (b"GET", b"a")),
    ((b"WAIT", b"1", b"2000"), 0.5, (b"WAIT", b"1", b"1500")),
    ((b"WAIT", b"1", b"0"), 0.5, (b"WAIT", b"1", b"0")),  # for ever
    ((b"WAITAOF", b"1", b"0", b"300"), 1.0, (b"WAITAOF", b"1", b"0", b"1")),
    ((b"XREAD", b"BLOCK", b"1.5", b"STREAMS", b"s", b"$"), 0.1,  # the server's error
     (b"XREAD", b"BLOCK", b"1.5", b"STREAMS", b"s", b"$")),
])
def test_time_left(words, elapsed, expected) -> None:
    assert _again(elapsed, *words) == list(expected)


@given(timeout_ms=st.integers(1, 10**7), elapsed=st.floats(0, 10**5))
@example(timeout_ms=8117, elapsed=0.0)  # 8.117 s is 8117.000000000001 ms as a float
def test_never_longer_never_shorter_never_for_ever(timeout_ms: int, elapsed: float) -> None:
    """What is left is at least the client's timeout less the time gone, at most the whole
    timeout, and never 0 (for ever)."""
    timeout = timeout_ms / 1000
    request = CODEC.make_request([b"BLPOP", b"k", b"%d.%03d" % divmod(timeout_ms, 1000)])
    CODEC.time_left(request, elapsed)
    left = float(request.args[-1])
    assert 0 < left <= timeout
    assert left >= timeout - elapsed - 1e-9
    assert request.raw == encode_command(b"BLPOP", b"k", request.args[-1])
