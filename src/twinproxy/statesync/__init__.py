"""State sync methods: how a new version gets the running version's state.

:data:`METHODS` is the registry, one line per method: its config name, the module under
``twinproxy.statesync`` that holds it (None for a method the config accepts but that is not
built yet: an update with it is refused when it starts), and the protocols it works with (None:
any). The config loader takes the names and protocols from here; the service and the lifecycle
take the method. The interface every method implements is :class:`~.base.StateSync`; a
method's module names its class ``METHOD``.

A method's module is imported when an update first needs it, by name, the way
:func:`twinproxy.protocols.get_codec` finds a codec: every command-line call loads a config and
so reads this registry, and a method's module brings in trio and its protocol's codec, which
would more than double the time a ``twinproxy status`` takes to start.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from twinproxy.statesync.base import (
    Blocked,
    Started,
    StateSync,
    SyncError,
    SyncJob,
    SyncPoint,
    Version,
)

__all__ = [
    "METHODS", "Blocked", "Method", "Started", "StateSync", "SyncError", "SyncJob", "SyncPoint",
    "Version",
]


@dataclass(frozen=True)
class Method:
    """One line of the registry."""

    name: str
    module: str | None
    protocols: tuple[str, ...] | None = None

    def works_with(self, protocol: str) -> bool:
        return self.protocols is None or protocol in self.protocols

    def refusal(self, protocol: str, leader: Version, target: Version) -> str | None:
        """Why an update from ``leader`` to ``target`` cannot start with this method, or None:
        the method is not built yet, or its own :meth:`~.base.StateSync.check` refuses."""
        if self.module is None:
            return f"sync method {self.name!r} is not available for {protocol} yet"
        return self.load().check(leader, target)

    def load(self) -> type[StateSync]:
        """The method's class.

        Raises:
            LookupError: the method is not built yet (:meth:`refusal` says so first).
        """
        if self.module is None:
            raise LookupError(f"sync method {self.name!r} is not built yet")
        return importlib.import_module(f"twinproxy.statesync.{self.module}").METHOD


METHODS: dict[str, Method] = {method.name: method for method in (
    Method("redis-fork", "redis_fork", protocols=("redis",)),
    Method("memcache-copy", "memcache_copy", protocols=("memcache",)),
    Method("files", "files", protocols=("ftp",)),
    Method("cooperative", "cooperative"),
    Method("none", "none"),
)}
