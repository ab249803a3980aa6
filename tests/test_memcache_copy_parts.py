"""memcache-copy's refusals and the CAS token translation, without servers: what ``check``
refuses before an update starts, and what the follower gets for a request that sends a token
back (the end-to-end run is ``test_mve_memcache_copy.py``)."""

from __future__ import annotations

import pytest

from twinproxy.config import VersionConfig
from twinproxy.protocols.memcache import CODEC, Item, Meta, Values, make_request
from twinproxy.protocols.memcache.tokens import NO_TOKEN, name
from twinproxy.protocols.messages import Reply
from twinproxy.statesync import METHODS
from twinproxy.statesync.memcache_copy import _parse_dump, memory_limit

MC = ("memcached", "-p", "{port}")
V1 = VersionConfig(name="v1", command=(*MC, "-m", "64"))


def version(*extra: str, name: str = "v2") -> VersionConfig:
    return VersionConfig(name=name, command=(*MC, *extra))


def test_check_refuses_another_memory_limit_and_memcached_without_cas() -> None:
    method = METHODS["memcache-copy"]
    assert method.refusal("memcache", V1, version("-m", "64", "-t", "2")) is None
    assert method.refusal("memcache", V1, version()) is None  # 64 is memcached's default
    assert "v2's memory limit (-m 128) differs from v1's (-m 64)" in \
        method.refusal("memcache", V1, version("--memory-limit=128"))
    assert method.refusal("memcache", V1, version("-C")) == (
        "sync memcache-copy needs CAS tokens, but v2 runs with -C (--disable-cas)")
    external = VersionConfig(name="ext", address=("127.0.0.1", 11311))
    assert method.refusal("memcache", V1, external) is None  # written through its protocol


@pytest.mark.parametrize(("command", "limit"), [
    ((), "64"), (("-m", "100"), "100"),
    (("-m100",), "100"), (("--memory-limit", "7"), "7"), (("--memory-limit=9",), "9"),
])
def test_memory_limit_reads_every_spelling(command: tuple[str, ...], limit: str) -> None:
    assert memory_limit(command) == limit


def test_a_dump_line_gives_key_expiry_and_token_as_written() -> None:
    text = (b"key=a exp=-1 la=1796227267 cas=1 fetch=no cls=1 size=65\n"
            b"key=b%25c%20d exp=1796227367 la=1796227267 cas=22 fetch=yes cls=1 size=67\n"
            b"END\r\n")
    assert _parse_dump(text) == {b"a": (b"-1", b"1"), b"b%c d": (b"1796227367", b"22")}


def request(line: bytes):
    (got,) = CODEC.request_reader().receive(line)
    return CODEC.describe(got)


def reply(value) -> Reply:
    return Reply(b"", value)


def test_replies_with_tokens_compare_without_them_and_teach_the_pairs() -> None:
    gets = request(b"gets a b\r\n")
    plan = CODEC.follower_plan(gets, None, False)
    assert plan is not None and plan.same
    leader = CODEC.canonical(reply(Values((Item(b"a", 1, b"x", 10), Item(b"b", 0, b"y", 11)))))
    follower = CODEC.canonical(reply(Values((Item(b"a", 1, b"x", 3), Item(b"b", 0, b"y", 4)))))
    assert plan.check(leader, follower, 0.0)
    assert CODEC.server_ids(gets, leader, follower) == ((name(b"a", 10), name(b"a", 3)),
                                                        (name(b"b", 11), name(b"b", 4)))
    other = CODEC.canonical(reply(Values((Item(b"a", 1, b"z", 3), Item(b"b", 0, b"y", 4)))))
    assert not plan.check(leader, other, 0.0)  # a different value is still a divergence
    mg = request(b"mg a v c t\r\n")
    leader = CODEC.canonical(reply(Meta(b"VA", (b"c10", b"t-1"), b"x")))
    follower = CODEC.canonical(reply(Meta(b"VA", (b"c3", b"t-1"), b"x")))
    assert CODEC.follower_plan(mg, leader, False).check(leader, follower, 0.0)
    assert CODEC.server_ids(mg, leader, follower) == ((name(b"a", 10), name(b"a", 3)),)
    assert CODEC.follower_plan(request(b"mg a v\r\n"), None, False) is None
    assert CODEC.follower_plan(request(b"get a\r\n"), None, False) is None


STORED, EXISTS, NOT_FOUND = ("line", b"STORED"), ("line", b"EXISTS"), ("line", b"NOT_FOUND")
def names(pairs: dict) -> dict[int, int]:
    """A map of names (tokens.name) from (key, token) pairs."""
    return {name(*ours): name(*theirs) for ours, theirs in pairs.items()}


A10 = names({(b"a", 10): (b"a", 3)})  # item a's version: the leader's token 10, the follower's 3


def test_a_cas_reaches_the_follower_with_its_own_token() -> None:
    cas = request(b"cas a 5 0 1 10\r\nx\r\n")
    assert CODEC.follower_ids(cas, A10, STORED) == [b"cas", b"a", b"5", b"0", b"1", b"3",
                                                        b"x"]
    # Not learned yet: the leader's outcome decides, as the follower holds the same version.
    assert CODEC.follower_ids(cas, {}, STORED) == [b"set", b"a", b"5", b"0", b"1", b"x"]
    assert CODEC.follower_ids(cas, {}, EXISTS)[5] == b"%d" % NO_TOKEN
    assert CODEC.follower_ids(cas, {}, NOT_FOUND) is None
    assert CODEC.follower_ids(request(b"cas a 5 0 1 10 noreply\r\nx\r\n"), {}, None) is None
    words = CODEC.follower_ids(cas, A10, STORED)
    assert CODEC.make_request(words).raw == b"cas a 5 0 1 3\r\nx\r\n"


@pytest.mark.parametrize(("line", "leader", "follower"), [
    (b"ms a 1 C10 T0\r\nx\r\n", ("meta", b"HD", (), None), b"ms a 1 C3 T0\r\nx\r\n"),
    (b"md a C10 q\r\n", ("meta", b"HD", (), None), b"md a C3 q\r\n"),
    (b"ma a C10 v\r\n", ("meta", b"VA", (), b"2"), b"ma a C3 v\r\n"),
])
def test_a_meta_token_reaches_the_follower_as_its_own(line, leader, follower) -> None:
    words = CODEC.follower_ids(request(line), A10, leader)
    assert CODEC.make_request(words).raw == follower


def test_a_meta_token_not_learned_follows_the_leaders_outcome() -> None:
    ms = request(b"ms a 1 C10\r\nx\r\n")
    assert CODEC.follower_ids(ms, {}, ("meta", b"HD", (), None)) == [b"ms", b"a", b"1", b"x"]
    assert CODEC.follower_ids(ms, {}, ("meta", b"EX", (), None)) == [
        b"ms", b"a", b"1", b"C%d" % NO_TOKEN, b"x"]
    assert CODEC.follower_ids(ms, {}, ("meta", b"NF", (), None)) is None
    assert CODEC.follower_ids(request(b"ms a 1\r\nx\r\n"), {}, None) is None
    assert make_request("md", "a", "C1").name == "md"


@pytest.mark.parametrize(("line", "follower"), [
    (b"touch a 600\r\n", b"touch a 1000600\r\n"),
    (b"set a 3 60 1 noreply\r\nx\r\n", b"set a 3 1000060 1 noreply\r\nx\r\n"),
    (b"gats 30 a b\r\n", b"gats 1000030 a b\r\n"),
    (b"ms a 1 T60 F3\r\nx\r\n", b"ms a 1 T1000060 F3\r\nx\r\n"),
    (b"mg a v T5 N7\r\n", b"mg a v T1000005 N1000007\r\n"),
    (b"set a 0 0 1\r\nx\r\n", None),  # never expires
    (b"touch a -1\r\n", None),  # expired at once, on both
    (b"touch a 2000000000\r\n", None),  # a unix time already
    (b"ms a 1 F3\r\nx\r\n", None),
])
def test_an_expiry_from_now_reaches_the_follower_as_the_leaders_moment(line, follower) -> None:
    """The follower runs a request later than the leader (seconds later during the replay): it
    gets the expiry as the unix time it was when the leader answered."""
    plan = CODEC.follower_plan(request(line), None, False, at=1000000.7)
    words = plan.words if plan is not None else None
    assert (CODEC.make_request(words).raw if words else None) == follower
    unknown = CODEC.follower_plan(request(line), None, False)  # the leader's moment unknown
    assert unknown is None or unknown.words is None


def test_after_the_cutover_an_old_token_names_its_version_until_the_key_changes() -> None:
    """The carry after a cutover (tokens.OldTokens): a token the map has becomes the new
    version's for the same item version while nothing changed the key, then a token no item
    has; one it does not have goes as it is; a flush ends every translation."""
    carry = CODEC.after_cutover(names({(b"k", 57): (b"k", 3), (b"j", 60): (b"j", 9)}))
    assert CODEC.after_cutover({}) is None
    assert carry(make_request("cas", "k", 0, 0, 1, 57, data=b"a")).raw == \
        b"cas k 0 0 1 3\r\na\r\n"
    assert carry(make_request("ms", "j", 1, "C60", "T0", data=b"a")).raw == \
        b"ms j 1 C9 T0\r\na\r\n"
    assert carry(make_request("cas", "k", 0, 0, 1, 99, data=b"a")).raw == \
        b"cas k 0 0 1 99\r\na\r\n"  # not the old version's: as it is
    get = make_request("get", "k")
    assert carry(get) is get
    # The cas above changed k (whatever its outcome): an old token of k names no item now.
    assert carry(make_request("cas", "k", 0, 0, 1, 57, data=b"b")).raw == \
        b"cas k 0 0 1 %d\r\nb\r\n" % NO_TOKEN
    assert (carry.translated, carry.refused) == (2, 1)
    # A touch changes no item version; a delete does.
    touched = CODEC.after_cutover(names({(b"j", 60): (b"j", 9)}))
    touched(make_request("touch", "j", 100))
    assert touched(make_request("md", "j", "C60", "q")).raw == b"md j C9 q\r\n"
    assert touched(make_request("md", "j", "C60")).raw == b"md j C%d\r\n" % NO_TOKEN
    flushed = CODEC.after_cutover(names({(b"x", 57): (b"x", 3)}))
    flushed(make_request("flush_all"))
    assert flushed(make_request("cas", "x", 0, 0, 1, 57, data=b"a")).raw == \
        b"cas x 0 0 1 %d\r\na\r\n" % NO_TOKEN


def test_a_token_the_new_version_showed_goes_as_it_is() -> None:
    """The two counters give one number to versions of both servers: once the new version
    showed a client (k, 3), a cas with 3 is the new version's token, even though the old
    version's 3 is in the map."""
    ids = {(b"k", 3): (b"k", 8), (b"k", 5): (b"k", 3)}
    carry = CODEC.after_cutover(names({**ids, **{(b"o%d" % i, i): (b"o%d" % i, i)
                                                 for i in range(9)}}))
    carry.seen([Reply(b"", Values((Item(b"k", 0, b"v", 3),)))])
    request = make_request("cas", "k", 0, 0, 1, 3, data=b"a")
    assert carry(request) is request
    mg = make_request("mg", "j", "c")
    carry.seen([Reply(b"", Meta(b"HD", (b"c9",)), request=mg)])
    assert name(b"j", 9) in carry.fresh


def test_the_carry_lets_go_once_more_keys_changed_than_it_has_pairs() -> None:
    carry = CODEC.after_cutover(names({(b"k", 57): (b"k", 3), (b"z", 60): (b"z", 9)}))
    for key in ("a", "b", "c"):
        carry(make_request("set", key, 0, 0, 1, data=b"v"))
    request = make_request("cas", "z", 0, 0, 1, 57, data=b"a")
    assert carry(request) is request and not carry.ids and not carry.changed


def test_the_dump_is_parsed_from_its_file_a_batch_at_a_time(monkeypatch) -> None:
    """The metadump, spooled to a file as it came (cut anywhere), comes back as batches of
    key -> (exp, token), every line once."""
    import tempfile

    from twinproxy.statesync import memcache_copy

    monkeypatch.setattr(memcache_copy, "BATCH", 3)
    lines = b"".join(b"key=k%d exp=-1 la=1 cas=%d fetch=no cls=1 size=60\n" % (i, i)
                     for i in range(10)) + b"END\r\n"
    spool = tempfile.TemporaryFile()  # noqa: SIM115 (_batches closes it)
    spool.write(lines)
    got: dict = {}
    for batch in memcache_copy._batches(spool):
        assert batch and not got.keys() & batch.keys()
        got.update(batch)
    assert got == {b"k%d" % i: (b"-1", b"%d" % i) for i in range(10)}
    assert spool.closed


def test_the_records_come_back_in_the_order_put() -> None:
    from twinproxy.statesync.memcache_copy import Records

    records = Records()
    records.put([(b"a", b"1", b"-1", b"5", b"x" * 1000), (b"b",)])
    records.put([])
    records.put([(b"a", b"2", b"99", b"7", b"")])
    assert list(records.batches()) == [((b"a", b"1", b"-1", b"5", b"x" * 1000), (b"b",)),
                                       ((b"a", b"2", b"99", b"7", b""),)]
    assert records.records == 3
    records.close()


def test_the_watch_notes_the_keys_of_writes_and_a_flush() -> None:
    from twinproxy.statesync.base import SyncJob
    from twinproxy.statesync.memcache_copy import MemcacheCopy

    method = MemcacheCopy(SyncJob(1, ("127.0.0.1", 1), V1, 5.0))
    out: list = []
    watch = method.watch(lambda: out)
    for line in (b"get a b\r\n", b"set c 0 0 1\r\nx\r\n", b"touch d 10\r\n", b"mg e v\r\n",
                 b"mg f T30\r\n", b"md Zw== b\r\n", b"incr h 1 noreply\r\n"):
        (request,) = CODEC.request_reader().receive(line)
        watch(request)
        out.append(request)
    assert method.written == {b"c", b"d", b"f", b"g", b"h"} and method.flushed is None
    assert method.sticky == {b"h"}  # noreply: no reply shows when it took effect
    (flush,) = CODEC.request_reader().receive(b"flush_all\r\n")
    watch(flush)
    with pytest.raises(Exception, match="'flush_all' during the copy"):
        method._refused()
    method.records.close()
