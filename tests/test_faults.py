"""The fault matrix (``loadtests/faults.py``), every row in its short form.

Each row runs ``twinproxy serve`` with two managed Redis 7.0 (or memcached) versions, a checking
client and the row's fault (slow readers, huge values, a follower or leader killed or stopped,
the proxy stopped during an update by SIGTERM or SIGKILL, a new version that will not start, a
leader that refuses connections, a full disk while the sync backlog spills, an error after a
memcached noreply from 100 clients, idle connections flooding the control API, more clients
than the open-files limit allows, garbage after a valid request, a request of 1.1 million
arguments), and checks what the row promises: no
error for a client the fault was not about, no acknowledged write lost, the update ended as it
should (with its reason), no traceback in the proxy's log, the servers that should run and no
other, and what the row checks itself. The figures are in ``loadtests/reports/faults.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "loadtests"))

import faults

pytestmark = pytest.mark.slow

ROWS = {row.name: row for row in faults.rows(short=True)}


@pytest.mark.parametrize("name", list(ROWS))
def test_fault_matrix_row(name: str) -> None:
    row = ROWS[name]
    result = faults.run_row(row, short=True)
    if "skipped" in result:
        pytest.skip(result["skipped"])
    assert result["client errors"] == 0, result["samples"]
    assert result["acknowledged writes lost"] == 0
    assert result["tracebacks"] == 0
    assert result["peak MB"] < 512, result
    if row.outcome is not None:
        assert result["state"].startswith(f"single ({row.outcome}"), result["state"]
    elif row.stops is not None:
        assert result["state"].startswith(row.stops), result["state"]
    else:
        assert result["state"] == ("mve" if row.update else "single"), result["state"]
    assert result["failures"] == [], result
