"""The example key-value store (examples/kvstore) as a real service for the tests: started as
its users start it (``python -m examples.kvstore``) on free loopback ports, and stopped with
every process it forked, also when a test fails."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import free_port, stop_process, wait_ready
from twinproxy.keeper import descendants

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class KVStore:
    port: int
    endpoint: int
    proc: subprocess.Popen
    pids: set[int] = field(default_factory=set)
    """Processes the service forked that the test learnt of (they outlive their parent)."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.endpoint}/twinproxy/update"

    def forked(self) -> None:
        """Note the processes the service forked so far (call while the parent lives)."""
        self.pids.update(descendants(self.proc.pid))


@contextlib.contextmanager
def kvstore(keys: int = 0, faults: bool = False) -> Iterator[KVStore]:
    """Version v1 of the store, ``keys`` keys loaded (``key:N`` = ``value:N``); with
    ``faults``, the versions whose transforms crash, raise or hang are registered too."""
    port, endpoint = free_port(), free_port()
    argv = [sys.executable, "-m", "examples.kvstore", "--port", str(port),
            "--endpoint", f"127.0.0.1:{endpoint}", "--keys", str(keys)]
    if faults:
        argv.append("--faults")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env)
    store = KVStore(port, endpoint, proc)
    try:
        wait_ready(port, b"PING\r\n", b"+PONG", proc, timeout=30)
        yield store
    finally:
        if proc.poll() is None:
            store.forked()
        stop_process(proc)
        for pid in store.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def config(path: Path, store: KVStore, *, forked: dict[str, str] | None = None,
           update: str = "", endpoint: str | None = None) -> Path:
    """configs/kvstore.toml as shipped, on free ports and a private control socket, with the
    store's addresses; ``forked`` adds (or replaces) forked versions' bodies, ``update`` lines
    of ``[update]`` (replacing the shipped ones of the same key)."""
    text = (ROOT / "configs" / "kvstore.toml").read_text()
    text = text.replace('listen = "127.0.0.1:6390"', f'listen = "127.0.0.1:{free_port()}"')
    text = text.replace('control = "/tmp/twinproxy-kvstore.sock"',
                        f'control = "{path.parent / "kv.sock"}"')
    text = text.replace('address = "127.0.0.1:7379"', f'address = "{store.address}"')
    text = text.replace('"http://127.0.0.1:7380/twinproxy/update"',
                        f'"{endpoint or store.endpoint_url}"')
    for line in update.splitlines():
        key = line.split("=")[0].strip()
        lines = text.splitlines()
        at = next((i for i, old in enumerate(lines) if old.startswith(f"{key} =")), None)
        if at is None:
            at = lines.index("[update]") + 1
            lines.insert(at, line)
        else:
            lines[at] = line
        text = "\n".join(lines) + "\n"
    extra = "".join(f"\n[versions.{name}]\nforked = true\n{body}\n"
                    for name, body in (forked or {}).items())
    text = text.replace("\n[update]\n", f"{extra}\n[update]\n")
    path.write_text(text)
    return path
