"""The fault matrix's report: its table, with rows run apart merged into one file."""

from __future__ import annotations

from pathlib import Path

from common import machine
from fault_harness import Row

COLUMNS = ["fault", "expected", "observed", "update state", "client errors",
           "longest request ms", "longest directly ms", "writes lost", "resting MB", "peak MB",
           "after MB", "after the update MB"]


def cell(text: str, limit: int = 240) -> str:
    """Text for a table cell: on one line, and a long one (a server's output in a reason)
    shortened in the middle."""
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= limit else f"{text[:limit - 80]} … {text[-70:]}"


def table_row(row: Row, r: dict) -> list[str]:
    if "skipped" in r:
        return [row.title, row.expected, f"skipped: {r['skipped']}", *[""] * (len(COLUMNS) - 3)]
    return [row.title, row.expected, cell(r["observed"]), cell(r["state"]),
            str(r["client errors"]),
            str(r["longest request ms"]), str(r["longest directly ms"]),
            str(r["acknowledged writes lost"]),
            str(r["resting MB"]), str(r["peak MB"]), str(r["after MB"]),
            str(r["after the update MB"])]


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


PREAMBLE = (f"python loadtests/faults.py, each row one run of its own ({machine()}); "
            "Redis 7.0 (memcached where a row says so) behind twinproxy, default "
            "bounds. \"observed\" says whether the row's "
            "promise held (see the module's docstring); memory is the proxy's resident size.")


def merge_report(path: Path, ran: dict[str, list[str]], order: list[str]) -> str:
    """The report's table with the rows just run (by fault) put in, the others kept: in the
    order of :func:`rows`, rows it does not know at the end. Columns are matched by name; the
    text before and after the table is kept (a new file gets :data:`PREAMBLE`)."""
    kept: dict[str, list[str]] = {}
    preamble, notes = [PREAMBLE, ""], []
    if path.exists():
        text = path.read_text().splitlines()
        lines = [x for x in text if x.startswith("|")]
        if lines:
            preamble = text[:text.index(lines[0])]
            notes = text[text.index(lines[-1]) + 1:]
            header = cells(lines[0])
            for line in lines[2:]:
                named = dict(zip(header, cells(line), strict=False))
                named.setdefault("update state", named.get("observed state", ""))  # before
                kept[named.get("fault", "")] = [named.get(c, "") for c in COLUMNS]
    kept.update(ran)
    titles = [t for t in order if t in kept] + [t for t in kept if t not in order]
    lines = [*preamble, "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(kept[t]) + " |" for t in titles]
    return "\n".join([*lines, *notes]) + "\n"
