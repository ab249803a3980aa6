"""Scripts for the engine: an event in (``>>``), the commands expected out (``<<``).

In the manner of mitmproxy's proxy-layer tests::

    assert (
        Playbook(engine)
        >> Requests(1, [request("SET", "k", "v")])
        << Send(LEADER_CONN, encode_command(b"SET", b"k", b"v"))
    )

The script runs when it is asserted: each event goes to :meth:`Engine.handle`, and the commands
that come out must be exactly the ones written after it, in order (commands of a type in
``ignore`` are left out of both). A :class:`Placeholder` stands for a value the script cannot
know when it is written (the id of a connection the engine opens): it takes the first value it
is compared with, then must equal it, and it can be used in later events.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twinproxy.engine import commands as cmd
from twinproxy.engine.engine import Engine


class Placeholder:
    """A value to be learnt from the engine's output."""

    def __init__(self, name: str = "?"):
        self.name = name
        self._value: Any = None
        self._bound = False

    @property
    def value(self) -> Any:
        assert self._bound, f"placeholder {self.name} was never matched"
        return self._value

    def __eq__(self, other: object) -> bool:
        if not self._bound:
            self._value, self._bound = other, True
            return True
        return self._value == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{self.name}={self._value!r}>" if self._bound else f"<{self.name}>"


def _resolve(value: Any) -> Any:
    if isinstance(value, Placeholder):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _resolve(getattr(value, f.name)) for f in dataclasses.fields(value)
                   if isinstance(getattr(value, f.name), Placeholder)}
        return dataclasses.replace(value, **changes) if changes else value
    return value


def _matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, Placeholder):
        return expected == actual
    if type(expected) is not type(actual):
        return False
    if dataclasses.is_dataclass(expected):
        return all(getattr(expected, f.name) == getattr(actual, f.name)
                   for f in dataclasses.fields(expected))
    return expected == actual


class Playbook:
    """An engine script; see the module docstring."""

    def __init__(self, engine: Engine, ignore: tuple[type[cmd.Command], ...] = (cmd.Log,)):
        self.engine = engine
        self.ignore = ignore
        self.steps: list[tuple[str, Any]] = []
        self.actual: list[Any] = []

    def __rshift__(self, event: Any) -> Playbook:
        self.steps.append(("in", event))
        return self

    def __lshift__(self, command: Any) -> Playbook:
        self.steps.append(("out", command))
        return self

    def __bool__(self) -> bool:
        expected: list[Any] = []
        transcript: list[str] = []
        pending: list[Any] = []
        for kind, item in self.steps:
            if kind == "in":
                self._check(expected, pending, transcript)
                event = _resolve(item)
                transcript.append(f">> {event!r}")
                pending = [c for c in self.engine.handle(event) if not isinstance(c, self.ignore)]
                self.actual.extend(pending)
                expected = []
            else:
                expected.append(item)
        self._check(expected, pending, transcript)
        self.steps = []
        return True

    def _check(self, expected: list[Any], actual: list[Any], transcript: list[str]) -> None:
        for i in range(max(len(expected), len(actual))):
            want = expected[i] if i < len(expected) else None
            got = actual[i] if i < len(actual) else None
            transcript.append(f"<< {got!r}" + ("" if want is None or got is None or
                                               _matches(want, got) else f"   (expected {want!r})"))
            if want is None or got is None or not _matches(want, got):
                if want is None:
                    transcript.append("   (not expected)")
                elif got is None:
                    transcript.append(f"   (expected {want!r}, nothing came)")
                raise AssertionError("the engine's script went otherwise:\n" +
                                     "\n".join(transcript))
