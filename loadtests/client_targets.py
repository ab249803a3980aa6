"""A client library's load against Redis or memcached directly, twinproxy in SINGLE mode and
twinproxy during an update held in MVE, rounds interleaved: what ``pymemcache_noreply.py`` and
``redispy_pipelines.py`` share (each keeps its own clients and table)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from bench_matrix import held_config
from bench_mve import enter_mve, leave_mve, serve_process, status

TARGETS = ("direct", "SINGLE", "MVE")


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
