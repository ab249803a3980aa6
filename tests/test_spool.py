"""The file a large request is written to during an update (``twinproxy.spool``): what is read
back is what was written, a piece at a time; a file that cannot be written keeps the bytes in
memory and says why (the update fails, the request is served)."""

from __future__ import annotations

from twinproxy.engine.large import Spooled
from twinproxy.spool import Reading, Spool


def _read_all(spooled: Spooled, piece: int) -> bytes:
    reading = Reading(spooled)
    out = []
    while True:
        data = reading.next(piece)
        if not data:
            break
        assert len(data) <= piece
        out.append(data)
    assert reading.left == 0
    return b"".join(out)


def _written(spool: Spool) -> bytes:
    head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$20\r\n"
    spool.write(head)
    spool.value_at = spool.size
    spool.values = 1
    for _ in range(4):
        spool.write(memoryview(b"01234"))
    spool.write(b"\r\n")
    return head + b"0123401234012340123401234"[:20] + b"\r\n"


def test_what_is_read_back_is_what_was_written_in_pieces_of_any_size(tmp_path) -> None:
    spool = Spool(str(tmp_path))
    want = _written(spool)
    spooled = spool.spooled(20)
    assert spool.error is None and len(spooled) == len(want) and spooled.held == 0
    for piece in (1, 7, 1000):
        assert _read_all(spooled, piece) == want
    rebuilt = spooled.rewritten(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%s\r\n"
                                % (len(spooled.token), spooled.token))
    assert _read_all(rebuilt, 8) == want


def test_a_file_that_cannot_be_made_keeps_the_bytes_in_memory_and_says_why(tmp_path) -> None:
    spool = Spool(str(tmp_path / "missing"))
    want = _written(spool)
    assert spool.error is not None and "could not be written to disk" in spool.error
    assert _read_all(spool.spooled(20), 3) == want
