"""INFO's reply without the proxy's own PINGs (protocols/redis/ownstats.py): the engine's
scripts and tests/test_mve_redis_ownstats.py rely on these rewrites."""

from __future__ import annotations

from twinproxy.protocols.redis import CODEC

TEXT = (b"# Stats\r\ntotal_commands_processed:40\r\ntotal_net_input_bytes:1000\r\n"
        b"total_net_output_bytes:500\r\n\r\n# Commandstats\r\n"
        b"cmdstat_get:calls=2,usec=4,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n"
        b"cmdstat_ping:calls=10,usec=30,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n")


def _bulk(text: bytes, kind: bytes = b"$") -> bytes:
    return b"%s%d\r\n%s\r\n" % (kind, len(text), text)


def _value(raw: bytes) -> bytes:
    reader = CODEC.reply_reader()
    reader.expect(CODEC.make_request([b"INFO"]))
    [reply] = reader.receive(raw)  # still one whole reply, to the byte
    return bytes(reply.value)


def test_the_probes_leave_every_count_they_were_in() -> None:
    out = CODEC.without_probes(_bulk(TEXT), 4)
    assert _value(out) == TEXT.replace(b":40", b":36").replace(b":1000", b":944").replace(
        b":500", b":472").replace(b"calls=10,usec=30,usec_per_call=3.00",
                                  b"calls=6,usec=18,usec_per_call=3.00")


def test_a_ping_only_the_proxy_called_has_no_line_as_directly() -> None:
    out = CODEC.without_probes(_bulk(TEXT), 10)
    assert b"cmdstat_ping" not in out and b"cmdstat_get:calls=2" in out
    assert _value(out).endswith(b"failed_calls=0\r\n")


def test_resp3_verbatim_and_other_replies() -> None:
    verbatim = _bulk(b"txt:" + TEXT, b"=")
    out = CODEC.without_probes(verbatim, 1)
    assert out.startswith(b"=") and b"cmdstat_ping:calls=9," in out
    assert int(out[1:out.index(b"\r\n")]) == len(out) - out.index(b"\r\n") - 4
    for raw in (b"-NOPERM no\r\n", b"+OK\r\n", _bulk(TEXT)):
        assert CODEC.without_probes(raw, 0 if raw.startswith(b"$") else 3) == raw


def test_which_requests_count() -> None:
    def make(*words: bytes):
        return CODEC.make_request(list(words))
    assert CODEC.counts_requests(make(b"INFO")) and CODEC.counts_requests(make(b"info", b"all"))
    assert CODEC.counts_requests(make(b"CONFIG", b"resetstat"))
    assert CODEC.resets_counts(make(b"config", b"RESETSTAT"))
    assert not CODEC.counts_requests(make(b"CONFIG", b"GET", b"x"))
    assert not CODEC.resets_counts(make(b"INFO"))
    # The engine asks only about the names the codec lists (one set lookup per request).
    for words in ((b"info",), (b"INFO", b"all"), (b"config", b"resetstat")):
        request = make(*words)
        assert CODEC.counts_requests(request) and request.name in CODEC.counting_names


def test_the_sentinels_leave_their_counts_and_latency_line_with_the_probes() -> None:
    request, reply = CODEC.sentinel()
    text = TEXT + (b"cmdstat_echo:calls=3,usec=6,usec_per_call=2.00,rejected_calls=0,"
                   b"failed_calls=0\r\n\r\n# Latencystats\r\n"
                   b"latency_percentiles_usec_echo:p50=1.003,p99=2.007,p99.9=2.007\r\n"
                   b"latency_percentiles_usec_get:p50=1.003,p99=2.007,p99.9=2.007\r\n")
    out = _value(CODEC.without_probes(_bulk(text), 1, 3))
    assert b"echo" not in out and b"latency_percentiles_usec_get:" in out
    assert b"total_commands_processed:36\r\n" in out
    assert b"total_net_input_bytes:%d\r\n" % (1000 - 14 - 3 * len(request)) in out
    assert b"total_net_output_bytes:%d\r\n" % (500 - 7 - 3 * len(reply)) in out
    out = _value(CODEC.without_probes(_bulk(text), 0, 2))
    assert b"cmdstat_echo:calls=1,usec=2,usec_per_call=2.00," in out
    assert b"latency_percentiles_usec_echo:" in out and b"cmdstat_ping:calls=10," in out
