"""A client library's load against Redis or memcached directly, twinproxy in SINGLE mode and
twinproxy during an update held in MVE, rounds interleaved: what ``pymemcache_noreply.py`` and
``redispy_pipelines.py`` share (each keeps its own clients and table)."""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench_matrix import held_config
from bench_mve import enter_mve, leave_mve, serve_process, status

TARGETS = ("direct", "SINGLE", "MVE")


def arguments(description: str) -> argparse.ArgumentParser:
    """The options both benchmarks take: ``--processes``, ``--seconds``, ``--rounds``,
    ``--src`` and ``--report``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--src", help="another checkout's src directory to measure instead")
    parser.add_argument("--report", help="also write the table to this markdown file")
    return parser


def together(worker: Callable[[tuple], int], jobs: list[tuple]) -> float:
    """Per second, what ``worker`` counted for each job, each in a process of its own at once
    (a Python client in one process would be the limit, not the proxy)."""
    with multiprocessing.Pool(len(jobs)) as pool:
        start = time.perf_counter()
        done = sum(pool.map(worker, jobs))
        return done / (time.perf_counter() - start)


def open_targets(stack: contextlib.ExitStack, d: Path, protocol: str, direct: int,
                 src: str | None) -> tuple[dict[str, int], Path]:
    """The three targets' ports (``direct``: a server already running), the proxies started
    on ``stack`` and the MVE one brought into MVE; and the MVE one's config."""
    ports = {"direct": direct}
    mve = Path()
    for i, target in enumerate(TARGETS[1:]):
        (d / str(i)).mkdir()
        cfg = held_config(d / str(i), protocol, "")
        ports[target], _ = stack.enter_context(serve_process(cfg, src))
        if target == "MVE":
            enter_mve(cfg, src)
            stack.callback(leave_mve, cfg, src)
            mve = cfg
    return ports, mve


def interleaved(ports: dict[str, int], variants: tuple, rounds: int,
                measure: Callable[[int, object], float]) -> dict[tuple, list[float]]:
    """``measure(port, variant)`` for every target and variant, ``rounds`` times, the targets'
    order turned each round (the machine's speed drifts): {(variant, target): figures}."""
    figures: dict[tuple, list[float]] = {}
    for round_ in range(rounds):
        for target in TARGETS if round_ % 2 == 0 else TARGETS[::-1]:
            for variant in variants:
                got = measure(ports[target], variant)
                figures.setdefault((variant, target), []).append(got)
                print(f"  {variant} {target}: {got:,.0f} per second", flush=True)
    return figures


def still_held(mve: Path, src: str | None) -> None:
    """The MVE target must still be in MVE with no divergence, or its figures are not MVE's.

    Raises:
        RuntimeError: it is not.
    """
    st = status(mve, src)
    if st["state"] != "mve" or st["divergences"]:
        raise RuntimeError(f"not held in MVE with no divergence: {st}")


def table(figures: dict[tuple, list[float]], rows: dict, what: str) -> list[str]:
    """The table of medians: a row per variant (``rows``: variant -> its label), ``what``
    naming the rows' column."""
    lines = [f"| {what} | direct | SINGLE | MVE | MVE/SINGLE |", "|---|---|---|---|---|"]
    for variant, label in rows.items():
        med = {t: statistics.median(figures[(variant, t)]) for t in TARGETS}
        lines.append(f"| {label} | {med['direct']:,.0f} | {med['SINGLE']:,.0f} | "
                     f"{med['MVE']:,.0f} | {med['MVE'] / med['SINGLE']:.2f} |")
    return lines
