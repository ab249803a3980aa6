"""Transparency in CI: a fixed subset of client libraries' own tests ends the same way directly,
through twinproxy in SINGLE mode, and through it during an update held in MVE.

The full conformance run (``python loadtests/conformance.py``) runs every test of the suites on
every target and lists each difference in loadtests/reports/conformance.md; it takes a quarter
of an hour. This module runs a small, fixed subset of the same suites (pinned source
distributions, in .cache/suites/: scripts/setup.sh fetches them, and the runner fetches them
itself if they are missing; redis-py's again in database 9) on three targets per protocol: the
server directly, twinproxy in SINGLE mode, and twinproxy during an update of the server to the
same version, in MVE for the whole run. It fails when a test ends otherwise than directly, when
the update is no longer in MVE at the end, or when the update met a divergence that no rule
explains.

The subset covers many command families (strings, keys, lists, sets, sorted sets, hashes,
HyperLogLog, geo, streams, bitmaps, SORT, server commands, pipelines and transactions with
WATCH, Lua scripts, binary values; memcached's storage, CAS, counters, touch, serializers and
errors, with each pymemcache client class) and holds only tests that end the same way on every
target today. Left out, because they differ today (issue 10's other items, fixed in parallel;
the full run's report lists each with its first failure line):

- redis-py during an update (7.0 to 7.0): ``test_client_kill_filter_by_laddr`` and
  ``test_quit`` hang, and the proxy then answers no new connection; during
  ``test_client_kill_filter_by_user`` the update rolls back ("the follower closed a
  connection"); the ACL tests (``test_acl_*``), ``test_client_kill*``,
  ``test_client_tracking*`` and ``test_xinfo_stream``/``test_xpending*`` log unexpected
  divergences between two identical servers. CLIENT and ACL are left out as families for that
  reason. The blocking commands' tests (``test_blpop``, ``test_blmove``, ``test_bzmpop``,
  ``test_client_unblock`` ... twelve) end as directly during an update too, with no unexpected
  divergence, but are left out for time: their pops wait a second each.
- pymemcache through twinproxy (SINGLE mode and update): ``test_misc`` (``cache_memlimit`` is
  refused as an unknown command) and ``test_get_set_large[...-serde0-True]`` (a value over
  the proxy's max_value resets the connection where memcached answers SERVER_ERROR).
"""

from __future__ import annotations

import pytest
from loadtests.conformance import TARGETS, Outcome, differences, run_target, short
from loadtests.conformance_suites import SUITES

COMMANDS = "tests/test_commands.py::TestRedisCommands::"
REDIS_PY = [COMMANDS + name for name in (
    # strings
    "test_get_and_set", "test_incrbyfloat", "test_mset", "test_getex", "test_getdel",
    "test_setrange", "test_set_multipleoptions",
    # keys
    "test_expire", "test_rename", "test_copy_to_another_database", "test_dump_and_restore",
    "test_scan", "test_type", "test_unlink",
    # lists
    "test_lmove", "test_lpos", "test_linsert", "test_lmpop",
    # sets, including SPOP's random pick (the follower gets the leader's effect)
    "test_sinter", "test_smove", "test_spop", "test_sintercard",
    # sorted sets
    "test_zadd_incr", "test_zrange_params", "test_zpopmin", "test_zunionstore_sum",
    "test_zrangestore", "test_zmpop",
    # hashes, HyperLogLog, geo
    "test_hset_with_multi_key_values", "test_hincrbyfloat", "test_hrandfield", "test_pfmerge",
    "test_geosearch", "test_georadius_store",
    # streams (XADD's clock-based IDs), bitmaps, SORT
    "test_xadd", "test_xreadgroup", "test_xautoclaim", "test_xtrim", "test_bitcount",
    "test_bitop_string_operands", "test_bitfield_operations", "test_sort_store",
    "test_sort_get_groups_two",
    # server
    "test_dbsize", "test_echo", "test_ping", "test_config_set", "test_object", "test_select",
)] + [
    "tests/test_commands.py::TestBinarySave::test_binary_lists",
    "tests/test_commands.py::TestBinarySave::test_large_responses",
    "tests/test_pipeline.py::TestPipeline::test_pipeline",
    "tests/test_pipeline.py::TestPipeline::test_exec_error_in_response",
    "tests/test_pipeline.py::TestPipeline::test_watch_succeed",
    "tests/test_pipeline.py::TestPipeline::test_watch_failure",
    "tests/test_pipeline.py::TestPipeline::test_transaction_callable",
    "tests/test_scripting.py::TestScripting::test_eval_multiply",
    "tests/test_scripting.py::TestScripting::test_evalsha",
    "tests/test_scripting.py::TestScripting::test_script_object_in_pipeline",
]

INTEGRATION = "pymemcache/test/test_integration.py::"
PYMEMCACHE = [INTEGRATION + name for name in (
    "test_get_set[socket-Client--serde0]", "test_get_set[socket-PooledClient-prefix-serde1]",
    "test_get_set_unicode_key[socket-HashClientSingle--serde0]",
    "test_add_replace[socket-Client--serde0]", "test_add_replace[socket-PooledClient--serde1]",
    "test_append_prepend[socket-Client-]", "test_append_prepend[socket-HashClientSingle-prefix]",
    "test_cas[socket-Client-]", "test_cas[socket-PooledClient-prefix]",
    "test_gets[socket-Client-]", "test_gets[socket-HashClientSingle-]",
    "test_delete[socket-Client-]", "test_delete[socket-PooledClient-prefix]",
    "test_incr_decr[socket-Client-]", "test_incr_decr[socket-HashClientSingle-prefix]",
    "test_touch[socket-Client-]", "test_touch[socket-PooledClient-]",
    "test_serialization_deserialization[socket]",
    "test_serde_serialization[socket-Client-serde0]",
    "test_serde_serialization0[socket-PooledClient]",
    "test_serde_serialization2[socket-HashClientSingle]",
    "test_errors[socket-Client]", "test_errors[socket-PooledClient]",
    "test_errors[socket-HashClientSingle]",
    "test_get_set_large[socket-Client-serde1-False]",
)]

SUBSETS = {"redis-py": (REDIS_PY, ("direct-7.0", "single-7.0", "update-7.0-7.0")),
           # The same in database 9: the update puts its shared connections in it.
           "redis-py-db9": (REDIS_PY, ("direct-7.0", "single-7.0", "update-7.0-7.0")),
           "pymemcache": (PYMEMCACHE, ("direct-1.6", "single-1.6", "update-1.6-1.6"))}


@pytest.fixture(scope="module", params=list(SUBSETS))
def suite_runs(request, tmp_path_factory) -> tuple[str, dict[str, Outcome]]:
    """The subset of one suite, run once on each of its targets."""
    name = request.param
    tests, targets = SUBSETS[name]
    workdir = tmp_path_factory.mktemp(f"conformance-{name}")
    runs = {}
    for target in targets:
        runs[target] = run_target(SUITES[name], TARGETS[target], timeout=15, budget=120,
                                  select=tests, workdir=workdir / target, restarts=0)
    return name, runs


def test_the_direct_run_passes_every_test(suite_runs) -> None:
    """The subset means something: each of its tests ran and passed against the server."""
    name, runs = suite_runs
    direct = next(o for t, o in runs.items() if t.startswith("direct"))
    assert not direct.problem, direct.problem
    tests = SUBSETS[name][0]
    outcomes = {short(t): direct.run.results.get(t) for t in tests}
    assert all(r is not None and r.outcome == "passed" for r in outcomes.values()), outcomes


def test_every_test_ends_as_directly(suite_runs) -> None:
    _, runs = suite_runs
    direct = next(o for t, o in runs.items() if t.startswith("direct"))
    for target, outcome in runs.items():
        if target.startswith("direct"):
            continue
        assert not outcome.problem, f"{target}: {outcome.problem}"
        diff = {short(t): f"{before.outcome} -> {after.outcome}: {after.message}"
                for t, (before, after) in differences(outcome, direct).items()}
        assert not diff, f"{target} differs from {direct.target}: {diff}"


def test_the_update_stays_in_mve_without_unexpected_divergences(suite_runs) -> None:
    _, runs = suite_runs
    update = next(o for t, o in runs.items() if t.startswith("update"))
    assert update.update, update.problem
    assert update.update["state"] == "mve", update.update["last_update"]
    assert not update.left_mve and not update.restarts, (update.left_mve, update.restarts)
    assert update.update["unexpected"] == 0, {
        name: g["first"] for name, g in update.update["groups"].items()}
    assert update.update["compared"] > len(SUBSETS[update.suite][0])
