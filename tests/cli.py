"""Running the ``twinproxy`` command in tests: the one runner every test that runs it uses.

- :func:`twinproxy` runs a command to completion as ``python -m twinproxy.cli ARGS`` and gives
  back its exit status, stdout and stderr; :func:`run_all` runs many such calls at once, since
  interpreter start-up is most of a short command's cost.
- :func:`started` starts a command that runs until something ends it (``divergences --follow``,
  ``update --wait``), and :func:`serve_process` starts ``twinproxy serve`` and waits until it
  serves. Either is stopped when its block ends (SIGTERM, then SIGKILL after a grace period), also
  when the test fails.
- :func:`invoke` runs the command inside the test process with click's runner: the same code and
  exit status, stdout and stderr kept apart, without starting an interpreter.

Every form runs without the ``TWINPROXY_CONFIG`` and ``TWINPROXY_TOKEN`` of the environment the
tests run in, so a command sees only the settings its test gives it.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import pty
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from click.testing import CliRunner, Result

from tests.servers import stop_process
from twinproxy.cli import main
from twinproxy.config import load_config

PYTHON_M = (sys.executable, "-m", "twinproxy.cli")
"""How the command is run unless a test says otherwise: the code of this checkout."""

OPERATOR_SETTINGS = ("TWINPROXY_CONFIG", "TWINPROXY_TOKEN")

K = TypeVar("K")
T = TypeVar("T")


def environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a command runs in: the tests' own, without :data:`OPERATOR_SETTINGS`,
    unbuffered (so output shows up while the command runs), and ``env`` on top."""
    base = {k: v for k, v in os.environ.items() if k not in OPERATOR_SETTINGS}
    return {**base, "PYTHONUNBUFFERED": "1", **(env or {})}


def twinproxy(*args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None,
              timeout: float = 60, program: Sequence[str] = PYTHON_M
              ) -> subprocess.CompletedProcess[str]:
    """Run ``twinproxy ARGS`` to completion and return its exit status (``returncode``),
    ``stdout`` and ``stderr`` as text.

    Args:
        env: variables added to :func:`environment`.
        cwd: the directory it runs in (the test's own if not given).
        timeout: seconds it may take; after that it is killed and ``TimeoutExpired`` is raised.
        program: how to start it; the installed console script, say, instead of :data:`PYTHON_M`.

    It does not check the exit status: each test asserts the one it expects.
    """
    return subprocess.run([*program, *args], capture_output=True, text=True, timeout=timeout,
                          env=environment(env), cwd=cwd)


def run_all(calls: Mapping[K, Callable[[], T]]) -> dict[K, T]:
    """Make every call of ``calls`` at once, each in a thread, and return the results under the
    same keys. The calls are usually :func:`twinproxy` with its arguments bound
    (``functools.partial``): a module's short commands, run once for all its tests."""
    with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as pool:
        futures = {key: pool.submit(call) for key, call in calls.items()}
        return {key: future.result() for key, future in futures.items()}


class Process(subprocess.Popen):
    """A twinproxy command running in the background, as :func:`started` gives it.

    Threads read its stdout and stderr as they come (it never blocks on a full pipe);
    :attr:`stdout_text` and :attr:`stderr_text` hold what it wrote so far. Given a ``log``, its
    stderr goes to that file instead and its stdout is dropped (``twinproxy serve``). Given
    ``terminal``, stdin, stdout and stderr are one pseudo-terminal, as an operator's shell would
    give it, and everything shown on it is read as stdout.
    """

    def __init__(self, args: Sequence[str], *, env: dict[str, str], cwd: Path | None = None,
                 log: Path | None = None, terminal: bool = False):
        assert not (log and terminal), "a log or a terminal, not both"
        self.log = log
        self._output: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        self._changed = threading.Condition()
        self._readers: list[threading.Thread] = []
        ours: dict[str, int] = {}  # the end this process reads, for each stream read
        with contextlib.ExitStack() as theirs:  # the command's ends, closed here once it has them
            if terminal:
                ours["stdout"], tty = pty.openpty()
                theirs.callback(os.close, tty)
                streams: dict = {"stdin": tty, "stdout": tty, "stderr": tty}
            elif log is not None:
                streams = {"stdout": subprocess.DEVNULL,
                           "stderr": theirs.enter_context(open(log, "w"))}
            else:
                streams = {}
                for name in ("stdout", "stderr"):
                    ours[name], streams[name] = os.pipe()
                    theirs.callback(os.close, streams[name])
            try:
                super().__init__(args, env=env, cwd=cwd, **streams)
            except BaseException:
                for fd in ours.values():
                    os.close(fd)
                raise
        # The streams read to their end; those not read (dropped, or in the log) count as ended.
        self._ended = {"stdout", "stderr"} - ours.keys()
        for name, fd in ours.items():
            reader = threading.Thread(target=self._read, args=(name, fd), daemon=True,
                                      name=f"twinproxy {name}")
            reader.start()
            self._readers.append(reader)

    def _read(self, name: str, fd: int) -> None:
        try:
            while True:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: no process has the terminal open any more
                    data = b""
                with self._changed:
                    if data:
                        self._output[name].append(data)
                    else:
                        self._ended.add(name)
                    self._changed.notify_all()
                if not data:
                    return
        finally:
            os.close(fd)

    def _text(self, name: str) -> str:
        with self._changed:
            return b"".join(self._output[name]).decode(errors="replace")

    @property
    def stdout_text(self) -> str:
        """What the command wrote to stdout so far (or showed on its terminal)."""
        return self._text("stdout")

    @property
    def stderr_text(self) -> str:
        """What the command wrote to stderr so far; empty with a ``log`` or a ``terminal``."""
        return self._text("stderr")

    def wait_for_output(self, text: str, timeout: float = 30) -> str:
        """Wait until stdout holds ``text`` and return stdout so far. Fails the test if the
        output ends, or ``timeout`` seconds pass, without it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while text not in (shown := self._text("stdout")):
                assert "stdout" not in self._ended, \
                    f"output ended without {text!r}: {shown}"
                left = deadline - time.monotonic()
                assert left > 0, f"no {text!r} after {timeout}s in: {shown}"
                self._changed.wait(left)
        return shown

    def finish(self, timeout: float) -> subprocess.CompletedProcess[str]:
        """Wait for the command to exit by itself (``TimeoutExpired`` after ``timeout``
        seconds) and return its exit status and everything it wrote."""
        self.wait(timeout)
        self._join()
        return subprocess.CompletedProcess(self.args, self.returncode, self.stdout_text,
                                           self.stderr_text)

    def stop(self, grace: float) -> None:
        """Stop the command if it still runs: SIGTERM, then SIGKILL if it has not exited
        after ``grace`` seconds."""
        stop_process(self, grace)
        self._join()

    def _join(self) -> None:
        # The output ends when the command exits, unless a process it started still holds it.
        for reader in self._readers:
            reader.join(5)


@contextlib.contextmanager
def started(*args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None,
            log: Path | None = None, terminal: bool = False, grace: float = 10.0,
            program: Sequence[str] = PYTHON_M) -> Iterator[Process]:
    """Start ``twinproxy ARGS`` in the background for the block, and stop it (SIGTERM, then
    SIGKILL after ``grace`` seconds) when the block ends if it still runs, also when the test
    fails. ``env``, ``cwd`` and ``program`` are as for :func:`twinproxy` (a ``program`` that
    starts with a wrapper must ``exec`` the command, as ``prlimit`` does, so that the signals
    reach it); ``log`` and ``terminal`` as for :class:`Process`.

    It does not wait for the command to be ready: a test waits for what it needs to see.
    """
    proc = Process([*program, *args], env=environment(env), cwd=cwd, log=log,
                   terminal=terminal)
    try:
        yield proc
    finally:
        proc.stop(grace)


@contextlib.contextmanager
def serve_process(config_path: Path, *args: str, timeout: float = 30.0,
                  program: Sequence[str] = PYTHON_M) -> Iterator[Process]:
    """``twinproxy serve CONFIG ARGS`` for the block, from the moment it logs that it serves.
    Its stderr (the log) goes to ``CONFIG`` with the suffix ``.log``, kept in ``proc.log``;
    ``program`` is as for :func:`started`.

    Its temporary directories (the managed servers') go next to the config, in the test's own
    directory (``TMPDIR``): a process killed with SIGKILL cannot remove them itself. It is given
    ``timeout`` seconds to start, and as many to stop after SIGTERM (it drains its clients).
    """
    load_config(config_path)  # fail here, with the config error, not in the child
    tmp = config_path.parent / f"{config_path.stem}-tmp"
    tmp.mkdir(exist_ok=True)
    with started("serve", str(config_path), *args, env={"TMPDIR": str(tmp)},
                 log=config_path.with_suffix(".log"), grace=timeout, program=program) as proc:
        assert proc.log is not None
        deadline = time.monotonic() + timeout
        while "serving" not in proc.log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start:\n{proc.log.read_text()}")
            time.sleep(0.05)
        yield proc


def _runner() -> CliRunner:
    """A runner that keeps stderr apart (the default from click 8.2, an option before)."""
    if "mix_stderr" in inspect.signature(CliRunner).parameters:
        return CliRunner(mix_stderr=False)
    return CliRunner()


def invoke(*args: str, env: Mapping[str, str] | None = None) -> Result:
    """Run ``twinproxy ARGS`` in this process with click's runner; the exit status is
    ``exit_code``, and ``stdout`` and ``stderr`` are kept apart. ``env`` is set on top of the
    test process's environment, without :data:`OPERATOR_SETTINGS`, for the call only.

    It runs in the current directory: a test that needs another changes to it
    (``monkeypatch.chdir``)."""
    unset: dict[str, str | None] = dict.fromkeys(OPERATOR_SETTINGS)
    return _runner().invoke(main, list(args), env={**unset, **(env or {})})
