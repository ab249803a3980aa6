"""The ``twinproxy`` command: parse the command line, call into the package, print.

Nothing here decides anything; every command is a few lines over a function that can be tested
without click. Exit statuses follow the usual convention: 0 success, 1 a failure at run time,
2 bad usage or a bad config (the same status click gives a bad option).

Shared plumbing for the commands, present and future:

* :func:`fail` prints ``twinproxy: error: <message>`` on one line to stderr and exits;
* :func:`load_or_exit` loads a config, or fails with the config error (exit 2);
* :data:`config_option` is the ``-c/--config`` option of the commands that talk to a running proxy.
"""

from __future__ import annotations

import json
from typing import NoReturn

import click

from twinproxy import __version__
from twinproxy.config import Config, ConfigError, check_programs, format_address, load_config

EXIT_CONFIG = 2


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
    "-c", "--config", "config_path", required=True, metavar="CONFIG",
    help="The proxy's config file (the same one it was started with).",
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
    click.echo(summary(config))


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
    from twinproxy.service import serve_forever

    status = serve_forever(config, log_format=log_format or config.proxy.log_format)
    raise click.exceptions.Exit(status)


if __name__ == "__main__":
    main(prog_name="twinproxy")
