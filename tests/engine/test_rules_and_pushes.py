"""The config's rules as the engine applies them, and pushes matched between the versions.

Scripts with the bytes a Redis server sends, no socket: a rewrite rule changes what the follower
is sent, an ignore rule makes a difference expected (the update goes on), and the messages a
subscriber gets from both versions are compared in order, never delivered twice.
"""

from __future__ import annotations

from tests.engine.harness import OWN, attach, new_engine, raw, request
from tests.engine.playbook import Placeholder, Playbook
from twinproxy.config.rules import parse_rules
from twinproxy.engine import FOLLOWER, LEADER
from twinproxy.engine import commands as cmd
from twinproxy.engine import events as ev
from twinproxy.engine.events import new_id
from twinproxy.protocols.redis import CODEC

L1, L2 = new_id(), new_id()


def rules(*entries: dict) -> tuple:
    return parse_rules(list(entries), "redis", {})


def mve(pb: Playbook, own: dict[int, Placeholder]) -> None:
    """Begin, release, start the follower; each client's own follower connection joins."""
    shared = Placeholder("leader shared")
    assert pb >> ev.Begin() << cmd.Open(shared, LEADER, None) >> ev.Connected(shared)
    assert pb >> ev.Release()
    follower = Placeholder("follower shared")
    pb >> ev.StartFollower() << cmd.Open(follower, FOLLOWER, None)
    for client, conn in own.items():
        pb << cmd.Open(conn, FOLLOWER, client)
    assert pb


def test_a_rewrite_rule_changes_what_the_follower_is_sent():
    engine = new_engine(rules=rules({"name": "tag", "command": "SET",
                                     "rewrite": ["$0", "$*", "KEEPTTL"]}))
    pb = Playbook(engine)
    own = Placeholder("own")
    assert pb >> attach(1, L1, session=(OWN,))
    mve(pb, {1: own})
    assert pb >> ev.Connected(own) << cmd.Send(own, OWN.raw)
    assert pb >> ev.Data(own, b"+OK\r\n")
    assert pb >> ev.Requests(1, [request("SET", "k", "v")]) << cmd.Send(L1, raw("SET", "k", "v"))
    assert (pb >> ev.Data(L1, b"+OK\r\n") << cmd.Deliver(1, b"+OK\r\n")
            << cmd.Send(own, raw("SET", "k", "v", "KEEPTTL")))
    assert pb >> ev.Data(own, b"+OK\r\n")
    assert engine.status()["divergences"] == 0


def test_an_ignore_rule_makes_a_difference_expected_and_the_update_goes_on():
    engine = new_engine(rules=rules({"name": "version", "command": "GET", "args": "^ver$",
                                     "ignore": True}))
    pb = Playbook(engine)
    own = Placeholder("own")
    assert pb >> attach(1, L1, session=(OWN,))
    mve(pb, {1: own})
    assert pb >> ev.Connected(own) << cmd.Send(own, OWN.raw)
    assert pb >> ev.Data(own, b"+OK\r\n")
    assert pb >> ev.Requests(1, [request("GET", "ver")]) << cmd.Send(L1, raw("GET", "ver"))
    assert pb >> ev.Data(L1, b"$1\r\n6\r\n") << cmd.Deliver(1, b"$1\r\n6\r\n") \
        << cmd.Send(own, raw("GET", "ver"))
    diverged = Placeholder("diverged")
    assert pb >> ev.Data(own, b"$1\r\n7\r\n") << diverged  # recorded, and nothing fails
    assert diverged.value.verdict.expected and diverged.value.verdict.rule == "version"
    status = engine.status()
    assert (status["divergences"], status["expected_divergences"]) == (0, 1)
    assert status["expected_by_rule"] == {"version": 1}


def subscribed(channel: bytes) -> tuple:
    """A client's reply reader after SUBSCRIBE ``channel`` was answered in SINGLE mode."""
    sub = request("SUBSCRIBE", channel)
    replies = CODEC.reply_reader()
    replies.expect(sub)
    replies.receive(b"*3\r\n$9\r\nsubscribe\r\n$%d\r\n%s\r\n:1\r\n" % (len(channel), channel))
    return sub, replies


def message(channel: bytes, data: bytes) -> bytes:
    return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel,
                                                                 len(data), data)


def test_a_subscribers_messages_are_compared_between_the_versions_never_delivered_twice():
    engine = new_engine()
    pb = Playbook(engine)
    sub, replies = subscribed(b"ch")
    assert pb >> ev.Attach(1, "127.0.0.1:1", L1, replies, (sub,))
    assert pb >> attach(2, L2, session=(OWN,))
    own1, own2 = Placeholder("own 1"), Placeholder("own 2")
    mve(pb, {1: own1, 2: own2})
    assert pb >> ev.Connected(own1) << cmd.Send(own1, raw("SUBSCRIBE", "ch"))
    assert pb >> ev.Data(own1, b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n")
    assert pb >> ev.Connected(own2) << cmd.Send(own2, OWN.raw)
    assert pb >> ev.Data(own2, b"+OK\r\n")
    publish = request("PUBLISH", "ch", "hi")
    assert pb >> ev.Requests(2, [publish]) << cmd.Send(L2, publish.raw)
    assert (pb >> ev.Data(L2, b":1\r\n") << cmd.Deliver(2, b":1\r\n")
            << cmd.Send(own2, publish.raw))
    # The subscriber gets the leader's message as it comes; the follower's is only compared.
    assert pb >> ev.Data(L1, message(b"ch", b"hi")) << cmd.Deliver(1, message(b"ch", b"hi"))
    assert pb >> ev.Data(own2, b":1\r\n") >> ev.Data(own1, message(b"ch", b"hi"))
    assert engine.status()["compared"] == 2 and engine.status()["divergences"] == 0
    # A message only one version sends waits to be matched (the cutover waits for it too).
    assert pb >> ev.Data(own1, message(b"ch", b"extra"))
    assert pb >> ev.Watch(frozenset({"caught-up"}))
    assert pb >> ev.Data(L1, message(b"ch", b"other")) << cmd.Deliver(1, message(b"ch", b"other")) \
        << Placeholder("diverged") << Placeholder("failed")


def test_a_pttl_whose_leader_reply_was_read_late_is_within_the_tolerance():
    """The leader ran PTTL when it was sent, but its reply was read 200 ms later (a loaded
    machine); the follower ran it at once then. The two executions are 210 ms apart, which
    the builtin ttl check allows: the time counts from the request's going to the leader."""
    engine = new_engine()
    pb = Playbook(engine)
    own = Placeholder("own")
    assert pb >> attach(1, L1, session=(OWN,))
    mve(pb, {1: own})
    assert pb >> ev.Connected(own) << cmd.Send(own, OWN.raw)
    assert pb >> ev.Data(own, b"+OK\r\n")
    assert pb >> ev.Tick(10.0)
    assert pb >> ev.Requests(1, [request("PTTL", "k")]) << cmd.Send(L1, raw("PTTL", "k"))
    assert pb >> ev.Tick(10.2)
    assert pb >> ev.Data(L1, b":60000\r\n") << cmd.Deliver(1, b":60000\r\n") \
        << cmd.Send(own, raw("PTTL", "k"))
    assert pb >> ev.Tick(10.21)
    diverged = Placeholder("diverged")
    assert pb >> ev.Data(own, b":59790\r\n") << diverged
    assert diverged.value.verdict.expected and diverged.value.verdict.rule == "builtin:ttl"
    assert engine.status()["divergences"] == 0
