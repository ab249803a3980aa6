"""The state transforms between the versions, forward and back.

v1 -> v2: every (key, value) becomes (string, key, value); back: the type is dropped (v1 has
none). ``lossy_forward`` is a broken transform on purpose (version ``v2-lossy``): it drops every
key with a ``:`` in it, and the time-traveling check stops the update before any client sees it.
"""

from __future__ import annotations

V1 = dict[bytes, bytes]
V2 = dict[bytes, tuple[str, bytes]]


def v1_to_v2(state: V1) -> V2:
    return {key: ("string", value) for key, value in state.items()}


def v2_to_v1(state: V2) -> V1:
    return {key: value for key, (_, value) in state.items()}


def lossy_forward(state: V1) -> V2:
    return {key: ("string", value) for key, value in state.items() if b":" not in key}
