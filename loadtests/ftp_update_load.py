"""A live update of vsftpd under FTP load: clients upload and download files while twinproxy
updates v1 to v2 (configs/ftp.toml as shipped, relocated, sync "files"), every transfer
compared during MVE.

    PYTHONPATH=src:. python loadtests/ftp_update_load.py [--clients 10] [--max-mb 100]
        [--before 5] [--mve 30] [--after 5] [--report loadtests/reports/ftp_update.md]

``twinproxy serve`` runs as a process of its own (its peak memory, VmHWM, is its own).
Each client (Python's ftplib; even ones passive, odd ones active) loops: download a file of
the shared set (one file of each size: 1 KB to ``--max-mb`` MB, log-spaced) and check its
SHA-256; upload a new file, download it back and check it; list its directory (LIST, NLST);
keep only its last three uploads (DELE; none after ``promote``, so that the cutover's root
stays whole). Sizes are drawn each ten times as large half as likely.

The update starts after ``--before`` seconds and runs in MVE for ``--mve`` seconds. Then the
clients pause between two rounds until the follower has answered everything, both roots are
hashed file by file and must be equal, and ``promote`` is called as the clients resume (so
that the cutover's barrier meets transfers under way); after the cutover the clients go on
for ``--after`` seconds. Checked at the end: no client error, the update cut over with no
divergence, and every file of the old root at the cutover is in the new root with the same
hash (files added after ``promote`` was called are the new version's alone).
"""

from __future__ import annotations

import argparse
import contextlib
import ftplib
import hashlib
import io
import json
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import code_env, free_port, machine, publish, rss_kib, stop  # noqa: E402

CONFIGS = HERE.parent / "configs"


def sizes(max_mb: int) -> list[int]:
    """1 KB, 10 KB, ... up to ``max_mb`` MB (plus a few odd bytes each: no buffer multiple)."""
    out, size = [], 1000
    while size <= max_mb * 1_000_000:
        out.append(size + 7)
        size *= 10
    if out[-1] < max_mb * 1_000_000:
        out.append(max_mb * 1_000_000 + 7)
    return out


def pick(choices: list[int], rng: random.Random) -> int:
    """A size, each ten times as large half as likely."""
    weights = [2.0 ** -i for i in range(len(choices))]
    return rng.choices(choices, weights)[0]


def content(seed: str, size: int) -> bytes:
    block = hashlib.sha256(seed.encode()).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


class Shared:
    """What the driver and the clients share."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.go = threading.Event()  # cleared: clients pause between two rounds
        self.go.set()
        self.lock = threading.Lock()
        self.busy = 0  # clients in a round
        self.errors: list[str] = []
        self.counts = {"download": 0, "upload": 0, "list": 0, "delete": 0}
        self.bytes = 0
        self.by_size: dict[int, int] = {}  # transfers (up or down) per file size
        self.after_promote: set[str] = set()  # files whose upload began after promote
        self.promoted = False


def client(n: int, port: int, files: dict[str, str], choices: list[int],
           shared: Shared) -> None:
    rng = random.Random(n)
    passive = n % 2 == 0
    kept: list[str] = []
    try:
        ftp = ftplib.FTP(timeout=120)
        ftp.connect("127.0.0.1", port)
        ftp.login()
        ftp.cwd("pub")
        ftp.set_pasv(passive)
        i = 0
        names = list(files)  # (one per size, in their order)
        while not shared.stop.is_set():
            shared.go.wait()
            with shared.lock:
                shared.busy += 1
            try:
                i = one_round(n, ftp, rng, names, files, choices, kept, i, shared)
            finally:
                with shared.lock:
                    shared.busy -= 1
        ftp.quit()
    except Exception as exc:  # (every client error is reported)
        with shared.lock:
            shared.errors.append(f"client {n} ({'passive' if passive else 'active'}): "
                                 f"{type(exc).__name__}: {exc}")


def one_round(n: int, ftp: ftplib.FTP, rng: random.Random, names: list[str],
              files: dict[str, str], choices: list[int], kept: list[str], i: int,
              shared: Shared) -> int:
    """Download a shared file, upload one and read it back, list; the next upload's number.
    ``names``: the shared files, one per size in ``choices``' order."""
    name = names[choices.index(pick(choices, rng))]
    got = hashlib.sha256()
    size = 0
    with ftp.transfercmd(f"RETR {name}") as conn:
        while chunk := conn.recv(1 << 16):
            got.update(chunk)
            size += len(chunk)
    ftp.voidresp()
    if got.hexdigest() != files[name]:
        raise RuntimeError(f"RETR {name}: other bytes ({size})")
    with shared.lock:
        shared.counts["download"] += 1
        shared.bytes += size
        shared.by_size[size] = shared.by_size.get(size, 0) + 1
        mine = f"c{n}-{i}.bin"
        if shared.promoted:
            shared.after_promote.add(mine)
    data = content(mine, pick(choices, rng))
    ftp.storbinary(f"STOR {mine}", io.BytesIO(data))
    back = io.BytesIO()
    ftp.retrbinary(f"RETR {mine}", back.write)
    if back.getvalue() != data:
        raise RuntimeError(f"{mine}: read back other bytes")
    with shared.lock:
        shared.counts["upload"] += 1
        shared.counts["download"] += 1
        shared.bytes += 2 * len(data)
        shared.by_size[len(data)] = shared.by_size.get(len(data), 0) + 2
    kept.append(mine)
    if len(kept) > 3 and not shared.promoted:  # (the cutover's root stays whole)
        ftp.delete(kept.pop(0))
        with shared.lock:
            shared.counts["delete"] += 1
    listing: list[str] = []
    ftp.retrlines("LIST", listing.append)
    listed = {line.split()[-1] for line in listing}
    nlst = set(ftp.nlst())
    if not set(kept) <= listed or not set(kept) <= nlst:
        raise RuntimeError(f"listing: {kept} not all in {sorted(nlst)}")
    with shared.lock:
        shared.counts["list"] += 2
    return i + 1


def cli(config: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "twinproxy.cli", *args, "-c", str(config)],
                          capture_output=True, text=True, check=True,
                          env=code_env(str(HERE.parent / "src"))).stdout


def status(config: Path) -> dict:
    return json.loads(cli(config, "status", "--json"))


def wait(config: Path, predicate, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        doc = status(config)
        if predicate(doc):
            return doc
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}: {doc}")
        time.sleep(0.1)


def root_of(pid: int) -> Path:
    """A managed vsftpd's root, from its command line (``{dir}/vsftpd.conf``)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return Path(argv[1].decode()).parent / "root"


def tree(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            out[str(path.relative_to(root))] = h.hexdigest()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--max-mb", type=int, default=100)
    parser.add_argument("--before", type=float, default=5.0)
    parser.add_argument("--mve", type=float, default=30.0)
    parser.add_argument("--after", type=float, default=5.0)
    parser.add_argument("--report")
    parser.add_argument("--pause-ab", action="store_true",
                        help="measure the sync point's pause instead (see pause_ab)")
    parser.add_argument("--baseline", help="with --pause-ab: the src directory of the code "
                                           "to compare with")
    parser.add_argument("--root-mb", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.pause_ab:
        pause_ab(args)
        return
    choices = sizes(args.max_mb)
    with tempfile.TemporaryDirectory(prefix="ftp-update-load-") as d:
        config, port, proxy = start(Path(d), str(HERE.parent / "src"))
        try:
            run(args, config, port, proxy, choices)
        finally:
            stop(proxy)
            if args.report is None:
                print((Path(d) / "log").read_text()[-3000:], file=sys.stderr)


def start(d: Path, src: str) -> tuple[Path, int, subprocess.Popen]:
    """``twinproxy serve`` of configs/ftp.toml relocated to ``d``, from ``src``."""
    port = free_port()
    text = (CONFIGS / "ftp.toml").read_text()
    text = re.sub(r'(?m)^listen = "[^"]*"', f'listen = "127.0.0.1:{port}"', text)
    text = re.sub(r'(?m)^control = "[^"]*"', f'control = "{d}/control.sock"', text)
    text = text.replace("warmup_seconds = 30.0", "warmup_seconds = 3600.0")
    text = text.replace("warmup_requests = 200", "warmup_requests = 100000000")
    # A cutover waits at its barrier for the transfers under way (100 MB ones included).
    text = text.replace("barrier_timeout = 5.0", "barrier_timeout = 60.0")
    text = text.replace("follower_timeout = 5.0", "follower_timeout = 60.0")
    if Path(src).resolve() != (HERE.parent / "src").resolve():
        # (a baseline from before this key: its loader refuses keys it does not know)
        text = re.sub(r"(?m)^max_spool_bytes = .*\n", "", text)
    config = d / "ftp.toml"
    config.write_text(text)
    with open(d / "log", "w") as log:
        proxy = subprocess.Popen([sys.executable, "-m", "twinproxy.cli", "serve",
                                  str(config)], stderr=log, env=code_env(src))
    return config, port, proxy


def connected(port: int, proxy: subprocess.Popen) -> ftplib.FTP:
    """A logged-in client in /pub, once twinproxy serves."""
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError, ftplib.Error):
            ftp = ftplib.FTP(timeout=60)
            ftp.connect("127.0.0.1", port)
            break
        if time.monotonic() > deadline or proxy.poll() is not None:
            raise RuntimeError(f"twinproxy did not start (exit status {proxy.poll()})")
        time.sleep(0.2)
    ftp.login()
    ftp.cwd("pub")
    return ftp


def pause_ab(args) -> None:
    """The sync point's pause of sync "files" with a root of ``--root-mb`` MB while
    ``--clients`` clients upload and download (files up to ``--max-mb`` MB), for this checkout
    and the ``--baseline`` one, alternating (``--rounds`` of each, in the same run).

    Each run: a fresh twinproxy; the root written in place (100 MB files, then 10 MB ones),
    a few shared files uploaded; the clients start; after 2 s the update to v2; once in MVE the
    clients pause, both roots are hashed file by file and must be equal; rollback."""
    choices = sizes(args.max_mb)
    variants = [("this", str(HERE.parent / "src"))]
    if args.baseline:
        variants.append(("baseline", args.baseline))
    results: dict[str, list[dict]] = {name: [] for name, _ in variants}
    for i in range(args.rounds):
        for name, src in (variants if i % 2 == 0 else variants[::-1]):
            result = pause_run(args, src, choices)
            results[name].append(result)
            print(f"round {i + 1} {name}: {result}", flush=True)
    lines = [f"sync \"files\", a root of {args.root_mb} MB, {args.clients} ftplib clients "
             f"uploading and downloading files up to {args.max_mb} MB during the copy "
             f"({machine()})", "",
             "| run | code | sync point pause (ms) | of which the barrier (ms) "
             "| copy before it (s) | copied again at it | roots equal | client errors |",
             "|---|---|---|---|---|---|---|---|"]
    for i in range(args.rounds):
        for name, _ in (variants if i % 2 == 0 else variants[::-1]):
            r = results[name][i]
            stats = r["stats"]
            again = (f"{stats['sync_point_files']} files, {stats['sync_point_bytes'] / 1e6:.1f} MB"
                     if "sync_point_files" in stats else "(all)")
            lines.append(f"| {i + 1} | {name} | {r['pause_ms']:.1f} | {r['barrier_ms']} | "
                         f"{stats.get('precopy_s', 0) + stats.get('catch_up_s', 0):.2f} | "
                         f"{again} | {r['equal']} ({r['files']} files) | {r['errors']} |")
    retried = [(name, i + 1, reason) for name, rs in results.items()
               for i, r in enumerate(rs) for reason in r["retries"]]
    if retried:
        lines += ["", "Updates asked for again (not about the copy):",
                  *[f"- run {i} {name}: {reason}" for name, i, reason in retried]]
    if args.baseline:
        ratios = [results["this"][i]["pause_ms"] / results["baseline"][i]["pause_ms"]
                  for i in range(args.rounds)]
        lines += ["", "pause this/baseline per round: " +
                  ", ".join(f"{r:.3f}" for r in ratios)]
    ok = all(r["equal"] and not r["errors"] for rs in results.values() for r in rs)
    lines += ["", "PASS" if ok else "FAIL"]
    publish("\n".join(lines), args.report)
    if not ok:
        sys.exit(1)


def pause_run(args, src: str, choices: list[int]) -> dict:
    with tempfile.TemporaryDirectory(prefix="ftp-pause-") as d:
        config, port, proxy = start(Path(d), src)
        try:
            try:
                setup = connected(port, proxy)
            except RuntimeError:
                print((Path(d) / "log").read_text()[-3000:], file=sys.stderr)
                raise
            pub = root_of(status(config)["leader"]["pid"]) / "pub"
            left, n = args.root_mb * 1_000_000, 0
            while left > 0:
                size = min(left, 100_000_000 if left > 100_000_000 else 10_000_000)
                block = content(f"bulk-{n}", 1 << 20)
                with open(pub / f"bulk-{n}.bin", "wb") as out:
                    for at in range(0, size, len(block)):
                        out.write(block[:size - at])
                left -= size
                n += 1
            files = upload_shared(setup, choices)
            shared = Shared()
            threads = [threading.Thread(target=client, args=(c, port, files, choices, shared))
                       for c in range(args.clients)]
            for t in threads:
                t.start()
            time.sleep(2.0)
            retries = []
            while True:
                cli(config, "update", "--to", "v2")
                in_mve = wait(config, lambda s: s["state"] == "mve" or (s["last_update"] or {}).get(
                    "outcome") not in ("in-progress", None), 300, "MVE or the update's end")
                if in_mve["state"] == "mve":
                    break
                # (seen: v2's vsftpd could not bind the port twinproxy picked for it, taken
                # meanwhile by a data connection; nothing to do with the copy)
                retries.append(in_mve["last_update"]["reason"])
                if len(retries) == 3:
                    raise RuntimeError(f"the update failed 3 times: {retries}")
                wait(config, lambda s: s["state"] == "single", 120, "the rollback")
            shared.go.clear()
            while shared.busy:
                time.sleep(0.05)
            caught = wait(config, lambda s: s["state"] != "mve" or s["update"]["backlog"] == 0,
                          300, "the follower to catch up")
            time.sleep(0.5)
            old, new = tree(root_of(caught["leader"]["pid"])), tree(
                root_of(caught["follower"]["pid"]))
            shared.stop.set()
            shared.go.set()
            for t in threads:
                t.join(300)
            cli(config, "rollback")
            wait(config, lambda s: s["state"] == "single", 120, "the rollback")
            update = in_mve["update"]
            return {"pause_ms": update["pauses_ms"]["sync_point"],
                    "barrier_ms": update["pauses_ms"].get("barrier", "n/a"),
                    "stats": update.get("sync_stats", {}), "equal": old == new,
                    "files": len(old), "errors": len(shared.errors), "retries": retries}
        finally:
            stop(proxy)


def upload_shared(setup: ftplib.FTP, choices: list[int]) -> dict[str, str]:
    """One file of each size that every client downloads, stored through the proxy; their
    SHA-256 by name."""
    files = {}
    for size in choices:
        name = f"shared-{size}.bin"
        data = content(name, size)
        setup.storbinary(f"STOR {name}", io.BytesIO(data))
        files[name] = hashlib.sha256(data).hexdigest()
    setup.quit()
    return files


def run(args, config: Path, port: int, proxy: subprocess.Popen, choices: list[int]) -> None:
    setup = connected(port, proxy)
    files = upload_shared(setup, choices)
    shared = Shared()
    threads = [threading.Thread(target=client, args=(n, port, files, choices, shared))
               for n in range(args.clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(args.before)
    cli(config, "update", "--to", "v2")
    in_mve = wait(config, lambda s: s["state"] == "mve", 120, "MVE")
    mve_at = time.monotonic()
    time.sleep(max(0.0, args.mve - (time.monotonic() - mve_at)))
    # The clients pause between two rounds, so that both roots can be compared while both
    # versions run; they resume as promote is called.
    shared.go.clear()
    paused_at = time.monotonic()
    while shared.busy:
        time.sleep(0.05)
    caught = wait(config, lambda s: s["state"] != "mve" or s["update"]["backlog"] == 0, 300,
                  "the follower to catch up")
    if caught["state"] != "mve":
        raise RuntimeError(f"the update ended before the cutover: {caught}")
    time.sleep(0.5)  # (the last transfers' comparisons)
    leader_root = root_of(caught["leader"]["pid"])
    follower_root = root_of(caught["follower"]["pid"])
    hashing = time.monotonic()
    old_tree, new_tree = tree(leader_root), tree(follower_root)
    hashing = time.monotonic() - hashing
    with shared.lock:
        shared.promoted = True
    shared.go.set()
    paused = time.monotonic() - paused_at
    promote_at = time.monotonic()
    cli(config, "promote")
    done = wait(config, lambda s: s["state"] == "single", 180, "the cutover")
    cutover_s = time.monotonic() - promote_at
    time.sleep(args.after)
    shared.stop.set()
    for t in threads:
        t.join(300)
    elapsed = time.monotonic() - started
    final_tree = tree(root_of(done["leader"]["pid"]))
    peak = rss_kib(proxy.pid, "VmHWM")
    last = done["last_update"]
    update = done.get("update") or {}
    missing = [n for n, h in old_tree.items() if final_tree.get(n) != h]
    extra = [n for n in final_tree if n not in old_tree and Path(n).name not in
             shared.after_promote]
    ok = (not shared.errors and last["outcome"] == "cutover" and old_tree == new_tree
          and not missing and not extra and done["divergences"] == 0)
    sizes_text = ", ".join(f"{(s - 7) / 1e6:g} MB" if s >= 1e6 else f"{(s - 7) / 1e3:g} KB"
                           for s in choices)
    lines = [
        f"{args.clients} ftplib clients (half passive, half active), file sizes {sizes_text} "
        f"(+7 bytes each), v1 -> v2 of configs/ftp.toml ({machine()})",
        "",
        "| | |",
        "|---|---|",
        f"| run | {elapsed:.1f} s: {args.before:g} s SINGLE, MVE from "
        f"{mve_at - started:.1f} s, promote at {promote_at - started:.1f} s, "
        f"{args.after:g} s after the cutover |",
        f"| transfers | {shared.counts['download']} downloads, {shared.counts['upload']} "
        f"uploads, {shared.counts['list']} listings, {shared.counts['delete']} deletes; "
        f"{shared.bytes / 1e9:.2f} GB checked by SHA-256 on the client |",
        "| transfers by size | " + ", ".join(
            f"{(s - 7) / 1e6:g} MB: {shared.by_size.get(s, 0)}" for s in choices) + " |",
        f"| client errors | {len(shared.errors)} |",
        f"| outcome | {last['outcome']} (reason: {last.get('reason')}) |",
        f"| compared during MVE | {update.get('compared', 'n/a')} replies and "
        f"{update.get('transfers_compared', 'n/a')} transfers' data, divergences "
        f"{done['divergences']}, expected {update.get('expected_by_rule', {})} |",
        f"| sync point pause | {in_mve['update']['pauses_ms'].get('sync_point')} ms "
        f"(copy of the root: {len(files)} shared files, {sum(choices) / 1e6:.0f} MB, "
        f"and the clients' uploads so far) |",
        f"| promote | clients held {update.get('pauses_ms', {}).get('cutover')} ms at the "
        f"cutover; {cutover_s:.2f} s from `twinproxy promote` (a process) to the status "
        f"showing SINGLE(v2), v1 stopped |",
        f"| roots at the cutover | {len(old_tree)} files, v1 == v2 by SHA-256: "
        f"{old_tree == new_tree} (hashed in {hashing:.1f} s; the clients paused "
        f"{paused:.1f} s between two rounds for it) |",
        f"| v2's root after | all {len(old_tree)} files of the cutover's root equal: "
        f"{not missing}; {len(final_tree) - len(old_tree)} more, uploaded after promote; "
        f"unexplained: {len(extra)} |",
        f"| twinproxy peak memory | {peak / 1024:.1f} MB (VmHWM) |",
        "",
        "PASS" if ok else "FAIL",
    ]
    if shared.errors:
        lines += ["", "Client errors:", *[f"- {e}" for e in shared.errors[:20]]]
    if missing or extra:
        lines += ["", f"Missing or different: {missing[:10]}", f"Unexplained: {extra[:10]}"]
    publish("\n".join(lines), args.report)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
