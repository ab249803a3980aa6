"""The digest large replies and transfers are compared by (twinproxy/digests.py): the same for
the same bytes however they were fed, different for different bytes, and the published XXH64."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twinproxy import digests
from twinproxy.digests import Hasher

KINDS: list[tuple[Callable[[], Hasher], Callable[[bytes], bytes]]] = [
    (digests.blake2b_hasher, digests.blake2b_digest),
    (digests.new_hasher, digests.digest),
]


def test_the_compiled_digest_is_xxh64_under_its_two_seeds() -> None:
    """Seed 0's half is XXH64 as published (the empty input's value is in its specification);
    the others were computed with the xxhash package, the reference C implementation, under
    seeds 0 and 0x9E3779B97F4A7C15."""
    if digests.NAME != "xxh64x2":
        pytest.skip("_digest.c not built (test_packaging says so)")
    assert digests.digest(b"")[:8].hex() == "ef46db3751d8e999"
    assert digests.digest(b"").hex() == "ef46db3751d8e999c4349fc93c010000"
    assert digests.digest(b"a").hex() == "d24ec4f1a98c6e5b9a7c6d2ea45568c9"
    assert digests.digest(b"abc").hex() == "44bc2cf5ad7709992ed0f59d6b43ac8b"
    assert digests.digest(b"0123456789" * 10).hex() == "f80e7b96315afffa14d1d80a91b9ea55"
    assert digests.digest(bytes(range(256)) * 400).hex() == "915e51d41e5ecbd470458357679def1d"


@pytest.mark.parametrize("new_hasher, digest", KINDS, ids=["blake2b", "compiled"])
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=8))
def test_fed_in_any_pieces_the_digest_is_that_of_the_whole(
        new_hasher: Callable[[], Hasher], digest: Callable[[bytes], bytes], data: bytes,
        cuts: list[int]) -> None:
    """A reply is digested as its reads come (a run passing through, a transfer's data) and
    compared with one digested whole."""
    hasher = new_hasher()
    start = 0
    for cut in [*sorted(min(c, len(data)) for c in cuts), len(data)]:
        hasher.update(memoryview(data)[start:cut])
        start = cut
    assert hasher.digest() == digest(data)
    assert len(digest(data)) == 16


@pytest.mark.parametrize("new_hasher, digest", KINDS, ids=["blake2b", "compiled"])
@given(data=st.binary(min_size=1, max_size=200), at=st.integers(0, 10_000),
       bit=st.integers(0, 7))
def test_one_bit_changed_anywhere_changes_the_digest(
        new_hasher: Callable[[], Hasher], digest: Callable[[bytes], bytes], data: bytes,
        at: int, bit: int) -> None:
    altered = bytearray(data * 500)  # past a stripe, past the tail, and over 64 KB
    altered[at % len(altered)] ^= 1 << bit
    assert digest(bytes(altered)) != digest(data * 500)


def test_a_large_reply_digested_as_it_comes_matches_the_one_kept_whole() -> None:
    """100 KB in the reads a socket gives (here 16 KB), against one buffer."""
    value = bytes(range(256)) * 400
    hasher = digests.new_hasher()
    for start in range(0, len(value), 16384):
        hasher.update(value[start:start + 16384])
    assert hasher.digest() == digests.digest(value)
    assert digests.digest(value[:-1] + b"\x01") != digests.digest(value)
