"""The contract every codec keeps, checked for every registered protocol with its samples.

The rules are those of :mod:`twinproxy.protocols.base` and :mod:`twinproxy.protocols.reader`,
tested the way h11 tests its readers:

* any split of the input frames the same messages with the same raw bytes: whole, one byte at a
  time, in uneven chunks, and through ``feed()`` and ``next_request()``/``next_reply()``;
  ``buffered`` is always the bytes after the last complete message, which stay untouched;
* input that breaks the protocol or a limit raises :class:`RemoteProtocolError` whose ``reply``
  is the protocol's own error, with the messages framed before it on the exception, and the
  reader stays broken;
* fuzz: arbitrary bytes give messages or :class:`RemoteProtocolError`, never anything else, in
  bounded time and memory;
* the registry finds each protocol's package, whose codec implements :class:`Codec`.

The inputs are in ``samples.py``; what only one protocol does is in its own test modules.
"""

from __future__ import annotations

import importlib
import itertools
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocols.samples import SAMPLES, ErrorCase, ReplySample, RequestSample
from twinproxy.protocols import (
    DEFAULT_LIMITS,
    PROTOCOLS,
    Codec,
    Limits,
    LocalProtocolError,
    RemoteProtocolError,
    Reply,
    ReplyReader,
    Request,
    RequestReader,
    get_codec,
)

FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def cases(attribute: str) -> list:
    """``(protocol, case)`` parameters for every protocol's samples named ``attribute``."""
    return [pytest.param(name, case, id=f"{name}-{i}") for name, samples in SAMPLES.items()
            for i, case in enumerate(getattr(samples, attribute))]


def splits(data: bytes) -> list[list[bytes]]:
    """The input whole, one byte at a time, and in a few uneven chunkings."""
    out = [[data], [data[i : i + 1] for i in range(len(data))]]
    for size in (2, 3, 7, 64):
        out.append([data[i : i + size] for i in range(0, len(data), size)])
    return out


def request_view(requests: list[Request]) -> list[tuple]:
    return [(r.raw, r.name, r.args, r.data, r.session) for r in requests]


def reply_view(codec: Codec, replies: list[Reply], sent: list[Request]) -> list[tuple]:
    """What a reply is, with the request it answers as its index in ``sent``."""
    index = {id(r): i for i, r in enumerate(sent)}
    return [(r.raw, None if r.request is None else index[id(r.request)], r.final, r.error,
             r.push, codec.canonical(r)) for r in replies]


def framed(codec: Codec, data: bytes, limits: Limits = DEFAULT_LIMITS) -> list[Request]:
    """The requests ``data`` holds, all complete."""
    reader = codec.request_reader(limits)
    got = reader.receive(data)
    assert reader.buffered == 0
    return got


def reply_reader(codec: Codec, sent: list[Request], limits: Limits = DEFAULT_LIMITS
                 ) -> ReplyReader:
    reader = codec.reply_reader(limits)
    for request in sent:
        reader.expect(request)
    return reader


def fed(reader: Any, chunks: list[bytes]) -> list:
    """Every message ``reader`` frames from ``chunks``, checking after each that what it holds
    is exactly the bytes after the last message it framed."""
    got: list = []
    seen = 0
    for chunk in chunks:
        got += reader.receive(chunk)
        seen += len(chunk)
        assert reader.buffered == seen - sum(len(m.raw) for m in got)
    return got


# ---- requests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "sample"), cases("requests"))
def test_requests_frame_the_same_every_way(protocol: str, sample: RequestSample) -> None:
    codec = get_codec(protocol)
    whole = None
    for chunks in splits(sample.data):
        got = fed(codec.request_reader(), chunks)
        assert [(r.name, r.args, r.data) for r in got] == sample.expected
        assert b"".join(r.raw for r in got) == sample.data
        if whole is None:
            whole = request_view(got)
        assert request_view(got) == whole, chunks[:5]


@pytest.mark.parametrize(("protocol", "sample"), cases("requests"))
def test_feed_and_next_request_frame_what_receive_frames(protocol: str,
                                                         sample: RequestSample) -> None:
    codec = get_codec(protocol)
    reader = codec.request_reader()
    got = []
    for i in range(0, len(sample.data), 3):
        reader.feed(sample.data[i : i + 3])
        while (request := reader.next_request()) is not None:
            got.append(request)
    assert request_view(got) == request_view(framed(codec, sample.data))
    assert reader.buffered == 0


def after_every_sample() -> list:
    """``(protocol, sample, tail)``: each request tail after each stream of requests."""
    return [pytest.param(name, sample, tail, id=f"{name}-{i}-{j}")
            for name, samples in SAMPLES.items()
            for i, sample in enumerate(samples.requests)
            for j, tail in enumerate(samples.request_tails)]


@pytest.mark.parametrize(("protocol", "sample", "tail"), after_every_sample())
def test_bytes_after_the_last_request_stay_buffered(protocol: str, sample: RequestSample,
                                                    tail: bytes) -> None:
    codec = get_codec(protocol)
    data = sample.data + tail
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        reader = codec.request_reader()
        got = [r for chunk in chunks for r in reader.receive(chunk)]
        assert request_view(got) == request_view(framed(codec, sample.data))
        assert reader.buffered == len(tail)


@pytest.mark.parametrize(("protocol", "case"), cases("request_errors"))
def test_bad_requests_get_the_protocols_own_error(protocol: str, case: ErrorCase) -> None:
    codec = get_codec(protocol)
    good = request_view(framed(codec, case.good, case.limits))
    data = case.good + case.bad
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        reader = codec.request_reader(case.limits)
        got = []
        with pytest.raises(RemoteProtocolError) as info:
            for chunk in chunks:
                got += reader.receive(chunk)
        if len(chunks) == 1:
            assert request_view(info.value.messages) == good  # the call's own, with the error
        assert request_view(got + info.value.messages) == good
        assert info.value.reply == case.reply
        assert case.words in str(info.value)
        # broken for good: the same error again, with nothing framed
        with pytest.raises(RemoteProtocolError) as again:
            reader.receive(SAMPLES[protocol].requests[0].data)
        assert again.value is info.value and again.value.messages == []
        with pytest.raises(RemoteProtocolError):
            reader.next_request()
    # feed() then next_request(): the requests before the error one by one, then the error
    reader = codec.request_reader(case.limits)
    reader.feed(data)
    got = []
    with pytest.raises(RemoteProtocolError) as info:
        while (request := reader.next_request()) is not None:
            got.append(request)
    assert request_view(got) == good and info.value.messages == []
    assert info.value.reply == case.reply


# ---- replies -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "sample"), cases("replies"))
def test_replies_frame_and_pair_the_same_every_way(protocol: str, sample: ReplySample) -> None:
    codec = get_codec(protocol)
    sent = framed(codec, sample.sent)
    whole = None
    for chunks in splits(sample.data):
        reader = reply_reader(codec, sent)
        got = fed(reader, chunks)
        index = {id(r): i for i, r in enumerate(sent)}
        assert [(None if r.request is None else index[id(r.request)], r.final)
                for r in got] == sample.expected
        assert b"".join(r.raw for r in got) == sample.data
        assert reader.pending == 0
        if whole is None:
            whole = reply_view(codec, got, sent)
        assert reply_view(codec, got, sent) == whole, chunks[:5]


@pytest.mark.parametrize(("protocol", "sample"), cases("replies"))
def test_feed_and_next_reply_frame_what_receive_frames(protocol: str,
                                                      sample: ReplySample) -> None:
    codec = get_codec(protocol)
    sent = framed(codec, sample.sent)
    reader = reply_reader(codec, sent)
    got = []
    for i in range(0, len(sample.data), 3):
        reader.feed(sample.data[i : i + 3])
        while (reply := reader.next_reply()) is not None:
            got.append(reply)
    expected = reply_reader(codec, sent).receive(sample.data)
    assert reply_view(codec, got, sent) == reply_view(codec, expected, sent)
    assert reader.buffered == 0 and reader.pending == 0


@pytest.mark.parametrize(("protocol", "tail"), cases("reply_tails"))
def test_bytes_after_the_last_reply_stay_buffered(protocol: str,
                                                  tail: tuple[bytes, bytes]) -> None:
    codec = get_codec(protocol)
    sample = SAMPLES[protocol].replies[0]
    more, start = tail
    sent = framed(codec, sample.sent)
    expected = reply_view(codec, reply_reader(codec, sent).receive(sample.data), sent)
    sent += framed(codec, more)
    data = sample.data + start
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        reader = reply_reader(codec, sent)
        got = [r for chunk in chunks for r in reader.receive(chunk)]
        assert reply_view(codec, got, sent) == expected
        assert reader.buffered == len(start) and reader.pending == 1


@pytest.mark.parametrize(("protocol", "case"), cases("reply_errors"))
def test_bad_replies_raise_with_the_replies_before_them(protocol: str, case: ErrorCase) -> None:
    codec = get_codec(protocol)
    sent = framed(codec, case.sent)
    good = reply_view(codec, reply_reader(codec, sent, case.limits).receive(case.good), sent)
    data = case.good + case.bad
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        reader = reply_reader(codec, sent, case.limits)
        got = []
        with pytest.raises(RemoteProtocolError) as info:
            for chunk in chunks:
                got += reader.receive(chunk)
        if len(chunks) == 1:
            assert reply_view(codec, info.value.messages, sent) == good
        assert reply_view(codec, got + info.value.messages, sent) == good
        assert info.value.reply == case.reply
        assert case.words in str(info.value)
        with pytest.raises(RemoteProtocolError) as again:
            reader.receive(case.good or b"\r\n")
        assert again.value is info.value and again.value.messages == []
        with pytest.raises(RemoteProtocolError):
            reader.next_reply()
    reader = reply_reader(codec, sent, case.limits)
    reader.feed(data)
    got = []
    with pytest.raises(RemoteProtocolError) as info:
        while (reply := reader.next_reply()) is not None:
            got.append(reply)
    assert reply_view(codec, got, sent) == good and info.value.messages == []
    assert info.value.reply == case.reply


# ---- fuzz: messages or RemoteProtocolError, nothing else ----------------------------------------


@st.composite
def noise(draw: st.DrawFn, protocol: str) -> bytes:
    """Random bytes, or the protocol's tokens and its samples spliced with random bytes."""
    samples = SAMPLES[protocol]
    pieces = st.sampled_from(samples.tokens + [s.data for s in samples.requests]
                             + [s.data for s in samples.replies])
    return draw(st.one_of(st.binary(max_size=400),
                          st.lists(st.one_of(pieces, st.binary(max_size=12)), max_size=30)
                          .map(b"".join)))


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (modulo its length), without empty pieces: ``b""`` is the end."""
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def frame_noise(reader: Any, chunks: list[bytes], bound: int | None) -> tuple[list, Any]:
    """Everything ``reader`` frames from ``chunks`` then the end of the stream, and the
    RemoteProtocolError that stopped it (None). Any other exception fails the test."""
    got: list = []
    try:
        for chunk in chunks:
            got += reader.receive(chunk)
            assert bound is None or reader.buffered <= bound
        got += reader.receive(b"")
    except RemoteProtocolError as exc:
        return got + exc.messages, exc
    return got, None


@pytest.mark.parametrize("protocol", SAMPLES)
@FUZZ
@given(data=st.data(), cuts=st.lists(st.integers(0, 10**6), max_size=8))
def test_random_bytes_give_requests_or_a_remote_error(protocol: str, data: st.DataObject,
                                                      cuts: list[int]) -> None:
    samples = SAMPLES[protocol]
    codec = get_codec(protocol)
    stream = data.draw(noise(protocol))
    started = time.process_time()  # CPU time: a busy machine does not make it fail
    got, error = frame_noise(codec.request_reader(samples.fuzz_limits), pieces(stream, cuts),
                             samples.bound)
    assert error is None or samples.request_refusal(error.reply), error.reply
    at = 0
    for request in got:  # each request's bytes, in order
        found = stream.find(request.raw, at)
        assert found == at or (samples.skips and found > at)
        at = found + len(request.raw)
    assert time.process_time() - started < 1.0


@pytest.mark.parametrize("protocol", SAMPLES)
@FUZZ
@given(data=st.data(), cuts=st.lists(st.integers(0, 10**6), max_size=8))
def test_random_bytes_give_replies_or_a_remote_error(protocol: str, data: st.DataObject,
                                                     cuts: list[int]) -> None:
    samples = SAMPLES[protocol]
    codec = get_codec(protocol)
    sent = data.draw(st.lists(st.sampled_from(samples.fuzz_sent), max_size=8))
    stream = data.draw(noise(protocol))
    started = time.process_time()
    reader = reply_reader(codec, framed(codec, b"".join(sent)), samples.fuzz_limits)
    got, error = frame_noise(reader, pieces(stream, cuts),
                             samples.reply_bound or samples.bound)
    assert error is None or samples.reply_refusal(error.reply), error.reply
    assert stream.startswith(b"".join(r.raw for r in got))  # back to back from the start
    for reply in got:
        codec.canonical(reply)
    assert time.process_time() - started < 1.0


# ---- the registry and the interface -------------------------------------------------------------


def test_every_registered_protocol_has_samples() -> None:
    assert set(SAMPLES) == set(PROTOCOLS)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_registry_finds_the_packages_codec(protocol: str) -> None:
    package = importlib.import_module(PROTOCOLS[protocol])
    codec = get_codec(protocol)
    assert codec is package.CODEC and codec.name == protocol
    assert isinstance(codec, Codec)
    assert "CODEC" in package.__all__
    assert all(hasattr(package, name) for name in package.__all__)
    assert isinstance(codec.request_reader(), RequestReader)
    assert isinstance(codec.reply_reader(), ReplyReader)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_error_replies_are_one_line_of_the_protocol(protocol: str) -> None:
    reply = get_codec(protocol).error_reply("backend down\r\nfor now")
    assert reply.endswith(b"\r\n") and reply.count(b"\n") == 1 and b"backend down" in reply


class Bare(Codec):
    """A protocol with only what every protocol must have."""

    name = "bare"

    def request_reader(self, limits: Limits = DEFAULT_LIMITS) -> RequestReader:
        raise NotImplementedError

    def reply_reader(self, limits: Limits = DEFAULT_LIMITS) -> ReplyReader:
        raise NotImplementedError

    def error_reply(self, message: str) -> bytes:
        return message.encode()

    def canonical(self, reply: Reply) -> Any:
        return reply.value

    def describe(self, request: Request, table: Any = None) -> Request:
        return request

    def probe(self) -> bytes:
        return b""

    def probe_ok(self, reply: Reply) -> bool:
        return True


def test_a_codec_must_implement_what_every_protocol_has() -> None:
    class Partial(Codec):
        name = "partial"

        def error_reply(self, message: str) -> bytes:
            return b""

    with pytest.raises(TypeError, match="abstract"):
        Partial()  # type: ignore[abstract]


def test_the_defaults_say_the_protocol_lacks_the_feature() -> None:
    codec = Bare()
    request = Request(b"x\r\n", "X", [])
    assert codec.sentinel() is None
    assert codec.plain(request) is False and codec.plain_state(object()) is False  # type: ignore[arg-type]
    session = [Request(b"%d" % i, "S", []) for i in range(100)]
    assert codec.compact_session(session) == session[-64:]
    assert codec.replay(session, None) == []
    with pytest.raises(LocalProtocolError):
        codec.make_request([b"GET", b"k"])
    assert codec.follower_plan(request, None, False) is None
    assert codec.transaction_plan([request], None) is None
    assert codec.shared_connection is False and codec.route(request) is None
    with pytest.raises(LocalProtocolError):
        codec.shared_parser()
    reply = codec.reply(b"v", b"$1\r\nv\r\n", request)
    assert (reply.raw, reply.value, reply.request, reply.error) == (b"$1\r\nv\r\n", b"v", request,
                                                                    False)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_reader_that_cannot_count_says_so(protocol: str) -> None:
    reader = get_codec(protocol).request_reader()
    data = SAMPLES[protocol].requests[0].data
    counted = reader.count(data)
    assert counted is None or 0 < counted <= len(data)
    if counted is None:  # nothing consumed: receive() frames it all
        assert reader.count_run(data) is None
        assert request_view(reader.receive(data)) == request_view(
            framed(get_codec(protocol), data))
