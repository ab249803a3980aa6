"""vsftpd through twinproxy when the server dies: the FTP client gets 421, never a hang, and is
served again after the restart. The config is configs/ftp.toml as shipped, relocated."""

from __future__ import annotations

import ftplib
import os
import signal

import pytest

from tests.proxyrun import poll_until, running
from tests.test_configs_shipped import relocated
from twinproxy.backends import descendants


def test_vsftpd_killed_gives_421_then_recovery(tmp_path) -> None:
    path = relocated("ftp.toml", tmp_path)
    # A restart back-off long enough to see the server down before it is back.
    path.write_text(path.read_text().replace("[versions.v1]\n",
                                             "[versions.v1]\nrestart_backoff = 5\n", 1))
    with running(path) as proxy:
        connected = ftplib.FTP(timeout=10)
        connected.connect("127.0.0.1", proxy.port)
        connected.login()
        assert connected.nlst() == ["pub"]
        backend = proxy.service.serving
        old_pid = backend.pid
        # vsftpd serves each session in a process of its own, which outlives the listener: kill
        # them all, as a crash of the whole server would.
        for pid in [old_pid, *descendants(old_pid)]:
            os.kill(pid, signal.SIGKILL)
        poll_until(lambda: backend.up, lambda up: not up, 10, "v1 to be seen down")
        # The session that was connected gets 421 for its next command (ftplib's timeout would
        # raise on a hang).
        with pytest.raises(ftplib.error_temp, match=r"^421 twinproxy: v1 closed the connection"):
            connected.voidcmd("NOOP")
        connected.close()
        # A new client: 421 as its greeting, and closed.
        with pytest.raises(ftplib.error_temp,
                           match=r"^421 twinproxy: v1 is unavailable, try again later"):
            ftplib.FTP(timeout=10).connect("127.0.0.1", proxy.port)

        def served() -> bool:
            ftp = ftplib.FTP(timeout=10)
            try:
                ftp.connect("127.0.0.1", proxy.port)
                ftp.login()
                return ftp.nlst() == ["pub"]
            except (ftplib.Error, OSError):
                return False
            finally:
                ftp.close()

        poll_until(served, bool, 60, "vsftpd to be back", interval=0.2)
        assert backend.pid not in (None, old_pid) and backend.restarts == 1
