"""MLSD and MLST through twinproxy against a server that has them: Pure-FTPd (Debian's package,
unpacked into .cache/pure-ftpd by scripts/setup.sh: installing it would remove vsftpd).

vsftpd answers ``500`` to both (tests/test_proxy_ftp_clients.py); Pure-FTPd lists a directory
in MLSD form on a data connection and a single entry in MLST's ``250`` reply. In SINGLE mode the
client gets through the proxy what it gets directly, and an update from one Pure-FTPd instance
to another (sync ``files``) compares MLSD listings line by line under configs/ftp.toml's
``mlsd-dates`` rule, plus a rule for the ``unique`` fact (Pure-FTPd writes the file's inode
there, which a copy of the root changes). Pure-FTPd also ends a transfer at once on ABOR, which
vsftpd does not, so an abort during an update is tested here too. The client connects from
127.0.0.3: Pure-FTPd, like vsftpd, refuses a data connection from another host than its control
connection's peer.
"""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import re
import threading
import time
from pathlib import Path

import pytest

from tests.proxyrun import poll_until, running, write_config
from tests.test_proxy_ftp_update_data import CLIENT, HOST, _caught_up, _end, _root, _status
from tests.test_proxy_ftp_update_data import _update as _start_update

PURE = Path(__file__).resolve().parent.parent / ".cache" / "pure-ftpd" / "usr"
pytestmark = pytest.mark.skipif(not (PURE / "sbin" / "pure-ftpd").exists(),
                                reason="pure-ftpd is not unpacked (scripts/setup.sh)")

# One virtual user ("tp", password "pw") whose home is the instance's root; -E: no anonymous
# logins, -A: everyone chrooted, -H: no DNS lookups. The passwd file and its index are made again
# at each start (a "files" sync copies the old instance's, which name the old root). The password
# is an MD5-crypt hash (``openssl passwd -1 -salt tp pw``): pure-pw's own (argon2id) takes two
# seconds of CPU at each login.
HASH = "$1$tp$qtNPNGeidG7EuP3GMXcNr."
VERSION = """command = ["/bin/sh", "-c", '''
set -e
mkdir -p "{{dir}}/root"
chown nobody:nogroup "{{dir}}/root"
rm -f "{{dir}}/passwd" "{{dir}}/pdb"
printf 'tp:%s:65534:65534::%s/./::::::::::::\\n' '{hash}' "{{dir}}/root" > "{{dir}}/passwd"
{pure}/bin/pure-pw mkdb "{{dir}}/pdb" -f "{{dir}}/passwd"
exec {pure}/sbin/pure-ftpd -S 127.0.0.1,{{port}} -l "puredb:{{dir}}/pdb" -E -A -H {extra} 0>&2
''']
ready_timeout = 10.0
stop_timeout = 5.0"""

RULES = """
[[rules]]
name = "pasv-port"
command = "PASV"
normalize = [{ pattern = '\\(\\d+,\\d+,\\d+,\\d+,\\d+,\\d+\\)', replace = "(*)" }]

[[rules]]
# "226 0.002 seconds (measured here), 185.90 Mbytes per second"
name = "transfer-speed"
command = ["STOR", "RETR", "APPE"]
normalize = [{ pattern = '[\\d.]+ seconds \\(measured here\\), [\\d.]+ \\w+ per second', \
               replace = "(speed)" }]

[[rules]]
# "221-Goodbye. You uploaded 0 and downloaded 38912 kbytes.": an aborted download ends at
# another byte on each version.
name = "quit-totals"
command = "QUIT"
normalize = [{ pattern = 'uploaded \\d+ and downloaded \\d+ kbytes', replace = "(totals)" }]

[[rules]]
name = "mlsd-dates"
command = ["MLSD", "MLST"]
normalize = [{ pattern = '(?i)\\bmodify=\\d{14}(\\.\\d+)?;', replace = "modify=*;" }]

[[rules]]
# Pure-FTPd's "unique" fact is made of the file's device and inode: a copy has others.
name = "mlsd-unique"
command = ["MLSD", "MLST"]
normalize = [{ pattern = '(?i)\\bunique=[0-9a-z]+;', replace = "unique=*;" }]
"""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pureftpd")
    path = write_config(
        tmp / "pure.toml", "ftp",
        {"v1": VERSION.format(pure=PURE, hash=HASH, extra=""),
         "v2": VERSION.format(pure=PURE, hash=HASH, extra="-D")},  # v2 also lists dot files
        update="warmup_seconds = 600.0\nwarmup_requests = 1000000\nsync = \"files\"\n"
               "follower_timeout = 5.0",
        rules=RULES)
    with running(path) as running_proxy:
        yield running_proxy


def _login(port: int, passive: bool = True) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=20)
    ftp.connect(HOST, port, source_address=(CLIENT, 0))
    ftp.login("tp", "pw")
    ftp.set_pasv(passive)
    return ftp


def _session(port: int, passive: bool, top: str, data: bytes) -> list:
    """What a client sees: MLSD and MLST of a directory it fills, then empties."""
    ftp = _login(port, passive)
    got: list = [ftp.mkd(top), ftp.cwd(top)]
    got.append(ftp.storbinary("STOR a.bin", io.BytesIO(data)))
    got.append(ftp.mkd("sub"))
    # (a file's time and inode, in "modify" and "unique", differ from one run to the next)
    facts = lambda found: sorted((name, {k: v for k, v in fact.items()  # noqa: E731
                                         if k not in ("modify", "unique")})
                                 for name, fact in found)
    got.append(facts(ftp.mlsd()))
    got.append(facts(ftp.mlsd("sub", ["type", "size"])))
    got.append(re.sub(r"(modify|unique)=\w+;", "", ftp.sendcmd("MLST a.bin")))
    body = io.BytesIO()
    got.append(ftp.retrbinary("RETR a.bin", body.write))
    got.append(hashlib.sha256(body.getvalue()).hexdigest())
    got += [ftp.delete("a.bin"), ftp.rmd("sub"), ftp.cwd(".."), ftp.rmd(top)]
    ftp.quit()
    speed = re.compile(r"\d+\.\d+ seconds \(measured here\), \d+\.\d+ \w+ per second")
    return [speed.sub("(speed)", x) if isinstance(x, str) else x for x in got]


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
def test_mlsd_as_directly_in_single_mode(proxy, passive: bool) -> None:
    data = os.urandom(300_000)
    top = f"single-{passive}"
    direct = _session(proxy.service.serving.address[1], passive, top, data)
    listing = dict(direct[4])
    assert listing["a.bin"]["type"] == "file" and listing["a.bin"]["size"] == str(len(data))
    assert [name for name, _ in direct[5]] == [".", ".."]  # sub, empty
    assert direct[6].startswith("250-") and "size=300000;" in direct[6]
    assert direct[8] == hashlib.sha256(data).hexdigest()
    assert _session(proxy.port, passive, top, data) == direct


def test_mlsd_compared_during_an_update(proxy) -> None:
    """MLSD and MLST run on both instances and are compared: a file time that differs (the
    follower's copy touched) is expected under ``mlsd-dates``, the inode in ``unique`` under
    ``mlsd-unique``; a listing that differs otherwise (a file only the follower has) is a
    divergence, and the update is rolled back."""
    ftp = _login(proxy.port)
    ftp.mkd("upd")
    ftp.storbinary("STOR upd/old.bin", io.BytesIO(b"o" * 5000))
    leader, follower = _start_update(proxy)
    os.utime(_root(proxy, follower) / "upd" / "old.bin", (1e9, 1e9))  # 2001
    ftp.storbinary("STOR upd/new.bin", io.BytesIO(b"n" * 7000))
    facts = dict(ftp.mlsd("upd"))
    assert facts["old.bin"]["size"] == "5000" and facts["new.bin"]["size"] == "7000"
    assert not facts["old.bin"]["modify"].startswith("2001")
    assert "modify=" in ftp.sendcmd("MLST upd/old.bin")
    update = _caught_up(proxy)["update"]
    assert update["divergences"] == 0 and update["transfers_compared"] == 2, update
    # MLSD and MLST of old.bin: its time differs (both rules are needed: a rule is named for
    # the first that applies)
    assert update["expected_by_rule"].get("mlsd-dates") == 2, update
    explained = [d for d in proxy.service.divergences.since() if d.rule == "mlsd-dates"]
    assert sorted(d.request[0] for d in explained) == [b"MLSD", b"MLST"], explained
    assert all(d.rules_tried == ["mlsd-dates", "mlsd-unique"] for d in explained), explained
    # The same listing, with a file only the follower has: a divergence, rolled back.
    (_root(proxy, follower) / "upd" / "extra.bin").write_bytes(b"x")
    assert "extra.bin" not in dict(ftp.mlsd("upd"))
    done = poll_until(lambda: _status(proxy), lambda s: s["state"] == "single", 30,
                      "the rollback")
    assert done["last_update"]["outcome"] == "rolled-back" and done["serving"] == leader, done
    assert "MLSD" in done["last_update"]["reason"], done
    assert re.search(r"^250-", ftp.sendcmd("MLST upd/new.bin"))
    ftp.quit()


def _abort(port: int, name: str) -> list:
    """A download aborted while the client holds its data connection unread: Pure-FTPd reads
    ABOR during the transfer and ends it (426, then 226 for the abort)."""
    ftp = _login(port)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(f"RETR {name}")
    assert len(conn.recv(65536)) > 0

    def drain() -> None:  # slowly, so that the transfer is still under way at the abort
        while conn.recv(65536):
            time.sleep(0.001)
    reader = threading.Thread(target=drain)
    reader.start()
    ftp.putcmd("ABOR")
    got = [ftp.getmultiline()[:3], ftp.getmultiline()[:3]]
    reader.join(30)
    conn.close()
    got.append(ftp.sendcmd("NOOP"))
    body = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", body.write)
    got.append(hashlib.sha256(body.getvalue()).hexdigest())
    ftp.quit()
    return got


def test_abort_during_an_update(proxy) -> None:
    """Pure-FTPd ends a transfer at once on ABOR (vsftpd only once it ended: see
    tests/test_proxy_ftp_clients.py). During an update the leader's download is cut (426, then
    226 for ABOR) and the follower, which gets the abort after its transfer (a server at another
    point of its transfer would answer it otherwise), runs it whole (226, then 226 for an ABOR
    with nothing to abort): both differences are expected (``builtin:transfer-aborted``), the
    data is not compared, the client sees what it sees directly, and the update cuts over."""
    data = os.urandom(1 << 20) * 32
    (_root(proxy, proxy.service.serving.name) / "abort.bin").write_bytes(data)
    direct = _abort(proxy.service.serving.address[1], "abort.bin")
    assert direct[:2] == ["426", "226"] and direct[-1] == hashlib.sha256(data).hexdigest()
    assert _abort(proxy.port, "abort.bin") == direct
    _, follower = _start_update(proxy)
    assert _abort(proxy.port, "abort.bin") == direct
    update = _caught_up(proxy)["update"]
    assert update["divergences"] == 0 and update["transfers_compared"] == 2, update
    assert update["expected_by_rule"].get("builtin:transfer-aborted") == 2, update
    done = _end(proxy, promote=True)
    assert done["last_update"]["outcome"] == "cutover" and done["serving"] == follower, done
