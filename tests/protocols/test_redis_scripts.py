"""What the proxy learns of the scripts clients give Redis (protocols/redis/scripts.py): from
which requests, under which SHA1, within what bound; and that a client's reader shows it every
request that gives one, also where SINGLE mode would only count the read."""

from __future__ import annotations

import hashlib

import pytest

from twinproxy.protocols.messages import RemoteProtocolError
from twinproxy.protocols.redis import CODEC, encode_command, fast
from twinproxy.protocols.redis.scripts import Scripts

INCR = b"return redis.call('INCR', KEYS[1])"
INCR_SHA = b"61636018f4e6b5817b89791bbed242f93fa089e3"  # (as redis-server 7.0 answered it)
GET = b"return redis.call('GET', KEYS[1])"


def learning_reader(scripts: Scripts):
    reader = CODEC.request_reader()
    reader.learner = scripts
    return reader


def test_scripts_are_kept_by_the_sha1_redis_gives_them() -> None:
    scripts = Scripts()
    reader = learning_reader(scripts)
    reader.receive(encode_command("SCRIPT", "LOAD", INCR))
    assert scripts.bodies == {INCR_SHA: INCR}
    reader.receive(encode_command("script", "load", INCR))  # (known: kept once)
    assert scripts.size == len(INCR) and len(scripts.bodies) == 1


def test_eval_and_eval_ro_give_their_script_evalsha_does_not() -> None:
    scripts = Scripts()
    reader = learning_reader(scripts)
    reader.receive(encode_command("eval", GET, 1, "k") + encode_command("EVALSHA", INCR_SHA, 0))
    reader.receive(encode_command("EVAL_RO", INCR, 0))
    assert sorted(scripts.bodies.values()) == sorted([GET, INCR])


def test_script_flush_forgets_them_all_and_other_subcommands_change_nothing() -> None:
    scripts = Scripts()
    reader = learning_reader(scripts)
    reader.receive(encode_command("SCRIPT", "LOAD", INCR) + encode_command("EVAL", GET, 0))
    reader.receive(encode_command("SCRIPT", "EXISTS", INCR_SHA) + encode_command("SCRIPT")
                   + encode_command("SCRIPT", "LOAD") + encode_command("EVAL"))
    assert len(scripts.bodies) == 2
    reader.receive(encode_command("SCRIPT", "FLUSH", "ASYNC"))
    assert scripts.shas == {} and scripts.size == 0
    reader.receive(encode_command("SCRIPT", "LOAD", INCR))  # (learnt again after it)
    assert scripts.bodies == {INCR_SHA: INCR}


def test_past_the_bound_new_scripts_are_counted_not_kept() -> None:
    scripts = Scripts(max_bytes=len(INCR) + len(GET))
    for body in (INCR, GET, INCR + b" ", GET + b" "):
        scripts.add(body)
    assert set(scripts.bodies.values()) == {INCR, GET} and scripts.missed == 2
    assert scripts.size == scripts.max_bytes


@pytest.fixture(params=["c", "python"])
def count_path(request, monkeypatch) -> str:
    """count() both ways: the C scan, and the hiredis proof where no compiler built it."""
    if request.param == "python":
        monkeypatch.setattr(fast, "c_scan", None)
    elif fast.c_scan is None:
        pytest.skip("the C scan is not built (setup.py found no compiler)")
    return request.param


def test_single_modes_count_learns_the_scripts_of_evals_it_takes(count_path: str) -> None:
    """SINGLE mode's count forwards ordinary reads without framing them: it learns the scripts
    EVAL gives (with the C scan, from the read it takes; without it, the read is framed);
    SCRIPT LOAD is always framed, and EVALSHA only counted."""
    scripts = Scripts()
    reader = learning_reader(scripts)
    plain = encode_command("GET", "a") + encode_command("EVALSHA", INCR_SHA, 1, "k")
    assert reader.count(plain) == len(plain) and scripts.shas == {}
    evals = encode_command("GET", "a") + encode_command("eval", INCR, 1, "k") * 2
    taken = reader.count(evals)
    if count_path == "c":
        assert taken == len(evals)
    else:
        assert taken is None and len(reader.receive(evals)) == 3
    load = encode_command("SET", "a", 1) + encode_command("SCRIPT", "LOAD", GET)
    assert reader.count(load) is None
    assert len(reader.receive(load)) == 2
    assert scripts.bodies == {INCR_SHA: INCR, hashlib.sha1(GET).hexdigest().encode(): GET}


def test_a_reader_that_learns_nothing_counts_evals() -> None:
    """Readers other than a client's (the engine's, the state sync's) learn nothing."""
    data = encode_command("EVAL", INCR, 0)
    assert CODEC.request_reader().count(data) == len(data)


def test_requests_before_a_protocol_error_are_learnt() -> None:
    """They go to the server (the relay answers them, then closes): their scripts are loaded
    there."""
    scripts = Scripts()
    reader = learning_reader(scripts)
    with pytest.raises(RemoteProtocolError) as raised:
        reader.receive(encode_command("SCRIPT", "LOAD", INCR) + b"*1\r\n$x\r\n")
    assert [r.name for r in raised.value.messages] == ["SCRIPT"]
    assert scripts.bodies == {INCR_SHA: INCR}
