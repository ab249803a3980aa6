"""The ``twinproxy`` command: parse the command line, call into the package, print.

Nothing here decides anything; every command is a few lines over a function that can be tested
without click. Exit statuses follow the usual convention, extended for the commands that talk to a
running proxy:

* 0 success (for ``update --wait``: the update cut over);
* 1 a failure at run time: the proxy refused a transition that is not possible now (409, e.g.
  ``promote`` with no update in progress), failed (5xx), or, for ``update --wait``, rolled back;
* 2 bad usage or a bad config (the same status click gives a bad option), including what the
  proxy rejects as a bad request (400, e.g. ``update --to`` a version the config does not have)
  and a missing or wrong token (401): retrying the same command cannot help;
* 3 the proxy cannot be reached: nothing listens, it does not answer in time, or it answers
  something that is not its API.

Each failure prints one line, ``twinproxy: error: <reason>``, on stderr.

Shared plumbing for the commands:

* :func:`fail` prints ``twinproxy: error: <message>`` on one line to stderr and exits;
* :func:`load_or_exit` loads a config, or fails with the config error (exit 2);
* :data:`config_option` is the ``-c/--config`` option of the commands that talk to a running proxy
  (``TWINPROXY_CONFIG`` when absent); :func:`control_options` adds ``--control`` and ``--token``,
  and :class:`ControlClient` sends their requests.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import click

from twinproxy import __version__
from twinproxy.config import Config, ConfigError, check_programs, format_address, load_config

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3


def fail(message: str, status: int = 1) -> NoReturn:
    """Print ``twinproxy: error: <message>`` to stderr as one line and exit with ``status``."""
    one_line = " ".join(message.splitlines())
    click.echo(f"twinproxy: error: {one_line}", err=True)
    raise click.exceptions.Exit(status)


def warn(message: str) -> None:
    click.echo(f"twinproxy: warning: {message}", err=True)


def load_or_exit(path: str) -> Config:
    """The config at ``path``; on any problem, its one-line message and exit status 2."""
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)


config_option = click.option(
    "-c", "--config", "config_path", metavar="CONFIG", envvar="TWINPROXY_CONFIG",
    help="The proxy's config file (the same one it was started with); its proxy.control "
         "entry says where the proxy listens. Default: $TWINPROXY_CONFIG.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="twinproxy")
def main() -> None:
    """Update stateful servers live behind a TCP proxy, with multi-version execution."""


@main.command()
@click.argument("config_path", metavar="CONFIG")
def check(config_path: str) -> None:
    """Validate CONFIG and the programs it runs; print a summary.

    Exits 0 when the config is valid, 2 with the file, key and reason when it is not.
    """
    config = load_or_exit(config_path)
    try:
        check_programs(config)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)
    for message in config.warnings:
        warn(f"{config.path}: {message}")
    for message in update_refusals(config):
        warn(f"{config.path}: {message}")
    click.echo(summary(config))


def update_refusals(config: Config) -> list[str]:
    """Updates from the start version that the config's sync method would refuse when asked
    (memcache-copy: another memory limit), told now rather than when the operator runs
    ``update``. A method not built yet is not reported: ``update`` says so itself."""
    from twinproxy.statesync import METHODS  # its methods are loaded only when one is asked

    method = METHODS[config.update.sync]
    if method.module is None:
        return []
    start = config.versions[config.proxy.start]
    out = []
    for name, version in config.versions.items():
        reason = None if name == start.name else method.load().check(start, version)
        if reason is not None:
            out.append(f"update.sync: an update from {start.name} to {name} would be refused: "
                       f"{reason}")
    return out


def summary(config: Config) -> str:
    """What ``check`` prints: enough to see at a glance that the file says what was meant."""
    proxy, update = config.proxy, config.update
    width = max(len(name) for name in config.versions)
    lines = [
        f"{config.path}: OK",
        f"  listen     {format_address(proxy.listen)} ({proxy.protocol})",
        f"  control    {format_address(proxy.control)}",
        f"  start      {proxy.start}",
    ]
    for i, (name, version) in enumerate(config.versions.items()):
        label = "versions" if i == 0 else ""
        if version.command is not None:
            detail = f"managed   {' '.join(_shown(word) for word in version.command)}"
        elif version.forked:
            detail = "forked    by the running service at an update"
        else:
            detail = f"external  {format_address(version.address)}"
        lines.append(f"  {label:<9}  {name:<{width}}  {detail}")
    lines.append(
        f"  update     sync {update.sync}, warm-up {update.warmup_seconds:g}s / "
        f"{update.warmup_requests} requests, on divergence {update.on_divergence}, "
        f"after cutover {update.after_cutover}"
    )
    lines.append(f"  rules      {len(config.rules)}")
    return "\n".join(lines)


def _shown(word: str) -> str:
    """A command word as a reader would type it: quoted only when empty or spaced, and cut
    short when it is a whole script."""
    if len(word) > 40:
        word = f"{word[:30]}... ({len(word)} chars)"
    return json.dumps(word) if not word or any(c.isspace() for c in word) else word


@main.command()
@click.argument("config_path", metavar="CONFIG")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="Override proxy.log_format from the config.")
def serve(config_path: str, log_format: str | None) -> None:
    """Run the proxy and the start version in the foreground, until SIGTERM or Ctrl-C."""
    config = load_or_exit(config_path)
    from twinproxy.control import insecure_control
    from twinproxy.service import serve_forever

    problem = insecure_control(config.proxy)
    if problem:
        fail(f"{config.path}: {problem}", EXIT_CONFIG)
    # Start-up failures (a server that will not start, a busy address or control socket) are
    # logged by serve_forever as one line in the configured log format, and exit 1.
    status = serve_forever(config, log_format=log_format or config.proxy.log_format)
    raise click.exceptions.Exit(status)


# ---- commands that talk to a running proxy --------------------------------------------------

REQUEST_TIMEOUT = 10.0
# POST /update returns once the new version is started, which may take its ready_timeout.
UPDATE_TIMEOUT = 120.0
POLL_INTERVAL = 0.5


class ControlClient:
    """Requests to one proxy's admin API, failing the command the way the exit statuses say."""

    def __init__(self, address: str | tuple[str, int], token: str | None):
        self.address = address
        self.token = token

    def call(self, method: str, path: str, body: Any = None,
             timeout: float = REQUEST_TIMEOUT) -> tuple[int, Any]:
        """The status and JSON payload of one request; exits 2 on 401, 3 when unreachable."""
        import trio

        from twinproxy import httpclient

        headers = [("Authorization", f"Bearer {self.token}")] if self.token else []
        request = functools.partial(httpclient.request, self.address, method, path,
                                    json_body=body, headers=headers, timeout=timeout)
        try:
            response = trio.run(request)
            payload = response.json()
        except httpclient.HTTPError as exc:
            fail(f"cannot reach the proxy: {exc}", EXIT_UNREACHABLE)
        if response.status == 401:
            how = "the token given was refused" if self.token else "it needs a token"
            fail(f"{httpclient.format_target(self.address)}: {how} (--token or "
                 "TWINPROXY_TOKEN)", EXIT_CONFIG)
        return response.status, payload

    def ok(self, method: str, path: str, body: Any = None,
           timeout: float = REQUEST_TIMEOUT) -> Any:
        """The payload of a successful request; a refusal exits 2 (400) or 1 (anything else)."""
        return self.ok_status(method, path, body, timeout)[1]

    def ok_status(self, method: str, path: str, body: Any = None,
                  timeout: float = REQUEST_TIMEOUT) -> tuple[int, Any]:
        """Like :meth:`ok`, with the status too (200 and 202 mean different things for a
        promote or rollback)."""
        status, payload = self.call(method, path, body, timeout)
        if status >= 400:
            reason = payload.get("error") if isinstance(payload, dict) else None
            fail(str(reason or f"the proxy answered {status}"),
                 EXIT_CONFIG if status == 400 else EXIT_FAILED)
        return status, payload


def control_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``-c/--config``, ``--control`` and ``--token``, turned into a ``client`` argument."""

    @config_option
    @click.option("--control", "control", metavar="ADDR",
                  help="The control address: a unix socket path (with a '/') or host:port. "
                       "Overrides the config's proxy.control.")
    @click.option("--token", "token", metavar="TOKEN",
                  help="The bearer token for a TCP control address. Default: the config's "
                       "proxy.control_token, then $TWINPROXY_TOKEN.")
    @functools.wraps(command)
    def wrapper(config_path: str | None, control: str | None, token: str | None,
                **kwargs: Any) -> Any:
        return command(client=control_client(config_path, control, token), **kwargs)

    return wrapper


def control_client(config_path: str | None, control: str | None, token: str | None
                   ) -> ControlClient:
    """Where the proxy is and how to authenticate, from the options, the config and the
    environment (in that order)."""
    from twinproxy.httpclient import parse_address

    address: str | tuple[str, int]
    config = load_or_exit(config_path) if config_path else None
    if control:
        try:
            address = parse_address(control)
        except ValueError as exc:
            fail(f"--control: {exc}", EXIT_CONFIG)
    elif config is not None:
        address = config.proxy.control
    else:
        fail("which proxy? give -c CONFIG or --control ADDR, or set TWINPROXY_CONFIG",
             EXIT_CONFIG)
    if token is None and config is not None:
        token = config.proxy.control_token
    if token is None:
        token = os.environ.get("TWINPROXY_TOKEN") or None
    if isinstance(address, str):
        token = None  # a unix socket is protected by its file mode; no token is checked there
    return ControlClient(address, token)


@main.command()
@control_options
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
def status(client: ControlClient, as_json: bool) -> None:
    """Show the proxy's state, versions, connections, comparisons and warm-up."""
    doc = client.ok("GET", "/status")
    click.echo(json.dumps(doc, indent=2) if as_json else format_status(doc))


def format_status(doc: dict[str, Any]) -> str:
    """The status document as an operator reads it: one aligned line per fact."""
    lines = [("state", _state_line(doc))]
    for role in ("leader", "follower"):
        version = doc.get(role)
        if version:
            lines.append((role, _version_line(version)))
    lines += [
        ("listen", f"{doc.get('listen')} ({doc.get('protocol')})"),
        ("uptime", _duration(doc.get("uptime"))),
        ("connections", str(doc.get("connections", 0))),
        ("compared", f"{doc.get('compared', 0)} replies"),
        ("divergences", str(doc.get("divergences", 0))),
    ]
    if doc.get("sync"):
        lines.append(("sync", _sync_line(doc["sync"])))
    if doc.get("warmup"):
        lines.append(("warm-up", _warmup_line(doc["warmup"])))
    last = doc.get("last_update")
    if last:
        text = f"to {last.get('to')}: {last.get('outcome')}"
        if last.get("reason"):
            text += f" ({last['reason']})"
        lines.append(("last update", text))
    width = max(len(label) for label, _ in lines)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in lines)


def _state_line(doc: dict[str, Any]) -> str:
    state = str(doc.get("state"))
    last = doc.get("last_update") or {}
    if state != "single" and last.get("outcome") == "in-progress":
        return f"{state} (update to {last.get('to')})"
    return state


def _version_line(version: dict[str, Any]) -> str:
    parts = [str(version.get("version"))]
    if version.get("pid"):
        parts.append(f"pid {version['pid']}")
    parts.append(str(version.get("address") or "no address"))
    parts.append("up" if version.get("up") else "DOWN")
    return "  ".join(parts)


def _sync_line(sync: dict[str, Any]) -> str:
    done, total = sync.get("done", 0), sync.get("total") or 0
    return f"{done}/{total}" + (f" ({100 * done / total:.0f}%)" if total else "")


def _warmup_line(warmup: dict[str, Any]) -> str:
    parts = []
    if warmup.get("seconds_left") is not None:
        parts.append(f"{warmup['seconds_left']:.1f}s")
    if warmup.get("requests_left") is not None:
        parts.append(f"{warmup['requests_left']} requests")
    return " and ".join(parts) + " left" if parts else "in progress"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{s:02d}s"
    return f"{minutes}m{s:02d}s" if minutes else f"{seconds:.1f}s"


@main.command()
@control_options
@click.option("--to", "to", required=True, metavar="NAME", help="The version to update to.")
@click.option("--wait", is_flag=True,
              help="Follow the update until it ends: exit 0 on cutover, 1 on rollback.")
def update(client: ControlClient, to: str, wait: bool) -> None:
    """Bring up version NAME beside the running one and start comparing them."""
    doc = client.ok("POST", "/update", {"to": to}, timeout=UPDATE_TIMEOUT)
    click.echo(f"update to {to} started: {_state_line(doc)}")
    if wait:
        raise click.exceptions.Exit(wait_for_update(client, to))


def wait_for_update(client: ControlClient, to: str) -> int:
    """Poll ``/status`` until the update to ``to`` ends; show progress; the exit status."""
    progress = Progress(sys.stdout.isatty())
    try:
        while True:
            doc = client.ok("GET", "/status")
            last = doc.get("last_update") or {}
            if last.get("to") == to and last.get("outcome") in ("cutover", "rolled-back"):
                break
            progress.show(doc)
            time.sleep(POLL_INTERVAL)
    except KeyboardInterrupt:
        progress.close()
        fail(f"stopped waiting; the update to {to} goes on (see twinproxy status)", 130)
    finally:
        progress.close()
    if last["outcome"] == "cutover":
        click.echo(f"cutover: {to} serves now ({_state_line(doc)})")
        return 0
    fail(f"update to {to} rolled back: {last.get('reason') or 'no reason given'}", EXIT_FAILED)


class Progress:
    """State sync, then warm-up: progress bars on a terminal, a line per change otherwise."""

    def __init__(self, tty: bool):
        self.tty = tty
        self.phase: str | None = None
        self.bar: Any = None
        self.shown = 0
        self.last_line = ""
        self.last_time = 0.0
        self.warmup_start: dict[str, float] = {}

    def show(self, doc: dict[str, Any]) -> None:
        state = str(doc.get("state"))
        if state == "syncing" and doc.get("sync"):
            sync = doc["sync"]
            self._phase("sync", "state sync", int(sync.get("total") or 0))
            self._advance(int(sync.get("done") or 0), f"sync: {_sync_line(sync)}")
        elif state == "mve" and doc.get("warmup"):
            warmup = doc["warmup"]
            self._phase("warmup", "warm-up", 1000)
            self._advance(int(1000 * self._warmup_fraction(warmup)),
                          f"warm-up: {_warmup_line(warmup)}")
        else:
            self._phase(state, state, 0)
            self._line(f"state: {state}")

    def _warmup_fraction(self, warmup: dict[str, Any]) -> float:
        """How far the warm-up is, by the measure that is furthest behind."""
        fractions = []
        for key in ("seconds_left", "requests_left"):
            left = warmup.get(key)
            if isinstance(left, int | float):
                start = self.warmup_start.setdefault(key, max(float(left), 1e-9))
                fractions.append(1.0 - min(float(left), start) / start)
        return min(fractions) if fractions else 0.0

    def _phase(self, phase: str, label: str, length: int) -> None:
        if phase == self.phase:
            return
        self.close()
        self.phase = phase
        if self.tty and length > 0:
            self.bar = click.progressbar(length=length, label=label, show_eta=False)
            self.bar.__enter__()
            self.shown = 0

    def _advance(self, done: int, line: str) -> None:
        if self.bar is not None:
            step = max(0, min(done, self.bar.length) - self.shown)
            if step:
                self.bar.update(step)
                self.shown += step
        else:
            self._line(line)

    def _line(self, line: str) -> None:
        """Print a line when it changed, and progress lines at most every 2 seconds."""
        now = time.monotonic()
        if line == self.last_line or (self.last_line.split(":")[0] == line.split(":")[0]
                                      and now - self.last_time < 2.0):
            return
        self.last_line, self.last_time = line, now
        click.echo(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@main.command()
@control_options
def promote(client: ControlClient) -> None:
    """Cut over to the new version now, skipping the rest of the warm-up; print the state the
    cutover led to (exit 1 if the update rolled back instead)."""
    transition(client, "promote")


@main.command()
@control_options
def rollback(client: ControlClient) -> None:
    """Drop the new version and keep serving from the old one; print the state it led to."""
    transition(client, "rollback")


def transition(client: ControlClient, name: str) -> None:
    """POST /promote or /rollback and print the new state: the proxy answers once the
    transition is done (200), or with the state so far when it takes longer than the config's
    bounds allow (202), which is said so."""
    status, doc = client.ok_status("POST", f"/{name}", timeout=UPDATE_TIMEOUT)
    line = format_transition(doc)
    if status == 202:
        line += f"; the {name} is still in progress (see twinproxy status)"
    click.echo(line)
    last = doc.get("last_update") or {}
    if name == "promote" and last.get("outcome") == "rolled-back":
        fail(f"the update to {last.get('to')} rolled back instead: "
             f"{last.get('reason') or 'no reason given'}", EXIT_FAILED)


def format_transition(doc: dict[str, Any]) -> str:
    """The state after a promote or rollback, in one line: ``single: leader v7; update to v7:
    cutover``."""
    roles = [f"{role} {doc[role].get('version')}" for role in ("leader", "follower")
             if doc.get(role)]
    line = f"{doc.get('state')}: {', '.join(roles) or 'no version'}"
    last = doc.get("last_update")
    if last:
        line += f"; update to {last.get('to')}: {last.get('outcome')}"
        if last.get("reason"):
            line += f" ({last['reason']})"
    return line


@main.command()
@control_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per divergence and line.")
@click.option("--follow", "-f", is_flag=True, help="Keep waiting for new divergences.")
@click.option("--since", type=click.IntRange(min=0), default=0, metavar="ID",
              help="Only divergences after this id.")
def divergences(client: ControlClient, as_json: bool, follow: bool, since: int) -> None:
    """Show what the versions disagreed on: each request and a diff of both replies."""
    stopped = []
    if follow:
        # Ctrl-C ends the following at the next poll, never in the middle of one (where it
        # could land in the HTTP client's event loop as it starts or ends, and be lost).
        signal.signal(signal.SIGINT, lambda signum, frame: stopped.append(signum))
    while not stopped:
        page = client.ok("GET", f"/divergences?since={since}&limit=1000")
        items = page.get("divergences") or []
        for item in items:
            click.echo(json.dumps(item) if as_json else format_divergence(item))
        since = page.get("next", since)
        if len(items) >= 1000:
            continue
        if not follow:
            return
        for _ in range(10):
            if stopped:
                break
            time.sleep(0.1)


def format_divergence(d: dict[str, Any]) -> str:
    """One divergence: a header line, the request, and the replies as a unified diff."""
    when = datetime.datetime.fromtimestamp(d.get("time", 0), datetime.UTC)
    kind = "expected" if d.get("expected") else "UNEXPECTED"
    rule = f", rule {d['rule']}" if d.get("rule") else ""
    lines = [f"#{d.get('id')}  {when:%Y-%m-%d %H:%M:%S}Z  update {d.get('update')}  "
             f"connection {d.get('connection')}  {kind}{rule}: {d.get('reason')}",
             "  request: " + " ".join(_visible(w) for w in d.get("request", []))]
    leader = _reply_lines(d.get("leader", ""))
    follower = _reply_lines(d.get("follower", ""))
    for line in difflib.unified_diff(leader, follower, "leader", "follower", lineterm="", n=2):
        lines.append(f"  {line}")
    if d.get("rules_tried"):
        lines.append(f"  rules tried: {', '.join(d['rules_tried'])}")
    return "\n".join(lines) + "\n"


def _reply_lines(reply: str) -> list[str]:
    """A reply's lines, with protocol line ends dropped and other control bytes escaped."""
    lines = reply.split("\r\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [_visible(line) for line in lines] or ["(empty)"]


def _visible(text: str) -> str:
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


if __name__ == "__main__":
    main(prog_name="twinproxy")
