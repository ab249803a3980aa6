"""FTP transfers of a large file through twinproxy against directly: throughput and the proxy's
memory.

    PYTHONPATH=src:. python loadtests/ftp_transfer.py [--size-mb 1024] [--rounds 3]

vsftpd (Debian) listens on 127.0.0.2; ``twinproxy serve`` (a process of its own, so that its
peak resident memory, VmHWM, is its own) on 127.0.0.1. curl downloads a file of ``--size-mb``
(sparse: the disk is not what is measured) to /dev/null and uploads as many bytes from a pipe,
passive mode (EPSV), directly and through the proxy, alternating, ``--rounds`` times each; the
median time of each is reported, with the proxy's resident memory before and its peak after.
Every transfer's byte count is checked.

``--update`` measures the same during an update instead: ``twinproxy serve`` of
configs/ftp.toml (vsftpd v1, then v2, both managed; sync ``files``) is held in MVE from v1 to v2,
and curl alternates between v1 directly and the proxy, which streams every download to the
client from v1 while it hashes v2's copy, and every upload to both. The update's own count of
compared transfers and divergences is checked at the end (every transfer compared, none
diverging).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from tests.servers import vsftpd_server  # noqa: E402

from common import code_env, free_port, machine, median, rss_kib, stop  # noqa: E402
from ftp_update_load import cli, connected, root_of, start, wait  # noqa: E402

CONFIG = """\
[proxy]
listen = "127.0.0.1:{port}"
protocol = "ftp"
control = "{control}"
start = "v1"
[versions.v1]
address = "{upstream}"
"""


def curl(url: str, size: int, upload: bool) -> float:
    """Seconds for one transfer of ``size`` bytes; fails unless exactly that many moved."""
    start = time.perf_counter()
    if upload:
        with subprocess.Popen(["head", "-c", str(size), "/dev/zero"],
                              stdout=subprocess.PIPE) as source:
            out = subprocess.run(["curl", "-sS", "-T", "-", "-w", "%{size_upload}", url],
                                 stdin=source.stdout, capture_output=True, text=True, check=True)
        moved = out.stdout
    else:
        moved = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}",
                                url], capture_output=True, text=True, check=True).stdout
    took = time.perf_counter() - start
    if int(float(moved)) != size:
        raise RuntimeError(f"{url}: moved {moved} bytes, expected {size}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--update", action="store_true",
                        help="through the proxy during an update (configs/ftp.toml, v1 to v2)")
    args = parser.parse_args()
    size = args.size_mb << 20
    if args.update:
        during_update(args, size)
        return
    with vsftpd_server("127.0.0.2") as server, tempfile.TemporaryDirectory() as d:
        big = server.extra["root"] / "pub" / "big.bin"
        with open(big, "wb") as f:
            f.truncate(size)
        port = free_port()
        config = Path(d) / "ftp.toml"
        config.write_text(CONFIG.format(port=port, control=f"{d}/control.sock",
                                        upstream=server.address))
        with open(Path(d) / "log", "w") as log:
            proxy = subprocess.Popen(
                [sys.executable, "-m", "twinproxy.cli", "serve", str(config)], stderr=log,
                env=code_env(str(HERE.parent / "src")))
        try:
            deadline = time.monotonic() + 20
            while subprocess.run(["curl", "-sS", "-o", "/dev/null",
                                  f"ftp://127.0.0.1:{port}/"], capture_output=True).returncode:
                if time.monotonic() > deadline or proxy.poll() is not None:
                    raise RuntimeError("twinproxy did not start")
                time.sleep(0.2)
            rest = rss_kib(proxy.pid)
            times = alternate(args, size, {"direct": server.address,
                                           "twinproxy": f"127.0.0.1:{port}"})
            peak = rss_kib(proxy.pid, "VmHWM")
        finally:
            stop(proxy)
    table(args, size, times, rest, peak, "twinproxy")


def alternate(args, size: int, hosts: dict[str, str]) -> dict[tuple[str, str], list[float]]:
    """``--rounds`` downloads of pub/big.bin and uploads of as many bytes, to each of
    ``hosts`` (name: host:port) in turn; the seconds each took."""
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for where, host in hosts.items():
            down = curl(f"ftp://{host}/pub/big.bin", size, upload=False)
            times.setdefault((where, "download"), []).append(down)
            up = curl(f"ftp://{host}/pub/up-{where.replace(' ', '-')}.bin", size, upload=True)
            times.setdefault((where, "upload"), []).append(up)
    return times


def during_update(args, size: int) -> None:
    """v1 directly against the proxy held in MVE from v1 to v2 (see the module's text)."""
    with tempfile.TemporaryDirectory(prefix="ftp-transfer-") as d:
        config, port, proxy = start(Path(d), str(HERE.parent / "src"))
        try:
            connected(port, proxy).quit()
            leader = wait(config, lambda s: s["state"] == "single", 30, "SINGLE")["leader"]
            with open(root_of(leader["pid"]) / "pub" / "big.bin", "wb") as f:
                f.truncate(size)  # (sparse, before the update: the sync copies it to v2)
            cli(config, "update", "--to", "v2")
            wait(config, lambda s: s["state"] == "mve", 600, "MVE")
            rest = rss_kib(proxy.pid)
            times = alternate(args, size, {"direct": leader["address"],
                                           "twinproxy MVE": f"127.0.0.1:{port}"})
            peak = rss_kib(proxy.pid, "VmHWM")
            done = wait(config, lambda s: s["update"]["backlog"] == 0, 600, "the follower")
            update = done["update"]
            if done["state"] != "mve" or update["divergences"] \
                    or update["transfers_compared"] < 2 * args.rounds:
                raise RuntimeError(f"the update did not compare every transfer: {update}")
            cli(config, "rollback")
        finally:
            stop(proxy)
    table(args, size, times, rest, peak, "twinproxy MVE")
    print(f"\nThe update compared {update['transfers_compared']} transfers, "
          f"{update['divergences']} divergences, and was still in MVE at the end.")


def table(args, size: int, times: dict[tuple[str, str], list[float]], rest: int, peak: int,
          proxied_as: str) -> None:
    mb = size / 1e6
    print(f"{args.size_mb} MiB over FTP (curl, EPSV), vsftpd on loopback, median of "
          f"{args.rounds} alternating rounds ({machine()})\n")
    print(f"| transfer | direct MB/s | {proxied_as} MB/s | twinproxy/direct |")
    print("|---|---|---|---|")
    for kind in ("download", "upload"):
        direct = mb / median(times[("direct", kind)])
        proxied = mb / median(times[(proxied_as, kind)])
        print(f"| {kind} | {direct:,.0f} | {proxied:,.0f} | {proxied / direct:.2f} |")
    print(f"\ntwinproxy resident memory: {rest / 1024:.1f} MB before the transfers, peak "
          f"{peak / 1024:.1f} MB (VmHWM) after {2 * args.rounds} transfers of {args.size_mb} MiB")


if __name__ == "__main__":
    main()
