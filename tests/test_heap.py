"""When the relay gives the heap's free pages back (twinproxy.heap.Trimmer): figures in, a yes or
no out, as the relay's checks would give them (glibc's ``mallinfo2`` for the heap's bytes in
use and free, ``/proc/self/statm`` for the process's resident bytes, its own counters for the
bytes relayed since the check before)."""

from __future__ import annotations

from twinproxy import heap

MB = 1 << 20


def run(trimmer: heap.Trimmer, checks: list[tuple[int, int, int, int, int]]) -> list[bool]:
    """Each check's (used, free, resident, relayed, resident after a trim) in MB: whether it
    trimmed."""
    out = []
    for used, free, resident, moved, after in checks:
        due = trimmer.due(used * MB, free * MB, resident * MB, moved * MB)
        if due:
            trimmer.done(used * MB, after * MB)
        out.append(due)
    return out


def test_a_burst_is_given_back_once_it_is_over() -> None:
    # quiet, the burst going on (much relayed, much freed already), over, and quiet again
    checks = [(6, 1, 38, 0, 0), (150, 64, 250, 400, 0), (20, 700, 600, 500, 0),
              (6, 960, 450, 1, 40), (6, 960, 40, 0, 0), (6, 960, 40, 0, 0)]
    assert run(heap.Trimmer(), checks) == [False, False, False, True, False, False]


def test_nothing_is_given_back_while_the_traffic_goes_on() -> None:
    """A trim of a large free heap stops the loop for tens of milliseconds: not while a load
    with large values keeps going, whatever the figures; it reuses those pages anyway."""
    checks = [(50, 900, 500, 300, 0), (10, 960, 600, 17, 0), (100, 800, 700, 200, 0)]
    assert not any(run(heap.Trimmer(), checks))


def test_little_growth_or_little_free_is_not_worth_a_trim() -> None:
    trimmer = heap.Trimmer()
    trimmer.done(6 * MB, 40 * MB)  # 34 MB resident outside the heap's use
    grown = 40 * MB + heap.TRIM_FROM
    assert not trimmer.due(6 * MB, 100 * MB, grown - 1, 0)
    assert not trimmer.due(6 * MB, heap.TRIM_FROM - 1, grown, 0)
    assert trimmer.due(6 * MB, heap.TRIM_FROM, grown, 0)
    assert not trimmer.due(6 * MB, heap.TRIM_FROM, grown, heap.TRIM_FROM)


def test_a_second_burst_is_given_back_though_the_heaps_figures_did_not_change() -> None:
    """glibc counts trimmed pages as free still: a second burst that takes them back into use
    and frees them between two checks leaves the heap's figures as they were. The process's
    growth says it."""
    checks = [(6, 960, 450, 0, 40), (6, 960, 40, 0, 0), (6, 960, 400, 0, 40), (6, 960, 40, 0, 0)]
    assert run(heap.Trimmer(), checks) == [True, False, True, False]


def test_memory_in_use_when_a_trim_was_made_is_not_taken_for_growth() -> None:
    """A trim with 300 MB of the heap in use leaves the process large; once that use is freed,
    the next quiet check gives it back."""
    checks = [(300, 600, 450, 0, 400), (300, 600, 400, 0, 0), (6, 900, 300, 0, 40)]
    assert run(heap.Trimmer(), checks) == [True, False, True]


def test_a_trim_that_gives_nothing_back_is_not_repeated() -> None:
    """What stays resident is not the heap's free pages (say, Python's own arenas)."""
    checks = [(6, 100, 200, 0, 190), (6, 100, 190, 0, 0), (6, 100, 195, 0, 0)]
    assert run(heap.Trimmer(), checks) == [True, False, False]


def test_asked_for_it_trims_at_the_next_check_whatever_the_figures() -> None:
    trimmer = heap.Trimmer()
    trimmer.soon()
    assert trimmer.due(500 * MB, 0, 0, 1000 * MB)
    trimmer.done(500 * MB, 600 * MB)
    assert not trimmer.due(500 * MB, 0, 600 * MB, 0)


def test_the_figures_come_from_this_c_library_and_kernel() -> None:
    """On glibc and Linux (Debian, where the suite runs) all are there; elsewhere they are 0."""
    used, free = heap.usage()
    assert used > 0 and free >= 0
    assert heap.resident() > 1 * MB
    assert heap.release() in (True, False)
