"""FTP over TLS passed through twinproxy (``[proxy] tls = "passthrough"``), with vsftpd serving
TLS (a self-signed certificate made by ``openssl req`` in the test's directory), configs/ftp.toml
as shipped otherwise, curl and Python's ``FTP_TLS`` as clients from 127.0.0.3.

The proxy cannot read an encrypted session: once vsftpd answered ``AUTH TLS`` with ``234``, the
control connection is relayed as opaque bytes, and the data connections, whose addresses travel
encrypted, go to vsftpd directly (here: to vsftpd's passive port on the proxy's host, which is
vsftpd's, with ``pasv_promiscuous=YES`` since vsftpd sees the control connection come from the
proxy). That is why passthrough is asked for explicitly; by default ``AUTH`` is refused (534,
tests/test_proxy_ftp_data.py). Such a session is served by its version alone: an update leaves
it on the old version, uncompared, and at the cutover the old version serves it until it ends
(``[update] tls_sessions = "wait"``) or closes it (``"close"``). A session whose ``AUTH``
comes during an update goes the same way: from that command on the leader alone serves it.

The clients keep to TLS 1.2: over TLS 1.3, Debian's vsftpd 3.0.3 fails uploads of a megabyte
now and then with ``426 Failure reading network stream``, directly as through the proxy.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.proxyrun import poll_until, running
from tests.test_configs_shipped import relocated
from tests.test_proxy_ftp_update_data import CLIENT, HOST, _blob, _caught_up, _root, _sha, _status
from tests.test_proxy_ftp_update_data import _update as _start_update

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


def _config(tmp: Path, sessions: str) -> Path:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(tmp / "key.pem"),
                    "-out", str(tmp / "cert.pem")], check=True, capture_output=True)
    path = relocated("ftp.toml", tmp)
    text = path.read_text().replace("warmup_seconds = 30.0", "warmup_seconds = 600.0")
    text = text.replace("warmup_requests = 200", "warmup_requests = 1000000")
    text = text.replace('protocol = "ftp"\n', 'protocol = "ftp"\ntls = "passthrough"\n')
    text = text.replace('sync = "files"', f'tls_sessions = "{sessions}"\nsync = "files"')
    text = text.replace("dirmessage_enable=NO\n", (
        "dirmessage_enable=NO\nssl_enable=YES\nallow_anon_ssl=YES\nforce_anon_logins_ssl=NO\n"
        "force_anon_data_ssl=NO\nrequire_ssl_reuse=NO\npasv_promiscuous=YES\n"
        f"rsa_cert_file={tmp / 'cert.pem'}\nrsa_private_key_file={tmp / 'key.pem'}\n"))
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    with running(_config(tmp_path_factory.mktemp("ftptls"), "wait")) as running_proxy:
        yield running_proxy


def _tls(proxy) -> ftplib.FTP_TLS:
    context = ssl._create_unverified_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # (see the module's docstring)
    ftp = ftplib.FTP_TLS(context=context, timeout=20)
    ftp.connect(HOST, proxy.port, source_address=(CLIENT, 0))
    ftp.auth()
    ftp.login()
    ftp.prot_p()
    ftp.cwd("pub")
    return ftp


def _plain(proxy) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=20)
    ftp.connect(HOST, proxy.port, source_address=(CLIENT, 0))
    ftp.login()
    ftp.cwd("pub")
    return ftp


def _roundtrip(ftp: ftplib.FTP, name: str, data: bytes) -> bytes:
    ftp.storbinary(f"STOR {name}", io.BytesIO(data))
    got = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", got.write)
    return got.getvalue()


def _opaque(proxy) -> int:
    return proxy.call(lambda: sum(c.opaque for c in proxy.service.relay.clients))


def _curl_round_trip(proxy, tmp_path, name: str, data: bytes) -> None:
    """curl --ssl-reqd uploads ``data`` as pub/``name`` through the proxy and downloads it
    back, the same bytes."""
    (tmp_path / "up.bin").write_bytes(data)
    url = f"ftp://{HOST}:{proxy.port}/pub/{name}"
    curl = ["curl", "-sS", "--max-time", "30", "--interface", CLIENT, "--ssl-reqd", "-k",
            "--tls-max", "1.2"]
    subprocess.run([*curl, "-T", str(tmp_path / "up.bin"), url], check=True,
                   capture_output=True)
    got = subprocess.run([*curl, url], check=True, capture_output=True).stdout
    assert _sha(got) == _sha(data)


def test_curl_ssl_reqd_passes_through(proxy, tmp_path) -> None:
    """curl --ssl-reqd uploads and downloads through the proxy: the session is TLS end to end
    with vsftpd, the file lands whole in vsftpd's root, and a plain client beside it is served
    as usual (its data carried by the proxy)."""
    data = _blob("curl-tls", 1024 * 1024 + 9)
    _curl_round_trip(proxy, tmp_path, "curl-tls.bin", data)
    serving = proxy.service.serving.name
    assert _sha((_root(proxy, serving) / "pub" / "curl-tls.bin").read_bytes()) == _sha(data)
    plain = _plain(proxy)
    assert _roundtrip(plain, "plain.bin", data) == data
    plain.quit()


def test_session_during_an_update_then_cutover_waits(proxy) -> None:
    """A TLS session opened before an update stays on the old version, uncompared, all through
    it; one that starts during the update (AUTH in MVE) leaves the update for the old version
    alone, its follower session dropped with no divergence; at the cutover every other client
    goes to the new version and the old one serves both TLS sessions until they end, then
    stops."""
    tls = _tls(proxy)
    data = _blob("tls-update", 300 * 1024 + 1)
    assert _roundtrip(tls, "tls.bin", data) == data
    assert _opaque(proxy) == 1
    leader, follower = _start_update(proxy)
    assert _roundtrip(tls, "tls-mve.bin", data) == data  # leader-only: not in the follower
    plain = _plain(proxy)
    late = _tls(proxy)  # AUTH during the update: served by the leader alone from then on
    assert _roundtrip(late, "tls-late.bin", data) == data
    assert _opaque(proxy) == 2
    assert _roundtrip(plain, "plain-mve.bin", data) == data
    update = _caught_up(proxy)["update"]
    assert _status(proxy)["state"] == "mve"
    assert update["divergences"] == 0 and update["transfers_compared"] == 2, update
    for name in ("tls-mve.bin", "tls-late.bin"):
        assert (_root(proxy, leader) / "pub" / name).exists()
        assert not (_root(proxy, follower) / "pub" / name).exists()
    proxy.call(proxy.service.promote)
    poll_until(lambda: proxy.service.serving.name, lambda name: name == follower, 30,
               "the cutover")
    old = proxy.service.backends[leader]
    assert plain.sendcmd("NOOP").startswith("200") and old.pid is not None
    assert hashlib.sha256(_roundtrip(tls, "tls-after.bin", data)).hexdigest() == _sha(data)
    assert (_root(proxy, leader) / "pub" / "tls-after.bin").exists()  # still on the old one
    assert _roundtrip(late, "tls-late-after.bin", data) == data
    assert (_root(proxy, leader) / "pub" / "tls-late-after.bin").exists()
    tls.quit()
    assert old.pid is not None  # (the late session still runs on it)
    late.quit()
    done = poll_until(lambda: _status(proxy), lambda s: s["state"] == "single", 30,
                      "the old version to stop")
    assert done["last_update"]["outcome"] == "cutover" and done["serving"] == follower, done
    poll_until(lambda: old.pid, lambda pid: pid is None, 10, "the old version stopped")
    plain.quit()


def test_cutover_closes_sessions_when_configured(tmp_path) -> None:
    """``tls_sessions = "close"``: the cutover closes the TLS sessions left on the old version,
    one opened before the update and one during it (each client sees its connection end), and
    stops it at once."""
    with running(_config(tmp_path, "close")) as proxy:
        tls = _tls(proxy)
        _, follower = _start_update(proxy)
        late = _tls(proxy)  # (started during the update: closed as well)
        proxy.call(proxy.service.promote)
        done = poll_until(lambda: _status(proxy), lambda s: s["state"] == "single", 30,
                          "the cutover")
        assert done["last_update"]["outcome"] == "cutover" and done["serving"] == follower
        for session in (tls, late):
            with pytest.raises((EOFError, OSError)):
                session.sendcmd("NOOP")
            session.close()
        assert _opaque(proxy) == 0


def test_curl_during_an_update_then_rollback(proxy, tmp_path) -> None:
    """curl --ssl-reqd during an update: served whole by the leader alone (nothing reaches the
    follower, nothing diverges, the update stays in MVE, a plain client beside it is compared);
    a rollback leaves a TLS session started during the update going on, on the old version."""
    leader, follower = _start_update(proxy)
    data = _blob("curl-tls-mve", 700 * 1024 + 3)
    _curl_round_trip(proxy, tmp_path, "curl-tls-mve.bin", data)
    assert _sha((_root(proxy, leader) / "pub" / "curl-tls-mve.bin").read_bytes()) == _sha(data)
    assert not (_root(proxy, follower) / "pub" / "curl-tls-mve.bin").exists()
    tls = _tls(proxy)
    plain = _plain(proxy)
    assert _roundtrip(plain, "plain-rb.bin", data) == data
    update = _caught_up(proxy)["update"]
    assert _status(proxy)["state"] == "mve"
    assert update["divergences"] == 0 and update["transfers_compared"] == 2, update
    proxy.call(proxy.service.rollback)
    done = poll_until(lambda: _status(proxy), lambda s: s["state"] == "single", 30,
                      "the rollback")
    assert done["serving"] == leader, done
    assert _roundtrip(tls, "tls-rb.bin", data) == data
    assert (_root(proxy, leader) / "pub" / "tls-rb.bin").exists()
    assert _roundtrip(plain, "plain-after.bin", data) == data
    tls.quit()
    plain.quit()
