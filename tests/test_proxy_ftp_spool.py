"""The follower's copies of uploads during an update of vsftpd are bounded (``[update]
max_spool_bytes``): past the bound, or when the copy cannot be written to disk, the update rolls
back with the reason and the client's upload completes on the old version, byte for byte.

configs/ftp.toml as shipped, relocated, with a bound of 1 MB. On loopback the follower reads the
copy as fast as the client writes it, so a follower that lags is made one: its processes are
stopped (SIGSTOP) during the upload, and go on (SIGCONT) once the update ended.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import re
import resource
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.proxyrun import poll_until, running
from tests.servers import paused
from tests.test_configs_shipped import relocated

BOUND = 1_000_000


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ftpspool")
    path = relocated("ftp.toml", tmp)
    text = path.read_text().replace("warmup_seconds = 30.0", "warmup_seconds = 600.0")
    assert "max_spool_bytes = " in text  # (the shipped config names it)
    path.write_text(re.sub(r"(?m)^max_spool_bytes = \d+", f"max_spool_bytes = {BOUND}", text))
    with running(path) as running_proxy:
        yield running_proxy


def _status(proxy) -> dict:
    return proxy.call(proxy.service.status)


def _client(proxy) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=20)
    ftp.connect("127.0.0.1", proxy.port)
    ftp.login()
    ftp.cwd("pub")
    return ftp


def _mve(proxy) -> str:
    leader = proxy.service.serving.name
    proxy.call_async(proxy.service.update, "v2" if leader == "v1" else "v1")
    poll_until(lambda: _status(proxy), lambda s: s["state"] == "mve", 30, "MVE")
    return leader


@contextmanager
def _follower_stopped(proxy):
    """The follower's vsftpd processes stopped until the update ended (and always resumed)."""
    with paused(proxy.service.updating.follower.pid):
        yield
        poll_until(lambda: _status(proxy),
                   lambda s: s["last_update"]["outcome"] != "in-progress", 30, "the update's end")
    poll_until(lambda: _status(proxy), lambda s: s["state"] == "single", 30, "SINGLE mode")


def _upload_during_the_update(proxy, name: str, data: bytes) -> dict:
    """Upload ``data`` in MVE with the follower stopped; the status once the update ended, and
    the client checked."""
    ftp = _client(proxy)
    leader = _mve(proxy)
    with _follower_stopped(proxy):
        assert ftp.storbinary(f"STOR {name}", io.BytesIO(data)).startswith("226")
    done = _status(proxy)
    assert done["serving"] == leader
    got = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", got.write)  # the same connection, after the rollback
    assert got.getvalue() == data
    on_disk = Path(proxy.service.serving.workdir) / "root" / "pub" / name
    assert hashlib.sha256(on_disk.read_bytes()).digest() == hashlib.sha256(data).digest()
    ftp.quit()
    return done


def test_an_upload_past_the_bound_fails_the_update_not_the_upload(proxy) -> None:
    """The old version got the whole file and serves it; the update rolled back, saying why."""
    done = _upload_during_the_update(proxy, "large.bin", os.urandom(3 * BOUND + 7))
    update = done["last_update"]
    assert update["outcome"] == "rolled-back", update
    assert update["reason"] == (f"the follower's copies of uploads passed max_spool_bytes = "
                                f"{BOUND} (the follower fell that far behind)")


def test_an_upload_whose_copy_cannot_be_written_fails_the_update_not_the_upload(proxy) -> None:
    """The follower's copy cannot be written (a file size limit on the proxy's process, as a
    full disk would refuse it): the same, with the system's words."""
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    ftp = _client(proxy)
    leader = _mve(proxy)
    data = os.urandom(BOUND // 2 + 3)
    with _follower_stopped(proxy):
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, limits[1]))
        try:
            assert ftp.storbinary("STOR refused.bin", io.BytesIO(data)).startswith("226")
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    done = _status(proxy)
    assert done["serving"] == leader
    update = done["last_update"]
    assert update["outcome"] == "rolled-back", update
    assert update["reason"].startswith("an upload's copy for the follower could not be written "
                                       "to disk: [Errno 27] File too large"), update
    got = io.BytesIO()
    ftp.retrbinary("RETR refused.bin", got.write)
    assert got.getvalue() == data
    ftp.quit()


def test_uploads_within_the_bound_are_compared_and_cut_over(proxy) -> None:
    """Uploads each below the bound, twice it together, the next one once the follower has
    the one before: the bound counts what waits for the follower, not what passed, so the
    update goes on, compares them, and cuts over."""
    ftp = _client(proxy)
    _mve(proxy)
    blobs = [os.urandom(BOUND // 2 + i) for i in range(4)]
    for i, blob in enumerate(blobs):
        ftp.storbinary(f"STOR ok{i}.bin", io.BytesIO(blob))
        status = poll_until(lambda: _status(proxy),
                            lambda s, i=i: s["state"] != "mve"
                            or s["update"]["transfers_compared"] > i, 30, "the comparison")
        assert status["state"] == "mve" and status["update"]["divergences"] == 0, status
    proxy.call(proxy.service.promote)
    done = poll_until(lambda: _status(proxy), lambda s: s["state"] == "single", 30, "cutover")
    assert done["last_update"]["outcome"] == "cutover", done
    for i, blob in enumerate(blobs):
        got = io.BytesIO()
        ftp.retrbinary(f"RETR ok{i}.bin", got.write)
        assert got.getvalue() == blob
    ftp.quit()
