"""The soak (``loadtests/soak.py``) in its short form: 3 update cycles under the checking load.

``twinproxy serve`` with two managed Redis 7.0 versions; update, MVE, rollback; update, MVE,
promote (a cutover); then an update the other way and a rollback, while clients (one request
at a time, and pipelined) check every reply. Checked as the full run checks it: no client error,
no acknowledged write lost, every update ended as asked with the expected version serving, one
redis-server left between updates, the same number of file descriptors after every cycle, and
no growth of the proxy's memory beyond the soak's noise limit. The 20-cycle figures are in
``loadtests/reports/soak.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "loadtests"))

import soak

pytestmark = pytest.mark.slow


def test_short_soak() -> None:
    args = soak.parse(["--short"])
    cycles, failures, figures = soak.run(args)
    ran = [c for c in cycles if c.number > 0]
    assert [(c.asked, c.direction, c.outcome, c.serving) for c in ran] == [
        ("rollback", "a -> b", "rolled-back", "a"),
        ("promote", "a -> b", "cutover", "b"),
        ("rollback", "b -> a", "rolled-back", "b"),
    ]
    assert figures["client errors"] == 0, failures
    assert figures["writes lost"] == 0
    assert figures["tracebacks"] == 0
    assert all(c.compared > 0 and c.ops > 0 for c in ran), soak.table(cycles)
    assert all(c.servers == 1 for c in ran), soak.table(cycles)
    assert len({c.fds for c in ran}) == 1, soak.table(cycles)
    assert figures["rss rise MB"] <= args.rss_limit, soak.table(cycles)
    assert failures == []
