"""The proxy's passive data endpoints behind NAT or a firewall: ``[proxy] data_address`` (the
address written in 227 replies) and ``data_port_min``/``data_port_max`` (the ports they listen
on), with configs/ftp.toml as shipped plus those keys, clients from 127.0.0.3, in SINGLE mode
and during an update.

The announced address is one the proxy does not have (198.51.100.7, a documentation address):
Python's ftplib connects to the control connection's host whatever a 227 says (as curl does by
default), so its transfers still work on loopback, and the test reads the raw reply. A range of
two ports makes exhaustion easy to reach: a third endpoint waiting at once is refused with 425,
the two others go on, and a port is given out again once its endpoint was connected to.
"""

from __future__ import annotations

import ftplib
import io
import random
import re
import socket

import pytest

from tests.proxyrun import running
from tests.test_configs_shipped import relocated
from tests.test_proxy_ftp_update_data import CLIENT, HOST, _blob, _caught_up, _end, _sha
from tests.test_proxy_ftp_update_data import _update as _start_update

ANNOUNCED = "198.51.100.7"


def _free_range(count: int) -> int:
    """The first of ``count`` consecutive ports free on the proxy's address, below the
    kernel's ephemeral ports (so that no outgoing connection takes one meanwhile)."""
    while True:
        low = random.randrange(20000, 32000)
        socks = []
        try:
            for port in range(low, low + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind((HOST, port))
            return low
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ftpendpoints")
    path = relocated("ftp.toml", tmp)
    low = _free_range(2)
    text = path.read_text().replace("warmup_seconds = 30.0", "warmup_seconds = 600.0")
    text = text.replace("warmup_requests = 200", "warmup_requests = 1000000")
    text = text.replace('protocol = "ftp"\n', f'protocol = "ftp"\ndata_address = "{ANNOUNCED}"\n'
                        f"data_port_min = {low}\ndata_port_max = {low + 1}\n")
    path.write_text(text)
    with running(path) as running_proxy:
        running_proxy.ports = range(low, low + 2)
        yield running_proxy


def _client(proxy) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=20)
    ftp.connect(HOST, proxy.port, source_address=(CLIENT, 0))
    ftp.login()
    ftp.cwd("pub")
    return ftp


def _pasv(ftp: ftplib.FTP) -> tuple[str, int]:
    reply = ftp.sendcmd("PASV")
    numbers = [int(n) for n in re.search(r"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)",
                                         reply).groups()]
    return ".".join(map(str, numbers[:4])), numbers[4] * 256 + numbers[5]


def _transfer(ftp: ftplib.FTP, name: str, data: bytes) -> bytes:
    ftp.storbinary(f"STOR {name}", io.BytesIO(data))
    got = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", got.write)
    return got.getvalue()


def _exhaust_then_free(proxy) -> None:
    """Two endpoints waiting take the range; a third client's PASV gets 425 and its session
    goes on; the two others transfer; once the first endpoint was connected to, its port is
    the third's (while the first transfer still runs on it)."""
    first, second, third = _client(proxy), _client(proxy), _client(proxy)
    try:
        waiting = [_pasv(first), _pasv(second)]
        assert {host for host, _ in waiting} == {ANNOUNCED}
        assert sorted(port for _, port in waiting) == list(proxy.ports)
        with pytest.raises(ftplib.error_temp, match=r"^425 twinproxy: cannot open a data "):
            third.sendcmd("PASV")
        with pytest.raises(ftplib.error_temp, match=r"^425 "):
            third.sendcmd("EPSV")
        assert third.sendcmd("NOOP").startswith("200")
        for ftp, (_, port) in zip((first, second), waiting, strict=True):
            conn = socket.create_connection((HOST, port), timeout=10,
                                            source_address=(CLIENT, 0))
            assert ftp.sendcmd("NLST").startswith("150")
            if ftp is first:  # its endpoint was connected to: the port listens again
                assert _pasv(third) == (ANNOUNCED, waiting[0][1])
            while conn.recv(65536):
                pass
            conn.close()
            assert ftp.voidresp().startswith("226")
        data = _blob("after", 300 * 1024 + 7)
        assert _sha(_transfer(third, "endpoints.bin", data)) == _sha(data)
        assert _pasv(third)[1] in proxy.ports
    finally:
        for ftp in (first, second, third):
            ftp.close()


def test_announced_address_and_port_range(proxy) -> None:
    ftp = _client(proxy)
    host, port = _pasv(ftp)
    assert host == ANNOUNCED and port in proxy.ports
    port = int(re.search(r"\(\|\|\|(\d+)\|\)", ftp.sendcmd("EPSV")).group(1))
    assert port in proxy.ports
    data = _blob("range", 1024 * 1024 + 3)
    for _ in range(5):  # more transfers than ports: each port is given out again
        assert _sha(_transfer(ftp, "range.bin", data)) == _sha(data)
    ftp.quit()
    _exhaust_then_free(proxy)


def test_port_range_during_an_update(proxy) -> None:
    """During an update the leader's half of a channel listens in the range too, and the
    follower's halves (the proxy's own connections to it) do not take its ports."""
    _, follower = _start_update(proxy)
    ftp = _client(proxy)
    host, port = _pasv(ftp)
    assert host == ANNOUNCED and port in proxy.ports
    data = _blob("range-mve", 700 * 1024 + 1)
    assert _sha(_transfer(ftp, "range-mve.bin", data)) == _sha(data)
    ftp.quit()
    _exhaust_then_free(proxy)
    update = _caught_up(proxy)["update"]
    assert update["divergences"] == 0 and update["transfers_compared"] >= 5, update
    done = _end(proxy, promote=True)
    assert done["last_update"]["outcome"] == "cutover" and done["serving"] == follower, done
